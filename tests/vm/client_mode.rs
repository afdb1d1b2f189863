//! The test client: this same binary, run as cohere's app (or next to it) with [`CLIENT_MODE`].
//! It shows a dma-buf-backed `wl_buffer` (a udmabuf, or a vgem buffer with
//! `COHERE_CLIENT_SOURCE=vgem`) holding [`test_image`], and reports what the compositor told it
//! in the JSON file named by `COHERE_CLIENT_REPORT` (a [`ClientReport`]), which the tests wait
//! on. It blocks on the compositor's events; the only pause is between looks for the file that
//! ends a `COHERE_CLIENT_FENCE=until:FILE` hold.
//!
//! Arguments: `[W H [TITLE [desktop]]]`. With `desktop` the window keeps its own size.
//! Environment:
//! - `COHERE_CLIENT_DAMAGE=x,y,w,h`: then a second buffer with [`alt_image`], of which only that
//!   rectangle is declared damaged;
//! - `COHERE_CLIENT_FENCE=MS`: the second buffer carries an unsignalled sw_sync write fence for
//!   MS milliseconds after its commit (the client keeps talking to the compositor meanwhile);
//!   `COHERE_CLIENT_FENCE=until:FILE`: until FILE exists (the test says when);
//! - `COHERE_CLIENT_THEN=disconnect`: instead of signalling, close the connection and stay
//!   alive (holding the timeline) until cohere terminates it.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cohere::sync::{import_sync_file, DmabufAccess};
use cohere::testkit::fence::Timeline;
use cohere::testkit::{udmabuf, vgem_buffer, Card};
use smithay::reexports::drm::buffer::DrmFourcc;

use crate::cohere::ClientReport;
use crate::tests::{alt_image, test_image, Check};

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

/// The report, written again whenever something in it changes.
struct Reporter {
    path: Option<PathBuf>,
    report: ClientReport,
}

impl Reporter {
    fn update(&mut self, change: impl FnOnce(&mut ClientReport)) -> Result<(), String> {
        change(&mut self.report);
        match &self.path {
            Some(path) => self.report.write(path),
            None => Ok(()),
        }
    }
}

