//! Explicit sync (linux-drm-syncobj-v1) on virtio-gpu, the VM's device with timeline syncobjs:
//! every protocol error, acquire points that hold a frame until they signal, release points
//! that signal when each path stopped reading, a never-signalling point that freezes only its
//! own surface, and syncobj handles and descriptors that go with their timelines.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use cohere::path::release::ReleasePath;
use cohere::sync::syncobj::{SyncobjDevice, Timeline};
use cohere::testkit::{udmabuf, Card};
use cohere::ShellMode;

use crate::client::TestClient;
use crate::client_mode::{CLIENT_MODE, CLIENT_SIZE};
use crate::cohere::{scratch, summary, Cohere};
use crate::harness::Fixture;
use crate::headless::compare;
use crate::tests::{alt_image, ensure_eq, test_image, Check, TestFn};

pub fn all() -> Vec<(&'static str, TestFn)> {
    vec![
        ("syncobj_error_surface_exists", syncobj_error_surface_exists),
        ("syncobj_error_invalid_timeline", syncobj_error_invalid_timeline),
        ("syncobj_error_no_surface", syncobj_error_no_surface),
        ("syncobj_error_unsupported_buffer", syncobj_error_unsupported_buffer),
        ("syncobj_error_no_buffer", syncobj_error_no_buffer),
        ("syncobj_error_no_acquire_point", syncobj_error_no_acquire_point),
        ("syncobj_error_no_release_point", syncobj_error_no_release_point),
        ("syncobj_error_buffer_without_points", syncobj_error_buffer_without_points),
        ("syncobj_error_conflicting_points", syncobj_error_conflicting_points),
        ("syncobj_handles_go_with_their_timelines", syncobj_handles_go_with_their_timelines),
        ("syncobj_1000_timelines_leave_cohere_flat", syncobj_1000_timelines_leave_cohere_flat),
        ("syncobj_acquire_holds_the_frame_and_release_follows_each_path", syncobj_acquire_holds_the_frame_and_release_follows_each_path),
        ("a_fence_that_never_signals_freezes_only_its_surface", a_fence_that_never_signals_freezes_only_its_surface),
    ]
}

fn virtio_render_node() -> Result<SyncobjDevice, String> {
    let node = Card::render_node("virtio_gpu").check("virtio-gpu render node")?;
    SyncobjDevice::open(&node).check("opening virtio-gpu's render node")
}

/// An in-process compositor (it offers linux-drm-syncobj-v1 here, on virtio-gpu) and a client
/// with a window whose surface has a syncobj object, plus two timelines the client imported.
struct Setup {
    fx: Fixture,
    id: usize,
    window: crate::client::Window,
    syncobj: wayland_protocols::wp::linux_drm_syncobj::v1::client::wp_linux_drm_syncobj_surface_v1::WpLinuxDrmSyncobjSurfaceV1,
    timelines: Vec<wayland_protocols::wp::linux_drm_syncobj::v1::client::wp_linux_drm_syncobj_timeline_v1::WpLinuxDrmSyncobjTimelineV1>,
    _device: SyncobjDevice,
    _kept: Vec<Timeline>,
}

impl Setup {
    fn new() -> Result<Setup, String> {
        let mut fx = Fixture::new(ShellMode::Kiosk);
        let id = fx.add_client();
        if fx.client(id).bound.as_ref().map_or(true, |b| b.syncobj.is_none()) {
            return Err("wp_linux_drm_syncobj_manager_v1 is not advertised on virtio-gpu".into());
        }
        let window = fx.client(id).create_window("syncobj");
        fx.roundtrip(id);
        fx.client(id).ack_last_configure(&window);
        let syncobj = fx.client(id).syncobj_surface(&window.surface);
        let device = virtio_render_node()?;
        let mut kept = Vec::new();
        let mut timelines = Vec::new();
        for _ in 0..2 {
            let t = device.create_timeline().check("timeline")?;
            let fd = t.export().check("export")?;
            timelines.push(fx.client(id).import_timeline(fd.as_fd()));
            kept.push(t);
        }
        Ok(Setup { fx, id, window, syncobj, timelines, _device: device, _kept: kept })
    }

