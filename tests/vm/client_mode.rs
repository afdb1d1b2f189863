//! The test client: this same binary, run as cohere's app (or next to it) with [`CLIENT_MODE`].
//! It shows a dma-buf-backed `wl_buffer` (a udmabuf, or a vgem buffer with
//! `COHERE_CLIENT_SOURCE=vgem`; a wl_shm buffer with `COHERE_CLIENT_SOURCE=shm`, for the
//! benchmarks against compositors that don't take every dma-buf) holding [`test_image`], and reports what the compositor told it
//! in the JSON file named by `COHERE_CLIENT_REPORT` (a [`ClientReport`]), which the tests wait
//! on. It blocks on the compositor's events; the only pause is between looks for the file that
//! ends a `COHERE_CLIENT_FENCE=until:FILE` hold.
//!
//! Arguments: `[W H [TITLE [desktop]]]`. With `desktop` the window keeps its own size.
//! Environment:
//! - `COHERE_CLIENT_SYNCOBJ=1`: explicit sync (linux-drm-syncobj-v1), timelines on virtio-gpu's
//!   render node: one acquire timeline, one release timeline per buffer;
//! - `COHERE_CLIENT_DAMAGE=x,y,w,h`: then a second buffer with [`alt_image`], of which only that
//!   rectangle is declared damaged;
//! - `COHERE_CLIENT_FENCE=MS` or `until:FILE`: that second buffer's acquire fence (a sw_sync
//!   write fence in the dma-buf, or the syncobj acquire point) stays unsignalled for MS
//!   milliseconds, or until FILE exists; the client keeps talking to the compositor meanwhile;
//! - `COHERE_CLIENT_THEN=disconnect`: instead of signalling, close the connection and stay alive
//!   (holding the fence) until cohere terminates it;
//! - `COHERE_CLIENT_FRAMES=K`: K more full frames, alternating the two buffers, each waiting for
//!   its presentation;
//! - `COHERE_CLIENT_FRAME_DAMAGE=W,H`: in those frames, declare only a W x H square damaged, a
//!   different place each frame (a small animation; the benchmarks' "rect" workload);
//! - `COHERE_CLIENT_REWRITE=1`: in those frames, each buffer is rewritten once the compositor
//!   released it, frame k with [`frame_image`]`(k)`, as a real client reuses its buffers;
//! - `COHERE_CLIENT_Y_INVERT=1`: buffers made with y_invert, their rows stored bottom to top.
//! - `COHERE_CLIENT_CALLBACKS=1`: then commit on every frame callback forever, counting them.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cohere::sync::syncobj::{SyncobjDevice, Timeline as SyncobjTimeline};
use cohere::sync::{import_sync_file, DmabufAccess};
use cohere::testkit::fence::Timeline;
use cohere::testkit::{udmabuf, vgem_buffer, Card, MappedDmabuf};
use smithay::reexports::drm::buffer::DrmFourcc;
use wayland_client::protocol::{wl_buffer::WlBuffer, wl_surface::WlSurface};
use wayland_protocols::wp::linux_dmabuf::zv1::client::zwp_linux_buffer_params_v1;
use wayland_protocols::wp::linux_drm_syncobj::v1::client::{wp_linux_drm_syncobj_surface_v1, wp_linux_drm_syncobj_timeline_v1};

use crate::client::TestClient;
use crate::cohere::{ClientReport, PresentedFrame};
use crate::tests::{alt_image, frame_image, test_image, Check};

pub const CLIENT_MODE: &str = "--cohere-udmabuf-client";
pub const CLIENT_SIZE: (i32, i32) = (256, 128);