fn run(size: (i32, i32), title: &str, desktop: bool) -> Result<(), String> {
    let mut reporter = Reporter { path: std::env::var_os("COHERE_CLIENT_REPORT").map(PathBuf::from), report: ClientReport::default() };
    let dir = std::env::var("XDG_RUNTIME_DIR").check("XDG_RUNTIME_DIR")?;
    let name = std::env::var("WAYLAND_DISPLAY").check("WAYLAND_DISPLAY")?;
    let stream = UnixStream::connect(PathBuf::from(dir).join(name)).check("connect")?;
    let socket = stream.try_clone().check("socket clone")?;
    let mut client = crate::client::TestClient::new(stream);
    client.blocking_roundtrip().check("registry")?;
    client.bind_globals();
    let window = client.create_window(title);
    client.blocking_roundtrip().check("configure")?;
    let configure = client.ack_last_configure(&window);
    if !desktop && (configure.width, configure.height) != size {
        return Err(format!("kiosk configure {}x{}, expected {size:?}", configure.width, configure.height));
    }
    let (w, h) = (size.0 as u32, size.1 as u32);
    let vgem = match std::env::var("COHERE_CLIENT_SOURCE").as_deref() {
        Ok("vgem") => Some(Card::open_driver("vgem").check("vgem")?),
        _ => None,
    };
    let make = |pixels: Vec<u32>| -> Result<cohere::testkit::MappedDmabuf, String> {
        let bytes: Vec<u8> = pixels.iter().flat_map(|p| p.to_le_bytes()).collect();
        let buffer = match &vgem {
            Some(card) => vgem_buffer(card, w, h).check("vgem buffer")?,
            None => udmabuf(bytes.len()).check("udmabuf")?,
        };
        buffer.write(&bytes).check("fill")?;
        Ok(buffer)
    };
    let buffer = make(test_image(w, h))?;
    let fourcc = DrmFourcc::Xrgb8888 as u32;
    let wl_buffer = client.dmabuf_buffer(buffer.as_fd(), (size.0, size.1, w * 4), fourcc, 0, 1);
    window.surface.attach(Some(&wl_buffer), 0, 0);
    window.surface.damage_buffer(0, 0, size.0, size.1);
    client.presentation_feedback(&window.surface, 1);
    window.surface.commit();
    while client.state.presentations.is_empty() {
        client.queue.blocking_dispatch(&mut client.state).check("waiting for presentation")?;
    }
    // What the compositor now says about this surface (a scanout tranche when the buffer may go
    // on a plane).
    if let Some(_feedback) = client.surface_feedback(&window.surface) {
        client.blocking_roundtrip().check("surface feedback")?;
    }
    let feedback: Vec<String> = client.state.transcript.iter().filter(|l| l.starts_with("feedback: ")).cloned().collect();
    reporter.update(|r| {
        r.presented = 1;
        r.feedback = feedback;
    })?;

    let damage: Option<Vec<i32>> =
        std::env::var("COHERE_CLIENT_DAMAGE").ok().map(|d| d.split(',').filter_map(|n| n.parse().ok()).collect());
    let _second = match damage.as_deref() {
        Some(&[x, y, dw, dh]) => {
            let second = make(alt_image(w, h))?;
            let hold = std::env::var("COHERE_CLIENT_FENCE").ok().map(|v| match v.strip_prefix("until:") {
                Some(file) => Hold::Until(PathBuf::from(file)),
                None => Hold::For(Duration::from_millis(v.parse().unwrap_or(0))),
            });
            let timeline = match hold {
                Some(_) => {
                    let timeline = Timeline::new().check("sw_sync timeline")?;
                    let fence = timeline.fence_at(1).check("fence")?;
                    import_sync_file(second.as_fd(), &fence, DmabufAccess::Write).check("IMPORT_SYNC_FILE")?;
                    Some(timeline)
                }
                None => None,
            };
            let wl_second = client.dmabuf_buffer(second.as_fd(), (size.0, size.1, w * 4), fourcc, 0, 1);
            window.surface.attach(Some(&wl_second), 0, 0);
            window.surface.damage_buffer(x, y, dw, dh);
            client.presentation_feedback(&window.surface, 2);
            window.surface.commit();
            if let (Some(hold), Some(timeline)) = (hold, &timeline) {
                // While the fence stays unsignalled the compositor must keep answering, and
                // must not present the commit.
                let start = Instant::now();
                let mut answered = 0;
                while !hold.over(start)? {
                    client.blocking_roundtrip().check("roundtrip while fenced")?;
                    answered += 1;
                    if client.state.presentations.len() >= 2 {
                        return Err("the fenced buffer was presented before its fence signalled".into());
                    }
                }
                reporter.update(|r| r.held_roundtrips = answered)?;
                if std::env::var("COHERE_CLIENT_THEN").as_deref() == Ok("disconnect") {
                    socket.shutdown(std::net::Shutdown::Both).check("shutdown")?;
                    reporter.update(|r| r.disconnected = true)?;
                    // Keep the timeline (an unsignalled fence) until cohere ends this process.
                    loop {
                        std::thread::park();
                    }
                }
                timeline.advance(1).check("signal")?;
            }
            while client.state.presentations.len() < 2 {
                client.queue.blocking_dispatch(&mut client.state).check("waiting for the damage's presentation")?;
            }
            reporter.update(|r| r.presented = 2)?;
            Some((second, wl_second))
        }
        _ => None,
    };
    // Stay mapped until cohere ends the session (the connection closes).
    while client.queue.blocking_dispatch(&mut client.state).is_ok() {}
    Ok(())
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