    /// A 16x16 udmabuf wl_buffer.
    fn dmabuf_buffer(&mut self) -> Result<wayland_client::protocol::wl_buffer::WlBuffer, String> {
        let buffer = udmabuf(16 * 16 * 4).check("udmabuf")?;
        let wl = self.fx.client(self.id).dmabuf_buffer(buffer.as_fd(), (16, 16, 64), u32::from_le_bytes(*b"XR24"), 0, 7);
        // The client's copy of the fd can go: the compositor holds its own.
        drop(buffer);
        Ok(wl)
    }

    /// Sends what's queued and pumps both sides until the client's roundtrip is answered or
    /// it got a protocol error; returns (interface, code) of that error.
    fn error(mut self) -> Result<(String, u32), String> {
        let client = &mut self.fx.clients[self.id];
        let before = client.state.syncs_done;
        let _cb = client.sync();
        for _ in 0..1000 {
            self.fx.dispatch();
            let client = &self.fx.clients[self.id];
            if let Some(err) = client.conn.protocol_error() {
                return Ok((err.object_interface, err.code));
            }
            if client.state.syncs_done > before {
                return Err("no protocol error: the compositor accepted it".into());
            }
        }
        Err("the roundtrip was never answered".into())
    }
}

const SURFACE: &str = "wp_linux_drm_syncobj_surface_v1";
const MANAGER: &str = "wp_linux_drm_syncobj_manager_v1";

fn expect(got: (String, u32), interface: &str, code: u32) -> Result<(), String> {
    ensure_eq!(got, (interface.to_owned(), code), "protocol error (interface, code)");
    Ok(())
}

fn syncobj_error_surface_exists() -> Result<(), String> {
    let s = Setup::new()?;
    let _second = s.fx.clients[s.id].syncobj_surface(&s.window.surface);
    expect(s.error()?, MANAGER, 0)
}

fn syncobj_error_invalid_timeline() -> Result<(), String> {
    let s = Setup::new()?;
    let not_a_syncobj = rustix::fs::memfd_create("not-a-syncobj", rustix::fs::MemfdFlags::CLOEXEC).check("memfd")?;
    let _t = s.fx.clients[s.id].import_timeline(not_a_syncobj.as_fd());
    expect(s.error()?, MANAGER, 1)
}

fn syncobj_error_no_surface() -> Result<(), String> {
    let s = Setup::new()?;
    s.window.toplevel.destroy();
    s.window.xdg_surface.destroy();
    s.window.surface.destroy();
    s.syncobj.set_acquire_point(&s.timelines[0], 0, 1);
    expect(s.error()?, SURFACE, 1)
}

fn syncobj_error_unsupported_buffer() -> Result<(), String> {
    let mut s = Setup::new()?;
    let shm = s.fx.client(s.id).shm_buffer(16, 16, 3, |_, _| 0xff00_0000);
    s.window.surface.attach(Some(&shm), 0, 0);
    s.syncobj.set_acquire_point(&s.timelines[0], 0, 1);
    s.syncobj.set_release_point(&s.timelines[1], 0, 1);
    s.window.surface.commit();
    expect(s.error()?, SURFACE, 2)
}

fn syncobj_error_no_buffer() -> Result<(), String> {
    let s = Setup::new()?;
    s.syncobj.set_acquire_point(&s.timelines[0], 0, 1);
    s.syncobj.set_release_point(&s.timelines[1], 0, 1);
    s.window.surface.commit();
    expect(s.error()?, SURFACE, 3)
}

fn syncobj_error_no_acquire_point() -> Result<(), String> {
    let mut s = Setup::new()?;
    let buffer = s.dmabuf_buffer()?;
    s.window.surface.attach(Some(&buffer), 0, 0);
    s.syncobj.set_release_point(&s.timelines[1], 0, 1);
    s.window.surface.commit();
    expect(s.error()?, SURFACE, 4)
}

fn syncobj_error_no_release_point() -> Result<(), String> {
    let mut s = Setup::new()?;
    let buffer = s.dmabuf_buffer()?;
    s.window.surface.attach(Some(&buffer), 0, 0);
    s.syncobj.set_acquire_point(&s.timelines[0], 0, 1);
    s.window.surface.commit();
    expect(s.error()?, SURFACE, 5)
}

