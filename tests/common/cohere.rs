//! A `cohere` process under test (host tests and the VM tier share this), observed through data: its statistics file (`--stats`,
//! written every 100 ms and once more at exit), its screenshots and the test client's report
//! file. Every wait has a deadline and, when it expires, says what it waited for and what it
//! saw. Nothing here sleeps to let something happen; the only pauses are the short ones between
//! two looks inside a deadline-bounded wait.
//!
//! cohere's stderr is collected only to be shown when a test fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cohere::stats::Stats;

/// Turns any error into the test's failure message, with context.
pub trait Check<T> {
    fn check(self, what: &str) -> Result<T, String>;
}

impl<T, E: std::fmt::Display> Check<T> for Result<T, E> {
    fn check(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// How long any one wait may take. Generous: TCG on a busy 2-core machine is slow, and a wait
/// that succeeds returns as soon as its data is there.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// The pause between two looks at data that isn't there yet.
const POLL: Duration = Duration::from_millis(20);

/// Looks at `probe` until it gives a value or [`DEADLINE`] passes; the error names `what` and
/// the last thing `probe` saw.
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(seen) if start.elapsed() >= DEADLINE => {
                return Err(format!("waited {} s for {what}; last seen: {seen}", DEADLINE.as_secs()))
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// A file name unique to this test run, under /tmp (the guest's /tmp is the host's, through
/// the overlay; sockets go in XDG_RUNTIME_DIR, on tmpfs).
pub fn scratch(stem: &str, ext: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    PathBuf::from(format!("/tmp/cohere-test-{}-{stem}-{}.{ext}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// How cohere ended.
pub struct Stopped {
    pub status: Option<i32>,
    /// The snapshot written at exit (`running: false`).
    pub stats: Stats,
    pub log: String,
}

pub struct Cohere {
    child: Child,
    pub stats_file: PathBuf,
    pub socket: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Cohere {
    /// Starts `cohere ARGS -- APP` with its statistics in a fresh file and a socket of its own.
    /// `env` goes to cohere and so to its app.
    pub fn start(args: &[&str], app: &[&str], env: &[(&str, &str)]) -> Result<Cohere, String> {
        Self::start_with_stats(scratch("stats", "json"), args, app, env)
    }

    /// [`Cohere::start`] with the statistics in `stats_file` (the benchmarks keep it on tmpfs,
    /// where a compositor's runtime files live, instead of the guest's /tmp, whose writes go
    /// through 9p and the overlay).
    pub fn start_with_stats(stats_file: PathBuf, args: &[&str], app: &[&str], env: &[(&str, &str)]) -> Result<Cohere, String> {
        let socket = stats_file.file_stem().and_then(|s| s.to_str()).unwrap_or("cohere-vm").to_owned();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cohere"));
        cmd.args(args).args(["--socket", &socket]).arg("--stats").arg(&stats_file);
        if !app.is_empty() {
            cmd.arg("--").args(app);
        }
        let mut child = cmd
            .env("RUST_LOG", "warn,cohere=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .check("starting cohere")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Ok(Cohere { child, stats_file, socket, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The newest snapshot, if one was written yet.
    pub fn stats(&self) -> Option<Stats> {
        Stats::read(&self.stats_file).ok()
    }

    /// cohere's stderr so far, for failure messages.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    }

    /// Waits for a snapshot of the running compositor for which `until` holds. Fails at once
    /// if cohere exits.
    pub fn wait(&mut self, what: &str, until: impl Fn(&Stats) -> bool) -> Result<Stats, String> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("cohere exited ({status}) while the test waited for {what}:\n{}", self.log()));
            }
            let stats = self.stats();
            if let Some(stats) = stats.as_ref().filter(|s| s.running && until(s)) {
                return Ok(stats.clone());
            }
            if start.elapsed() >= DEADLINE {
                let seen = stats.map_or("no statistics written".into(), |s| summary(&s));
                return Err(format!(
                    "waited {} s for {what}; cohere's statistics said:\n{seen}\ncohere's log:\n{}",
                    DEADLINE.as_secs(),
                    self.log()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Runs `read` (a readback of what a display shows) until it counts: cohere was running
    /// and `output` had completed a page flip before it started, and cohere is still running
    /// and `output` has completed another frame since. So the readback saw cohere's own frame,
    /// never the console's or a screen cohere already left.
    pub fn readback<T>(&mut self, output: &str, mut read: impl FnMut() -> Result<T, String>) -> Result<T, String> {
        let flipped = |s: &Stats| s.output(output).is_some_and(|c| c.flips >= 1);
        let before = self.wait(&format!("{output} to show a frame"), flipped)?;
        let frames = before.output(output).map_or(0, |c| c.frames);
        let value = read()?;
        self.wait(&format!("{output} to complete a frame after the readback"), |s| s.output(output).is_some_and(|c| c.frames > frames))?;
        Ok(value)
    }

    /// A screenshot of the primary output (headless): SIGUSR1, then the PNG once the
    /// statistics count it. Returns (width, height, RGBA).
    pub fn screenshot(&mut self, file: &Path) -> Result<(u32, u32, Vec<u8>), String> {
        let before = self.wait("statistics", |_| true)?.screenshots;
        self.signal(rustix::process::Signal::USR1)?;
        self.wait("the screenshot SIGUSR1 asked for", |s| s.screenshots > before)?;
        read_png(file)
    }

    pub fn signal(&self, signal: rustix::process::Signal) -> Result<(), String> {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).ok_or("no pid")?;
        rustix::process::kill_process(pid, signal).check("kill")
    }

    /// SIGTERM, then the exit and the last snapshot.
    pub fn stop(self) -> Result<Stopped, String> {
        self.signal(rustix::process::Signal::TERM)?;
        self.finish()
    }

    /// Waits for cohere to exit by itself (kiosk: its app exited), then reads the last snapshot.
    pub fn finish(mut self) -> Result<Stopped, String> {
        let status = wait_for("cohere to exit", || match self.child.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("still running".into()),
            Err(e) => Err(e.to_string()),
        });
        let status = match status {
            Ok(status) => status,
            Err(err) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!("{err}\n{}", self.log()));
            }
        };
        // The log thread ends with the pipe; what it has is enough for messages.
        let log = self.log();
        let stats = Stats::read(&self.stats_file).map_err(|e| format!("no last statistics ({e}):\n{log}"))?;
        if stats.running {
            return Err(format!("the last statistics don't say cohere stopped:\n{log}"));
        }
        let _ = std::fs::remove_file(&self.stats_file);
        Ok(Stopped { status: status.code(), stats, log })
    }

    /// cohere's open descriptors, except its statistics file (which it opens for a moment
    /// every 100 ms).
    pub fn fds(&self) -> Result<usize, String> {
        let stats = self.stats_file.to_string_lossy().into_owned();
        let dir = std::fs::read_dir(format!("/proc/{}/fd", self.pid())).check("/proc/pid/fd")?;
        Ok(dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok()).filter(|l| !l.to_string_lossy().starts_with(&stats)).count())
    }

    /// Waits until cohere's descriptors are back to `baseline` (a closed client's socket goes
    /// at its next dispatch).
    pub fn fds_back_to(&self, baseline: usize) -> Result<(), String> {
        wait_for(&format!("cohere's descriptors back to {baseline}"), || match self.fds()? {
            n if n == baseline => Ok(()),
            n => Err(format!("{n} open")),
        })
    }

    /// A client of this compositor (not its app): `program ARGS` with WAYLAND_DISPLAY set, its
    /// output piped (see [`run_to_exit`]).
    pub fn client(&mut self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Child, String> {
        // The first snapshot is written after the socket listens.
        self.wait("cohere to listen", |_| true)?;
        Command::new(program)
            .args(args)
            .env("WAYLAND_DISPLAY", &self.socket)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .check(&format!("starting {program}"))
    }
}

impl Drop for Cohere {
    fn drop(&mut self) {
        // A test that failed half-way: don't leave a compositor holding the display.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits (with the deadline) for `child` to exit; returns its exit code and its stdout and
/// stderr.
pub fn run_to_exit(mut child: Child, what: &str) -> Result<(Option<i32>, String), String> {
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let out = read(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let err = read(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let exited = wait_for(&format!("{what} to exit"), || match child.try_wait() {
        Ok(Some(status)) => Ok(status),
        Ok(None) => Err("still running".into()),
        Err(e) => Err(e.to_string()),
    });
    if exited.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = format!("{}{}", out.join().unwrap_or_default(), err.join().unwrap_or_default());
    match exited {
        Ok(status) => Ok((status.code(), text)),
        Err(e) => Err(format!("{e}; it printed:\n{text}")),
    }
}

/// The parts of a snapshot a failure message needs.
pub fn summary(s: &Stats) -> String {
    let mut out = format!("running {} clients {} ", s.running, s.clients);
    for o in &s.outputs {
        let c = &o.counters;
        out += &format!(
            "| {} frames {} flips {} zero-copy {} composited {} copied {} cursor {} ",
            o.name, c.frames, c.flips, c.zero_copy_elements, c.composited_elements, c.bytes_copied, c.cursor_plane_frames
        );
    }
    out += &format!("| devices {:?} | input {:?} | ", s.devices.iter().map(|d| (&d.card, &d.driver)).collect::<Vec<_>>(), s.input_devices);
    for w in &s.windows {
        out += &format!("window {:?} focused {} shown {} buffer {:?}; ", w.title, w.focused, w.surface.frames_shown, w.surface.buffer);
    }
    out += &format!(
        "copies {} bytes {} fence waits {} waiting {} buffers held {} releases {:?}",
        s.cpu_copies,
        s.bytes_copied,
        s.commits_held_for_fences,
        s.commits_waiting,
        s.buffers_held,
        s.releases.iter().map(|r| (r.path, r.counter.releases)).collect::<Vec<_>>()
    );
    out
}

/// What the test client (`CLIENT_MODE`) reports in the file named by `COHERE_CLIENT_REPORT`.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClientReport {
    /// Presentation feedbacks received for its commits ("presented").
    pub presented: u32,
    /// Roundtrips the compositor answered while a fenced commit waited.
    pub held_roundtrips: u32,
    /// It closed its connection with the fence unsignalled.
    pub disconnected: bool,
    /// Its surface's dma-buf feedback, as transcript lines.
    pub feedback: Vec<String>,
    /// Explicit sync: whether the first buffer's release point had signalled while the second
    /// commit waited for its acquire point, and whether it signalled once the second applied.
    pub release1_during_hold: Option<bool>,
    pub release1_signalled: Option<bool>,
    /// Frame callbacks received (COHERE_CLIENT_CALLBACKS).
    pub callbacks: u64,
    /// Presentation feedbacks that carried the zero_copy flag.
    #[serde(default)]
    pub zero_copy_presented: u32,
    /// cohere-buffer-path-v1 batches for its surface, each as its readable transcript.
    #[serde(default)]
    pub buffer_path: Vec<String>,
    /// Every presentation feedback's `presented` event, in arrival order.
    #[serde(default)]
    pub frames: Vec<PresentedFrame>,
}

/// One `wp_presentation_feedback.presented` event.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PresentedFrame {
    /// The presentation time, CLOCK_MONOTONIC nanoseconds.
    pub nanos: u64,
    /// The sequence number.
    pub seq: u64,
    /// The kind flags.
    pub flags: u32,
}

impl ClientReport {
    /// The newest buffer-path batch, or "" before the first.
    pub fn last_batch(&self) -> &str {
        self.buffer_path.last().map_or("", String::as_str)
    }
}

impl ClientReport {
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).check("report")?).check("report")?;
        std::fs::rename(&tmp, path).check("report")
    }

    pub fn read(path: &Path) -> Option<ClientReport> {
        std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }
}

impl Cohere {
    /// Waits until the test client's report at `file` satisfies `until`; fails at once if
    /// cohere exits meanwhile.
    pub fn wait_client(&mut self, file: &Path, what: &str, until: impl Fn(&ClientReport) -> bool) -> Result<ClientReport, String> {
        self.wait(what, |_| ClientReport::read(file).is_some_and(|r| until(&r)))
            .map_err(|e| format!("{e}\nthe client's report: {:?}", ClientReport::read(file)))?;
        ClientReport::read(file).ok_or_else(|| "the client's report went away".into())
    }
}

/// An image: (width, height, RGBA).
pub type Image = (u32, u32, Vec<u8>);

/// (width, height, RGBA) of a PNG file.
pub fn read_png(file: &Path) -> Result<Image, String> {
    let png = std::fs::File::open(file).check(&format!("{}", file.display()))?;
    let mut reader = png::Decoder::new(png).read_info().check("png")?;
    let mut rgba = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut rgba).check("png frame")?;
    rgba.truncate(info.buffer_size());
    Ok((info.width, info.height, rgba))
}

/// What `examples/embed.rs` did with `client`: its exit status, what it printed, and its
/// screenshot (width, height, RGBA). `env` goes to the example and so to its client.
pub fn run_embed_example(client: &[&str], env: &[(&str, &str)]) -> Result<(Option<i32>, String, Image), String> {
    let exe = std::env::current_exe().check("current exe")?;
    let example = exe.parent().and_then(|deps| deps.parent()).map(|dir| dir.join("examples/embed")).ok_or("no target directory")?;
    let shot = scratch("embed", "png");
    let child = Command::new(&example)
        .arg("--screenshot")
        .arg(&shot)
        .arg("--")
        .args(client)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .check(&format!("starting {}", example.display()))?;
    let (status, text) = run_to_exit(child, "examples/embed")?;
    let png = read_png(&shot).map_err(|e| format!("{e}; the example printed:\n{text}"))?;
    let _ = std::fs::remove_file(&shot);
    Ok((status, text, png))
}
