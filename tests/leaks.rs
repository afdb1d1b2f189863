//! Nothing leaks: the compositor's descriptors stay flat while clients connect, share buffers
//! and fds, and leave. The compositor runs as its own process (the real `cohere` binary), so
//! its /proc/<pid>/fd counts only what the compositor holds.

#[path = "fixture/client.rs"]
#[allow(dead_code)]
mod client;

#[path = "common/cohere.rs"]
#[allow(dead_code)]
mod cohere;

use std::os::unix::net::UnixStream;

/// The real `cohere` binary in its own runtime directory.
struct Compositor {
    cohere: cohere::Cohere,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Compositor {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("runtime dir");
        let runtime = dir.path().to_str().expect("path").to_owned();
        let mut cohere = cohere::Cohere::start(
            &["--headless", "--desktop", "--size", "320x240"],
            &[],
            &[("XDG_RUNTIME_DIR", runtime.as_str()), ("RUST_LOG", "error")],
        )
        .expect("cohere starts");
        cohere.wait("cohere to listen", |_| true).expect("statistics");
        let socket = dir.path().join(&cohere.socket);
        Compositor { cohere, socket, _dir: dir }
    }

    fn fds(&self) -> usize {
        self.cohere.fds().unwrap_or(0)
    }

    /// Waits until every client is gone (the statistics say so) and then until the descriptor
    /// count comes back to `baseline` (a closed client's socket goes at the server's next
    /// dispatch); the deadline's message says what was left over.
    fn settles_to(&mut self, baseline: usize) -> Result<(), String> {
        self.cohere.wait("every client gone", |s| s.clients == 0 && s.commits_waiting == 0)?;
        self.cohere.fds_back_to(baseline).map_err(|e| format!("{e}: {:?}", self.fd_links()))
    }

    fn fd_links(&self) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(format!("/proc/{}/fd", self.cohere.pid()))
            .map(|d| d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok()).collect())
            .unwrap_or_default()
    }
}

/// A client maps a window with an shm buffer and a frame callback, then leaves: destroying its
/// objects first, or just closing its socket.
fn client_round(cohere: &Compositor, i: i32, abrupt: bool) {
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
fn compositor_fds_stay_flat_across_clients() -> Result<(), String> {
    let mut cohere = Compositor::start();
    // The baseline: the compositor before any client came.
    let baseline = cohere.fds();
    for i in 0..3 {
        client_round(&cohere, i, false);
    }
    cohere.settles_to(baseline).map_err(|e| format!("after the first 3 clients: {e}"))?;
    for i in 0..40 {
        client_round(&cohere, i, false);
    }
    cohere.settles_to(baseline).map_err(|e| format!("after 40 clients that cleaned up and left: {e}"))?;
    for i in 0..40 {
        client_round(&cohere, i, true);
    }
    cohere.settles_to(baseline).map_err(|e| format!("after 40 clients that just closed their socket: {e}"))?;
    // linux-dmabuf: fds that aren't dma-bufs, sent as planes; some clients are disconnected by
    // a protocol error (create_immed), others get `failed` and leave.
    for i in 0..40 {
        dmabuf_round(&cohere, i);
    }
    cohere.settles_to(baseline).map_err(|e| format!("after 40 clients that sent non-dma-buf planes: {e}"))
}

fn dmabuf_round(cohere: &Compositor, i: i32) {
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