/// smithay 0.7 lets this through; the protocol says points are required with a buffer.
fn syncobj_error_buffer_without_points() -> Result<(), String> {
    let mut s = Setup::new()?;
    let buffer = s.dmabuf_buffer()?;
    s.window.surface.attach(Some(&buffer), 0, 0);
    s.window.surface.commit();
    expect(s.error()?, SURFACE, 4)
}

/// On one timeline the release point must come after the acquire point: equal and earlier
/// are both conflicts.
fn syncobj_error_conflicting_points() -> Result<(), String> {
    for (acquire, release) in [(5u32, 5u32), (5, 4)] {
        let mut s = Setup::new()?;
        let buffer = s.dmabuf_buffer()?;
        s.window.surface.attach(Some(&buffer), 0, 0);
        s.syncobj.set_acquire_point(&s.timelines[0], 0, acquire);
        s.syncobj.set_release_point(&s.timelines[0], 0, release);
        s.window.surface.commit();
        expect(s.error()?, SURFACE, 6).map_err(|e| format!("acquire {acquire}, release {release}: {e}"))?;
    }
    Ok(())
}

/// Library level: 1000 timelines imported, each with a point exported as a sync_file a few
/// times (smithay 0.7 leaks a handle per export), then dropped: every imported handle is gone
/// (a query says ENOENT), and no export left a temporary handle behind (the next syncobj
/// created gets the lowest handle again).
fn syncobj_handles_go_with_their_timelines() -> Result<(), String> {
    let client_side = virtio_render_node()?;
    let cohere_side = virtio_render_node()?;
    let mut handles = Vec::new();
    let mut timelines = Vec::new();
    for i in 0..1000u64 {
        let source = client_side.create_timeline().check("client timeline")?;
        source.point(1).signal().check("signal")?;
        let fd = source.export().check("export")?;
        let imported = cohere_side.import_timeline(fd.as_fd()).check("import")?;
        if i % 100 == 0 {
            for _ in 0..3 {
                imported.point(1).export_sync_file().check("export_sync_file")?;
            }
        }
        handles.push(imported.handle());
        timelines.push(imported);
    }
    ensure_eq!(cohere_side.timelines_alive(), 1000, "timelines alive");
    drop(timelines);
    ensure_eq!(cohere_side.timelines_alive(), 0, "timelines alive after dropping them");
    let left: Vec<u32> = handles.iter().copied().filter(|h| Timeline::handle_exists(&cohere_side, *h).unwrap_or(true)).collect();
    ensure_eq!(left, Vec::<u32>::new(), "imported handles that still exist");
    let lowest = handles.iter().copied().min().unwrap_or(1);
    let next = cohere_side.create_timeline().check("timeline after")?;
    ensure_eq!(next.handle(), lowest, "the next handle (no temporary handle leaked)");
    Ok(())
}

/// Through the protocol, against the real cohere process: 1000 timelines imported and
/// destroyed (some with points set and committed) leave its descriptors as they were and no
/// timeline alive.
fn syncobj_1000_timelines_leave_cohere_flat() -> Result<(), String> {
    let mut cohere = Cohere::start(&["--headless", "--desktop"], &[], &[])?;
    cohere.wait("cohere to listen", |_| true)?;
    let baseline = cohere.fds()?;
    let dir = std::env::var("XDG_RUNTIME_DIR").check("XDG_RUNTIME_DIR")?;
    let stream = UnixStream::connect(std::path::Path::new(&dir).join(&cohere.socket)).check("connect")?;
    let mut client = TestClient::new(stream);
    client.blocking_roundtrip().check("registry")?;
    client.bind_globals();
    let device = virtio_render_node()?;
    for batch in 0..10 {
        let mut objects = Vec::new();
        for _ in 0..100 {
            let t = device.create_timeline().check("timeline")?;
            let fd = t.export().check("export")?;
            objects.push(client.import_timeline(fd.as_fd()));
        }
        client.blocking_roundtrip().check(&format!("batch {batch}"))?;
        for o in objects {
            o.destroy();
        }
        client.blocking_roundtrip().check("destroy")?;
    }
    let stats = cohere.wait("1000 timelines imported and gone", |s| s.timelines_imported >= 1000 && s.timelines_alive == 0)?;
    drop(client);
    cohere.wait("the client gone", |s| s.clients == 0)?;
    cohere.fds_back_to(baseline).map_err(|e| format!("{e}; {}", summary(&stats)))?;
    cohere.stop()?;
    Ok(())
}

