//! Nothing leaks: the compositor's descriptors stay flat while clients connect, share buffers
//! and fds, and leave. The compositor runs as its own process (the real `cohere` binary), so
//! its /proc/<pid>/fd counts only what the compositor holds.

#[path = "fixture/client.rs"]
#[allow(dead_code)]
mod client;

use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Cohere {
    child: Child,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Cohere {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("runtime dir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_cohere"))
            .args(["--headless", "--desktop", "--size", "320x240", "--socket", "leaks", "--exit-after-frames", "100000"])
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()
            .expect("cohere starts");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().expect("stdout")), &mut line).expect("socket line");
        assert_eq!(line, "WAYLAND_DISPLAY=leaks\n");
        let socket = dir.path().join("leaks");
        Cohere { child, socket, _dir: dir }
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map(|d| d.count()).unwrap_or(0)
    }

    /// Waits (up to 5 s) for the fd count to come back to `want`; returns the last count.
    fn settle_to(&self, want: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.fds();
            if now == want || Instant::now() > deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cohere {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client maps a window with an shm buffer and a frame callback, then leaves: destroying its
/// objects first, or just closing its socket.
fn client_round(cohere: &Cohere, i: i32, abrupt: bool) {
    let mut c = client::TestClient::new(UnixStream::connect(&cohere.socket).expect("connect"));
    c.blocking_roundtrip().expect("registry");
    c.bind_globals();
    let w = c.create_window("leak");
    c.blocking_roundtrip().expect("configure");
    c.ack_last_configure(&w);
    let buffer = c.shm_buffer(20 + i, 10, 1, |x, y| 0xff00_0000 | (x * y) as u32);
    w.surface.attach(Some(&buffer), 0, 0);
    let _cb = c.frame(&w.surface, 1);
    w.surface.commit();
    c.blocking_roundtrip().expect("commit");
    if !abrupt {
        buffer.destroy();
        w.toplevel.destroy();
        w.xdg_surface.destroy();
        w.surface.destroy();
        c.blocking_roundtrip().expect("destroy");
    }
}

#[test]
fn compositor_fds_stay_flat_across_clients() {
    let cohere = Cohere::start();
    for i in 0..3 {
        client_round(&cohere, i, false);
    }
    std::thread::sleep(Duration::from_millis(200));
    let baseline = cohere.fds();
    for i in 0..40 {
        client_round(&cohere, i, false);
    }
    assert_eq!(cohere.settle_to(baseline), baseline, "fds after 40 clients that cleaned up and left");
    for i in 0..40 {
        client_round(&cohere, i, true);
    }
    assert_eq!(cohere.settle_to(baseline), baseline, "fds after 40 clients that just closed their socket");
    // linux-dmabuf: fds that aren't dma-bufs, sent as planes; some clients are disconnected by
    // a protocol error (create_immed), others get `failed` and leave.
    for i in 0..40 {
        dmabuf_round(&cohere, i);
    }
    assert_eq!(cohere.settle_to(baseline), baseline, "fds after 40 clients that sent non-dma-buf planes");
}

fn dmabuf_round(cohere: &Cohere, i: i32) {
    let mut c = client::TestClient::new(UnixStream::connect(&cohere.socket).expect("connect"));
    c.blocking_roundtrip().expect("registry");
    c.bind_globals();
    let memfd = rustix::fs::memfd_create("leak", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    rustix::fs::ftruncate(&memfd, 4096).expect("size");
    let (pipe, _w) = rustix::pipe::pipe().expect("pipe");
    let fd = if i % 2 == 0 { &memfd } else { &pipe };
    let xrgb = u32::from_le_bytes(*b"XR24");
    // create_immed of a non-dma-buf is INVALID_WL_BUFFER: the client is disconnected.
    let _b = c.dmabuf_buffer(std::os::fd::AsFd::as_fd(fd), (16, 16, 64), xrgb, 0, 1);
    let _ = c.blocking_roundtrip();
}