pub fn udmabuf_client(args: &[String]) -> ExitCode {
    let size = match args {
        [w, h, ..] => (w.parse().unwrap_or(CLIENT_SIZE.0), h.parse().unwrap_or(CLIENT_SIZE.1)),
        _ => CLIENT_SIZE,
    };
    let title = args.get(2).cloned().unwrap_or_else(|| "udmabuf".into());
    let desktop = args.get(3).is_some_and(|a| a == "desktop");
    match run(size, &title, desktop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udmabuf client: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The report, written again whenever something in it changes: at once, or, while frames are
/// [`Reporter::pacing`], by a writer thread.
struct Reporter {
    path: Option<PathBuf>,
    report: ClientReport,
    /// While frames are paced: the writer thread, and when it was last handed the report.
    paced: Option<PacedWriter>,
}

/// Writes the report for a client that paces frames, so the frames don't wait for it: writing
/// the whole report (every presentation so far) took 3 to 14 ms in a debug build under TCG,
/// and a client that did it between frames missed the vblanks it was measured on. The pacing
/// benchmark showed 77 % of frames on consecutive vblanks with a write in every frame. While
/// pacing, the report it writes leaves out the presentations (`frames`), which come with the
/// last write, when the frames are done.
struct PacedWriter {
    reports: std::sync::mpsc::Sender<ClientReport>,
    thread: std::thread::JoinHandle<Result<(), String>>,
    handed: Instant,
}

/// How often a client pacing frames hands its report to the writer (as often as cohere writes
/// its statistics).
const PACED_WRITES: Duration = Duration::from_millis(100);

impl Reporter {
    fn update(&mut self, change: impl FnOnce(&mut ClientReport)) -> Result<(), String> {
        change(&mut self.report);
        if let Some(paced) = &mut self.paced {
            if paced.handed.elapsed() >= PACED_WRITES {
                paced.handed = Instant::now();
                // Without the presentations so far, which `pacing(false)` writes: the report
                // stays small, so writing it costs next to nothing beside the frames measured.
                let frames = std::mem::take(&mut self.report.frames);
                let report = self.report.clone();
                self.report.frames = frames;
                // A writer that stopped has returned its error, which `pacing(false)` reports.
                let _ = paced.reports.send(report);
            }
            return Ok(());
        }
        match &self.path {
            Some(path) => self.report.write(path),
            None => Ok(()),
        }
    }

    /// Frames are paced from now on (`true`): the report goes to a writer thread. Or no longer
    /// (`false`): the writer is done, and the report is written as it now is.
    fn pacing(&mut self, paced: bool) -> Result<(), String> {
        if let Some(writer) = self.paced.take() {
            drop(writer.reports);
            writer.thread.join().map_err(|_| "the report writer panicked".to_string())??;
        }
        if let (true, Some(path)) = (paced, self.path.clone()) {
            let (reports, received) = std::sync::mpsc::channel::<ClientReport>();
            let thread = std::thread::Builder::new()
                .name("report writer".into())
                .spawn(move || {
                    // Only the newest of the reports waiting is worth writing.
                    while let Ok(mut report) = received.recv() {
                        while let Ok(newer) = received.try_recv() {
                            report = newer;
                        }
                        report.write(&path)?;
                    }
                    Ok(())
                })
                .check("report writer thread")?;
            self.paced = Some(PacedWriter { reports, thread, handed: Instant::now() });
        }
        self.update(|_| ())
    }

    /// Reports buffer-path batches and zero-copy presentations that arrived since the last call.
    fn observe(&mut self, client: &TestClient) -> Result<(), String> {
        let batches = &client.state.path_batches;
        let frames: Vec<PresentedFrame> = client
            .state
            .presentations
            .iter()
            .filter_map(|(_, p)| match *p {
                crate::client::Presentation::Presented { nanos, seq, flags, .. } => {
                    Some(PresentedFrame { nanos: nanos as u64, seq, flags })
                }
                crate::client::Presentation::Discarded => None,
            })
            .collect();
        let zero_copy_flag = wayland_protocols::wp::presentation_time::client::wp_presentation_feedback::Kind::ZeroCopy.bits();
        let zero_copy = frames.iter().filter(|f| f.flags & zero_copy_flag != 0).count() as u32;
        if batches.len() == self.report.buffer_path.len() && frames == self.report.frames {
            return Ok(());
        }
        let texts: Vec<String> = batches.iter().map(|b| b.to_string()).collect();
        self.update(|r| {
            r.buffer_path = texts;
            r.zero_copy_presented = zero_copy;
            r.frames = frames;
        })
    }
}

/// Explicit sync: the surface's syncobj object, the acquire timeline, and a release timeline
/// per buffer (as the protocol recommends: out-of-order release on one timeline is unsafe).
struct Explicit {
    object: wp_linux_drm_syncobj_surface_v1::WpLinuxDrmSyncobjSurfaceV1,
    acquire: (SyncobjTimeline, wp_linux_drm_syncobj_timeline_v1::WpLinuxDrmSyncobjTimelineV1),
    next_acquire: u64,
    releases: Vec<(SyncobjTimeline, wp_linux_drm_syncobj_timeline_v1::WpLinuxDrmSyncobjTimelineV1, u64)>,
}

impl Explicit {
    fn new(client: &TestClient, surface: &WlSurface, buffers: usize) -> Result<Explicit, String> {
        let node = Card::render_node("virtio_gpu").check("virtio-gpu render node")?;
        let device = SyncobjDevice::open(&node).check("opening the render node")?;
        let timeline = |device: &SyncobjDevice| -> Result<_, String> {
            let t = device.create_timeline().check("creating a timeline")?;
            let fd = t.export().check("exporting a timeline")?;
            let object = client.import_timeline(fd.as_fd());
            Ok((t, object))
        };
        let acquire = timeline(&device)?;
        let releases = (0..buffers).map(|_| timeline(&device).map(|(t, o)| (t, o, 0))).collect::<Result<_, _>>()?;
        Ok(Explicit { object: client.syncobj_surface(surface), acquire, next_acquire: 0, releases })
    }

    /// Sets the points of a commit of buffer `index`; returns its acquire point (unsignalled)
    /// and its release point.
    fn points(&mut self, index: usize) -> (cohere::sync::syncobj::SyncPoint, cohere::sync::syncobj::SyncPoint) {
        self.next_acquire += 1;
        let acquire = self.acquire.0.point(self.next_acquire);
        let (release_timeline, release_object, last) = &mut self.releases[index];
        *last += 1;
        let release = release_timeline.point(*last);
        let split = |v: u64| ((v >> 32) as u32, v as u32);
        let (hi, lo) = split(acquire.value());
        self.object.set_acquire_point(&self.acquire.1, hi, lo);
        let (hi, lo) = split(release.value());
        self.object.set_release_point(release_object, hi, lo);
        (acquire, release)
    }
}

/// The client's buffers and how it commits them.
struct Client {
    client: TestClient,
    surface: WlSurface,
    size: (i32, i32),
    buffers: Vec<(Storage, WlBuffer)>,
    explicit: Option<Explicit>,
    release_points: Vec<Option<cohere::sync::syncobj::SyncPoint>>,
    /// Commits of each buffer so far.
    commits: Vec<usize>,
}

impl Client {
    /// Commits buffer `index` with `damage`, asking for presentation feedback `tag`. Returns the
    /// acquire point to signal, for explicit sync (already signalled when `ready`).
    fn commit(
        &mut self,
        index: usize,
        damage: (i32, i32, i32, i32),
        tag: u32,
        ready: bool,
    ) -> Result<Option<cohere::sync::syncobj::SyncPoint>, String> {
        let acquire = match &mut self.explicit {
            Some(explicit) => {
                let (acquire, release) = explicit.points(index);
                self.release_points[index] = Some(release);
                if ready {
                    acquire.signal().check("signalling the acquire point")?;
                }
                Some(acquire)
            }
            None => None,
        };
        self.commits[index] += 1;
        self.surface.attach(Some(&self.buffers[index].1), 0, 0);
        self.surface.damage_buffer(damage.0, damage.1, damage.2, damage.3);
        self.client.presentation_feedback(&self.surface, tag);
        self.surface.commit();
        Ok(acquire)
    }

    fn wait_presented(&mut self, n: usize, what: &str) -> Result<(), String> {
        while self.client.state.presentations.len() < n {
            self.client.queue.blocking_dispatch(&mut self.client.state).check(what)?;
        }
        Ok(())
    }

    /// Waits until the compositor released every commit of buffer `index` (wl_buffer.release),
    /// then writes `pixels` into it.
    fn rewrite(&mut self, index: usize, pixels: Vec<u32>) -> Result<(), String> {
        let tag = index as u32 + 1;
        while self.client.state.released.iter().filter(|t| **t == tag).count() < self.commits[index] {
            self.client.queue.blocking_dispatch(&mut self.client.state).check("waiting for a release")?;
        }
        self.buffers[index].0.dmabuf()?.write(&stored(&pixels, self.size.0 as usize)).check("rewriting a buffer")
    }

    fn full(&self) -> (i32, i32, i32, i32) {
        (0, 0, self.size.0, self.size.1)
    }
}

/// `COHERE_CLIENT_Y_INVERT=1`: buffers are created with y_invert and store their rows bottom
/// to top, so the compositor shows the same image only if it flips them.
fn y_inverted() -> bool {
    std::env::var("COHERE_CLIENT_Y_INVERT").as_deref() == Ok("1")
}

/// The bytes of `pixels` (rows of `width`) as the buffer stores them.
fn stored(pixels: &[u32], width: usize) -> Vec<u8> {
    let mut rows: Vec<&[u32]> = pixels.chunks(width.max(1)).collect();
    if y_inverted() {
        rows.reverse();
    }
    rows.concat().iter().flat_map(|p| p.to_le_bytes()).collect()
}

fn run(size: (i32, i32), title: &str, desktop: bool) -> Result<(), String> {
    let mut reporter =
        Reporter { path: std::env::var_os("COHERE_CLIENT_REPORT").map(PathBuf::from), report: ClientReport::default(), paced: None };
    let dir = std::env::var("XDG_RUNTIME_DIR").check("XDG_RUNTIME_DIR")?;
    let name = std::env::var("WAYLAND_DISPLAY").check("WAYLAND_DISPLAY")?;
    let stream = UnixStream::connect(PathBuf::from(dir).join(name)).check("connect")?;
    let socket = stream.try_clone().check("socket clone")?;
    let mut client = TestClient::new(stream);
    client.blocking_roundtrip().check("registry")?;
    client.bind_globals();
    let window = client.create_window(title);
    client.blocking_roundtrip().check("configure")?;
    let configure = client.ack_last_configure(&window);
    // What cohere says about this surface's buffer path, where it offers cohere-buffer-path-v1.
    let _path = client.bound.as_ref().and_then(|b| b.buffer_path.as_ref()).map(|_| client.buffer_path(&window.surface));
    if !desktop && (configure.width, configure.height) != size {
        return Err(format!("kiosk configure {}x{}, expected {size:?}", configure.width, configure.height));
    }
    let (w, h) = (size.0 as u32, size.1 as u32);
    let source = std::env::var("COHERE_CLIENT_SOURCE").unwrap_or_default();
    let vgem = match source.as_str() {
        "vgem" => Some(Card::open_driver("vgem").check("vgem")?),
        _ => None,
    };
    let mut buffers = Vec::new();
    let flags = if y_inverted() { zwp_linux_buffer_params_v1::Flags::YInvert } else { zwp_linux_buffer_params_v1::Flags::empty() };
    for (i, pixels) in [test_image(w, h), alt_image(w, h)].into_iter().enumerate() {
        if source == "shm" {
            let wl_buffer = client.shm_buffer(size.0, size.1, i as u32 + 1, |x, y| pixels[(y * size.0 + x) as usize]);
            buffers.push((Storage::Shm, wl_buffer));
            continue;
        }
        let bytes = stored(&pixels, w as usize);
        let buffer = match &vgem {
            Some(card) => vgem_buffer(card, w, h).check("vgem buffer")?,
            None => udmabuf(bytes.len()).check("udmabuf")?,
        };
        buffer.write(&bytes).check("fill")?;
        let wl_buffer =
            client.dmabuf_buffer_flags(buffer.as_fd(), (size.0, size.1, w * 4), DrmFourcc::Xrgb8888 as u32, 0, flags, i as u32 + 1);
        buffers.push((Storage::Dmabuf(buffer), wl_buffer));
    }
    let explicit = match std::env::var("COHERE_CLIENT_SYNCOBJ").as_deref() {
        Ok("1") => Some(Explicit::new(&client, &window.surface, buffers.len())?),
        _ => None,
    };
    let n = buffers.len();
    let mut c =
        Client { client, surface: window.surface.clone(), size, release_points: vec![None; n], commits: vec![0; n], buffers, explicit };
    let full = c.full();
    c.commit(0, full, 1, true)?;
    c.wait_presented(1, "waiting for presentation")?;
    // What the compositor now says about this surface (a scanout tranche when the buffer may go
    // on a plane).
    if let Some(_feedback) = c.client.surface_feedback(&c.surface) {
        c.client.blocking_roundtrip().check("surface feedback")?;
    }
    let feedback: Vec<String> = c.client.state.transcript.iter().filter(|l| l.starts_with("feedback: ")).cloned().collect();
    // Presentations, flags and batches first, then the count a test waits on: a report that
    // says `presented = N` then already holds what came with those N presentations.
    reporter.observe(&c.client)?;
    reporter.update(|r| {
        r.presented = 1;
        r.feedback = feedback;
    })?;

    let damage: Option<Vec<i32>> =
        std::env::var("COHERE_CLIENT_DAMAGE").ok().map(|d| d.split(',').filter_map(|n| n.parse().ok()).collect());
    if let Some(&[x, y, dw, dh]) = damage.as_deref() {
        second_buffer(&mut c, &mut reporter, (x, y, dw, dh), &socket)?;
        reporter.observe(&c.client)?;
    }
    if let Some(frames) = std::env::var("COHERE_CLIENT_FRAMES").ok().and_then(|v| v.parse::<usize>().ok()) {
        let rewrite = std::env::var("COHERE_CLIENT_REWRITE").as_deref() == Ok("1");
        let square: Option<Vec<i32>> =
            std::env::var("COHERE_CLIENT_FRAME_DAMAGE").ok().map(|d| d.split(',').filter_map(|n| n.parse().ok()).collect());
        let frame_damage = |i: usize| match square.as_deref() {
            // The square walks a diagonal across the buffer, wrapping at its edges.
            Some(&[sw, sh]) if sw > 0 && sh > 0 && sw <= full.2 && sh <= full.3 => {
                let step = i as i32 * 8;
                (step % (full.2 - sw + 1), step % (full.3 - sh + 1), sw, sh)
            }
            _ => full,
        };
        reporter.pacing(true)?;
        reporter.pacing(true)?;
        for i in 0..frames {
            let presented = c.client.state.presentations.len();
            let index = (i + 1) % 2;
            if rewrite {
                c.rewrite(index, frame_image(w, h, i as u32 + 1))?;
            }
            c.commit(index, frame_damage(i), presented as u32 + 1, true)?;
            c.wait_presented(presented + 1, "waiting for a frame's presentation")?;
            reporter.observe(&c.client)?;
            reporter.update(|r| r.presented += 1)?;
        }
        reporter.pacing(false)?;
    }
    if std::env::var("COHERE_CLIENT_CALLBACKS").as_deref() == Ok("1") {
        // Commit on every frame callback, counting them, until the compositor goes.
        loop {
            let before = c.client.state.frame_done.len();
            let _cb = c.client.frame(&c.surface, 1);
            c.surface.damage_buffer(0, 0, 1, 1);
            c.surface.commit();
            while c.client.state.frame_done.len() == before {
                if c.client.queue.blocking_dispatch(&mut c.client.state).is_err() {
                    return Ok(());
                }
            }
            reporter.update(|r| r.callbacks += 1)?;
        }
    }
    // Stay mapped until cohere ends the session (the connection closes), reporting what
    // arrives.
    while c.client.queue.blocking_dispatch(&mut c.client.state).is_ok() {
        reporter.observe(&c.client)?;
    }
    Ok(())
}

/// The second buffer, with a damage rectangle, maybe an acquire fence held for a while.
fn second_buffer(c: &mut Client, reporter: &mut Reporter, damage: (i32, i32, i32, i32), socket: &UnixStream) -> Result<(), String> {
    let hold = std::env::var("COHERE_CLIENT_FENCE").ok().map(|v| match v.strip_prefix("until:") {
        Some(file) => Hold::Until(PathBuf::from(file)),
        None => Hold::For(Duration::from_millis(v.parse().unwrap_or(0))),
    });
    // Implicit sync: a sw_sync fence in the dma-buf. Explicit: the acquire point, not signalled.
    let sw_sync = match (&hold, &c.explicit) {
        (Some(_), None) => {
            let timeline = Timeline::new().check("sw_sync timeline")?;
            let fence = timeline.fence_at(1).check("fence")?;
            import_sync_file(c.buffers[1].0.dmabuf()?.as_fd(), &fence, DmabufAccess::Write).check("IMPORT_SYNC_FILE")?;
            Some(timeline)
        }
        _ => None,
    };
    let acquire = c.commit(1, damage, 2, hold.is_none())?;
    if let Some(hold) = hold {
        // While the fence stays unsignalled the compositor must keep answering, and must not
        // present the commit.
        let start = Instant::now();
        let mut answered = 0;
        while !hold.over(start)? {
            c.client.blocking_roundtrip().check("roundtrip while fenced")?;
            answered += 1;
            if c.client.state.presentations.len() >= 2 {
                return Err("the fenced buffer was presented before its fence signalled".into());
            }
        }
        // Was the first buffer's release point signalled while the second waited? (A CPU copy
        // releases at once; a composited buffer is read until it is replaced.)
        let during = c.release_points[0].as_ref().map(|p| p.is_signalled().unwrap_or(false));
        reporter.update(|r| {
            r.held_roundtrips = answered;
            r.release1_during_hold = during;
        })?;
        if std::env::var("COHERE_CLIENT_THEN").as_deref() == Ok("disconnect") {
            socket.shutdown(std::net::Shutdown::Both).check("shutdown")?;
            reporter.update(|r| r.disconnected = true)?;
            // Keep the fence unsignalled until cohere ends this process.
            loop {
                std::thread::park();
            }
        }
        match (&sw_sync, &acquire) {
            (Some(timeline), _) => timeline.advance(1).check("signal")?,
            (None, Some(point)) => point.signal().check("signalling the acquire point")?,
            (None, None) => {}
        }
    }
    c.wait_presented(2, "waiting for the damage's presentation")?;
    reporter.observe(&c.client)?;
    reporter.update(|r| r.presented = 2)?;
    // The first buffer was replaced: its release point must signal now (explicit sync).
    if let Some(point) = c.release_points[0].clone() {
        let fd = point.eventfd().check("release point eventfd")?;
        let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
        let deadline = rustix::event::Timespec { tv_sec: crate::cohere::DEADLINE.as_secs() as i64, tv_nsec: 0 };
        let signalled = rustix::event::poll(&mut fds, Some(&deadline)).check("waiting for the release point")? > 0;
        reporter.update(|r| r.release1_signalled = Some(signalled))?;
    }
    Ok(())
}

/// What holds a buffer's pixels.
enum Storage {
    Dmabuf(MappedDmabuf),
    /// A wl_shm pool: its content stays as it was made.
    Shm,
}

impl Storage {
    fn dmabuf(&self) -> Result<&MappedDmabuf, String> {
        match self {
            Storage::Dmabuf(buffer) => Ok(buffer),
            Storage::Shm => Err("this scenario needs dma-bufs, not COHERE_CLIENT_SOURCE=shm".into()),
        }
    }
}

/// How long the fence stays unsignalled.
enum Hold {
    For(Duration),
    /// Until the test creates this file: a short pause between looks, within the deadline.
    Until(PathBuf),
}

impl Hold {
    fn over(&self, start: Instant) -> Result<bool, String> {
        match self {
            Hold::For(d) => Ok(start.elapsed() >= *d),
            Hold::Until(file) if file.exists() => Ok(true),
            Hold::Until(file) if start.elapsed() > crate::cohere::DEADLINE => Err(format!("{} never appeared", file.display())),
            Hold::Until(_) => {
                std::thread::sleep(Duration::from_millis(10));
                Ok(false)
            }
        }
    }
}