/// A syncobj client commits its first buffer, then a second whose acquire point stays
/// unsignalled until the test says so (at least 500 ms): meanwhile the screen shows the first
/// buffer exactly, and afterwards the second. The first buffer's release point signals when
/// nothing reads it any more: a composited udmabuf when the second replaced it, a vgem buffer
/// (CPU copy) as soon as its copy landed, before the second even applied. The statistics count
/// the releases per path.
fn syncobj_acquire_holds_the_frame_and_release_follows_each_path() -> Result<(), String> {
    let (cw, ch) = CLIENT_SIZE;
    for (source, path, released_while_held) in [("udmabuf", ReleasePath::Composite, false), ("vgem", ReleasePath::CpuCopy, true)] {
        let what = |e: String| format!("{source}: {e}");
        let shot = scratch("shot", "png");
        let report = scratch("client", "json");
        let go = scratch("acquire", "go");
        let me = std::env::current_exe().check("exe")?.display().to_string();
        let size = format!("{cw}x{ch}");
        let (shot_arg, report_arg, hold) = (shot.display().to_string(), report.display().to_string(), format!("until:{}", go.display()));
        let damage = format!("0,0,{cw},{ch}");
        let env = [
            ("COHERE_CLIENT_SYNCOBJ", "1"),
            ("COHERE_CLIENT_SOURCE", source),
            ("COHERE_CLIENT_DAMAGE", damage.as_str()),
            ("COHERE_CLIENT_FENCE", hold.as_str()),
            ("COHERE_CLIENT_REPORT", report_arg.as_str()),
        ];
        let args = ["--headless", "--kiosk", "--size", &size, "--screenshot", &shot_arg, "--after-frames", "0"];
        let mut cohere = Cohere::start(&args, &[&me, CLIENT_MODE], &env)?;
        cohere.wait_client(&report, "the first buffer presented", |r| r.presented >= 1).map_err(what)?;
        cohere
            .wait("the second commit held for its acquire point", |s| s.commits_waiting == 1 && s.commits_held_for_fences == 1)
            .map_err(what)?;
        let held_since = Instant::now();
        let (w, _, rgba) = cohere.screenshot(&shot).map_err(what)?;
        compare(&rgba, w, &test_image(cw as u32, ch as u32)).map_err(|e| what(format!("while the acquire point is unsignalled: {e}")))?;
        // The scenario: the point signals no sooner than 500 ms after the commit waited (this
        // pause sets the scenario's timing; nothing waits on it for a state change).
        if let Some(rest) = Duration::from_millis(500).checked_sub(held_since.elapsed()) {
            std::thread::sleep(rest);
        }
        std::fs::write(&go, "").check("go")?;
        let client = cohere.wait_client(&report, "the second buffer presented, the first released", |r| {
            r.presented >= 2 && r.release1_signalled.is_some()
        });
        let client = client.map_err(what)?;
        let (w, _, rgba) = cohere.screenshot(&shot).map_err(what)?;
        compare(&rgba, w, &alt_image(cw as u32, ch as u32)).map_err(|e| what(format!("after the acquire point signalled: {e}")))?;
        let stopped = cohere.stop().map_err(what)?;
        ensure_eq!(
            (client.release1_during_hold, client.release1_signalled),
            (Some(released_while_held), Some(true)),
            "{source}: first buffer's release point (signalled while the second waited, signalled after)"
        );
        let counter = stopped.stats.releases.iter().find(|r| r.path == path).map(|r| r.counter).unwrap_or_default();
        if counter.releases == 0 || counter.release_points == 0 {
            return Err(what(format!("no {path:?} release through a release point: {:?}", stopped.stats.releases)));
        }
    }
    Ok(())
}

/// A surface whose acquire fence never signals (a sw_sync write fence, or a syncobj acquire
/// point) stays frozen, while another client keeps getting frame callbacks for commits that are
/// presented; killing the frozen client frees its wait (descriptors back to where they were).
fn a_fence_that_never_signals_freezes_only_its_surface() -> Result<(), String> {
    for syncobj in ["0", "1"] {
        let what = |e: String| format!("{}: {e}", if syncobj == "1" { "syncobj acquire point" } else { "sw_sync fence" });
        let me = std::env::current_exe().check("exe")?.display().to_string();
        let mut cohere = Cohere::start(&["--headless", "--desktop"], &[], &[])?;
        let busy_report = scratch("busy", "json");
        let busy_arg = busy_report.display().to_string();
        let mut busy = cohere.client(
            &me,
            &[CLIENT_MODE, "64", "64", "busy", "desktop"],
            &[("COHERE_CLIENT_CALLBACKS", "1"), ("COHERE_CLIENT_REPORT", &busy_arg)],
        )?;
        // Callbacks per output frame, over `frames` frames.
        let rate = |cohere: &mut Cohere, frames: u64| -> Result<f64, String> {
            let start = cohere.wait("statistics", |_| true)?;
            let f0 = start.output("HEADLESS-1").map_or(0, |c| c.frames);
            let c0 = cohere.wait_client(&busy_report, "the busy client's callbacks", |_| true)?.callbacks;
            let end = cohere.wait(&format!("{frames} more frames"), |s| s.output("HEADLESS-1").is_some_and(|c| c.frames >= f0 + frames))?;
            let c1 = cohere.wait_client(&busy_report, "the busy client's callbacks", |_| true)?.callbacks;
            let f1 = end.output("HEADLESS-1").map_or(0, |c| c.frames);
            Ok((c1 - c0) as f64 / (f1 - f0).max(1) as f64)
        };
        cohere.wait_client(&busy_report, "the busy client under way", |r| r.callbacks >= 30).map_err(what)?;
        let alone = rate(&mut cohere, 120).map_err(what)?;
        let baseline = cohere.fds()?;
        let frozen_report = scratch("frozen", "json");
        let frozen_arg = frozen_report.display().to_string();
        let never = format!("until:{}", scratch("never", "go").display());
        let mut frozen = cohere.client(
            &me,
            &[CLIENT_MODE, "64", "64", "frozen", "desktop"],
            &[
                ("COHERE_CLIENT_SYNCOBJ", syncobj),
                ("COHERE_CLIENT_DAMAGE", "0,0,64,64"),
                ("COHERE_CLIENT_FENCE", never.as_str()),
                ("COHERE_CLIENT_REPORT", &frozen_arg),
            ],
        )?;
        cohere.wait("the frozen client's commit held", |s| s.commits_waiting == 1).map_err(what)?;
        // The other client keeps going: 60 more frame callbacks, each for a commit of its
        // presented in a frame, while the frozen commit stays held. (How many per frame is
        // printed, not asserted: it depends on how fast the machine runs the client.)
        let before = cohere.wait_client(&busy_report, "the busy client's callbacks", |_| true)?.callbacks;
        cohere.wait_client(&busy_report, "60 more callbacks of the busy client", |r| r.callbacks >= before + 60).map_err(what)?;
        let with_frozen = rate(&mut cohere, 120).map_err(what)?;
        let held = cohere.wait("statistics", |_| true)?;
        ensure_eq!(held.commits_waiting, 1, "{}: the frozen commit still held", what(String::new()));
        let report = cohere.wait_client(&frozen_report, "the frozen client's report", |_| true)?;
        ensure_eq!(report.presented, 1, "{}: the frozen client's second commit was presented", what(String::new()));
        let _ = frozen.kill();
        let _ = frozen.wait();
        cohere
            .wait("the frozen client gone with its wait", |s| s.clients == 1 && s.commits_waiting == 0 && s.timelines_alive == 0)
            .map_err(what)?;
        cohere.fds_back_to(baseline).map_err(what)?;
        let _ = busy.kill();
        let _ = busy.wait();
        cohere.stop()?;
        eprintln!("{}", what(format!("callbacks per frame {alone:.3} alone, {with_frozen:.3} with the frozen client")));
    }
    Ok(())
}
