//! The runnable compositor: event loop, Wayland display and socket, frame pacing, the launched
//! app, screenshots and exit conditions. The `cohere` binary is a thin CLI over this type, and
//! a program can drive it the same way.
//!
//! # How to use
//!
//! A headless compositor with one 640x480 output. The `cohere` binary does the same with a
//! listening socket and [`Compositor::run`].
//!
//! ```no_run
//! use cohere::{Compositor, Options, OutputConfig, ShellMode, SocketChoice};
//!
//! let options = Options {
//!     shell: ShellMode::Kiosk,
//!     outputs: vec![OutputConfig { size: (640, 480), refresh_mhz: 60_000 }],
//!     socket: SocketChoice::Auto,
//!     exit_after_frames: Some(120),
//!     ..Options::default()
//! };
//! let mut compositor = Compositor::new_headless(options)?;
//! println!("WAYLAND_DISPLAY={:?}", compositor.socket_name());
//! let exit = compositor.run();
//! println!("stopped: {exit:?}");
//! # Ok::<(), cohere::StartError>(())
//! ```

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use smithay::output::Output;
use smithay::reexports::calloop::generic::Generic;
use smithay::reexports::calloop::timer::{TimeoutAction, Timer};
use smithay::reexports::calloop::{EventLoop, Interest, Mode, PostAction};
use smithay::reexports::wayland_server::{Client, Display};
use smithay::wayland::socket::ListeningSocketSource;

use crate::backend::headless::{Headless, HeadlessError};
use crate::backend::renderer::RendererPreference;
use crate::backend::Backend;
use crate::core::{Core, OutputConfig};
use crate::render::{finish_frame, frame_made, Presented, Screenshot};
use crate::shell::ShellMode;
use crate::State;

/// How frames are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FramePacing {
    /// A timer at each output's refresh rate.
    #[default]
    Refresh,
    /// Frames happen only when [`Compositor::advance_frame`] is called (deterministic tests).
    #[cfg(feature = "test-support")]
    Manual,
}

/// Where clients connect.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SocketChoice {
    /// The first free `wayland-N`.
    #[default]
    Auto,
    /// Exactly this name under `$XDG_RUNTIME_DIR`; in use is an error.
    Named(String),
    /// No listening socket (clients are inserted directly, as in tests).
    None,
}

/// Where screenshots of the primary output go: once it has shown `after_frames` frames (if
/// set), and again on every SIGUSR1 (see [`Compositor::handle_signals`]).
#[derive(Debug, Clone)]
pub struct ScreenshotRequest {
    /// The PNG file.
    pub path: PathBuf,
    /// Write it after this many frames of the first output (`None`: only on SIGUSR1).
    pub after_frames: Option<u64>,
}

impl ScreenshotRequest {
    /// Creates `path` now, so an unwritable path fails before anything runs; the PNG is
    /// written later (through a temporary file and a rename, so a reader never sees half).
    pub fn new(path: PathBuf, after_frames: Option<u64>) -> std::io::Result<Self> {
        File::create(&path)?;
        Ok(Self { path, after_frames })
    }

    fn write(&self, shot: &Screenshot) -> Result<(), String> {
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let file = File::create(&tmp).map_err(|e| e.to_string())?;
        shot.write_png(std::io::BufWriter::new(file)).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &self.path).map_err(|e| e.to_string())
    }
}

/// Everything the compositor needs to start.
#[derive(Debug, Default)]
pub struct Options {
    /// Kiosk or desktop.
    pub shell: ShellMode,
    /// One entry per output; empty means one default output.
    pub outputs: Vec<OutputConfig>,
    /// auto, pixman or gles (see [`crate::backend::renderer`]).
    pub renderer: RendererPreference,
    /// Where clients connect.
    pub socket: SocketChoice,
    /// A screenshot to write (headless).
    pub screenshot: Option<ScreenshotRequest>,
    /// Stop after the first output showed this many frames.
    pub exit_after_frames: Option<u64>,
    /// Timer-paced or driven by hand (tests).
    pub pacing: FramePacing,
    /// linux-dmabuf main device (dev_t). `None` picks the first DRM render node, if any.
    pub dmabuf_main_device: Option<u64>,
    /// Quirk database and user overrides for the coherency model.
    pub coherency: crate::coherency::CoherencyOptions,
    /// KMS: drive only this device node instead of every one on the seat.
    pub drm_device: Option<PathBuf>,
    /// Write the live statistics here (every [`crate::stats::INTERVAL`] and at exit) and keep
    /// the file. `None`: next to the listening socket, removed at exit (see [`crate::stats`]).
    pub stats_file: Option<PathBuf>,
    /// cohere-buffer-path-v1, which tells clients which path their buffers take.
    pub buffer_path: Offer,
}

/// Whether one of cohere's optional protocols is offered to clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Offer {
    #[default]
    /// Offered (the default).
    Offered,
    /// Not offered.
    NotOffered,
}

/// Why [`Compositor::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `--exit-after-frames` was reached.
    FramesDone,
    /// The launched app exited (kiosk); carries the status cohere should exit with.
    AppExited(i32),
    /// A fatal backend error.
    Failed,
    /// SIGTERM or SIGINT (see [`Compositor::handle_signals`]).
    Terminated,
}

/// Errors that stop the compositor from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    /// The headless backend failed.
    Headless(#[from] HeadlessError),
    #[error(transparent)]
    /// `--renderer gles` without an EGL device.
    Renderer(#[from] crate::backend::renderer::NoGlesDevice),
    #[error(transparent)]
    /// A quirk or config file is broken.
    Quirks(#[from] crate::coherency::QuirkError),
    #[error("could not create the Wayland display")]
    /// The Wayland display could not be created.
    Display(#[source] smithay::reexports::wayland_server::backend::InitError),
    #[error("socket {name:?}")]
    /// The socket could not be bound.
    Socket {
        /// The socket's name.
        name: String,
        #[source]
        /// Why.
        source: smithay::reexports::wayland_server::BindError,
    },
    #[error("event loop")]
    /// The event loop failed.
    EventLoop(#[source] smithay::reexports::calloop::Error),
    #[error("signal handling")]
    /// Signal handlers could not be installed.
    Signals(#[source] std::io::Error),
    #[cfg(feature = "kms")]
    #[error(transparent)]
    /// The KMS backend failed.
    Drm(#[from] crate::backend::drm::DrmBackendError),
    #[error("{0}")]
    /// Something this backend can't do.
    Unsupported(String),
    #[error("could not launch {command:?}: {source}")]
    /// The app could not be launched.
    Spawn {
        /// The command line.
        command: String,
        /// The system's error.
        source: std::io::Error,
    },
}

/// Run-time controls that frame handlers consult: screenshot, exit conditions.
#[derive(Debug, Default)]
pub struct Control {
    /// Set when the compositor should stop, and why.
    pub exit: Option<Exit>,
    screenshot: Option<ScreenshotRequest>,
    /// SIGUSR1 asked for a screenshot of the next primary frame.
    screenshot_asked: bool,
    /// Screenshots written so far.
    pub screenshots_written: u64,
    exit_after_frames: Option<u64>,
    /// Frames shown by the primary output.
    primary_frames: u64,
    /// Set when the launched app's pidfd became readable.
    app_exited: bool,
}

/// The app cohere launched, and what its exit means.
struct LaunchedApp {
    child: Child,
    exit_with_app: bool,
}

/// A compositor with its event loop.
pub struct Compositor<B: Backend> {
    event_loop: EventLoop<'static, State<B>>,
    /// The compositor's state: backend and core.
    pub state: State<B>,
    socket_name: Option<OsString>,
    app: Option<LaunchedApp>,
    /// Signal handlers [`Compositor::handle_signals`] installed, removed on drop.
    signals: Vec<signal_hook::SigId>,
}

impl Compositor<Headless> {
    /// Starts a headless compositor with the given options.
    pub fn new_headless(options: Options) -> Result<Self, StartError> {
        let event_loop: EventLoop<'static, State<Headless>> = EventLoop::try_new().map_err(StartError::EventLoop)?;
        let display: Display<State<Headless>> = Display::new().map_err(StartError::Display)?;
        let dh = display.handle();
        let main_device = options.dmabuf_main_device.or_else(first_render_node);
        let quirks = options.coherency.load()?;
        let decision = crate::backend::renderer::choose(options.renderer)?;
        let backend = Headless::new(&decision, &dh, main_device, quirks)?;
        let mut core = Core::new(dh, options.shell, event_loop.handle());
        let configs = if options.outputs.is_empty() { vec![OutputConfig::default()] } else { options.outputs.clone() };
        let mut outputs = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            outputs.push((core.add_output(&format!("HEADLESS-{}", i + 1), *config, "headless"), *config));
        }
        let mut state = State { backend, core };
        state.offer_globals(&options);
        for (output, _) in &outputs {
            state.backend.add_output(output)?;
        }
        state.core.control.configure(options.screenshot, options.exit_after_frames);
        let mut compositor = Self::assemble(event_loop, display, state, &options.socket, options.stats_file.clone())?;
        if options.pacing == FramePacing::Refresh {
            for (output, config) in outputs {
                compositor.pace_headless_output(output, config.refresh_interval())?;
            }
        }
        Ok(compositor)
    }

    fn pace_headless_output(&mut self, output: Output, interval: Duration) -> Result<(), StartError> {
        let mut next = Instant::now() + interval;
        let timer = Timer::from_deadline(next);
        self.event_loop
            .handle()
            .insert_source(timer, move |_, _, state| {
                headless_frame(state, &output, interval);
                // Schedule from the previous deadline, not from now, so the cadence doesn't drift;
                // after a long stall skip missed frames instead of bursting.
                next += interval;
                let now = Instant::now();
                if next < now {
                    next = now + interval;
                }
                TimeoutAction::ToInstant(next)
            })
            .map_err(|e| StartError::EventLoop(e.error))?;
        Ok(())
    }

    /// Renders and presents one frame on `output` now (manual pacing).
    #[cfg(feature = "test-support")]
    pub fn advance_frame(&mut self, output: &Output) {
        let interval = self.state.core.output_config(output).map(|c| c.refresh_interval()).unwrap_or(Duration::from_millis(16));
        headless_frame(&mut self.state, output, interval);
        self.flush();
    }

    /// Reads back what `output` shows right now.
    pub fn screenshot(&mut self, output: &Output) -> Result<Screenshot, crate::render::ScreenshotError> {
        self.state.backend.screenshot(output)
    }
}

/// One headless frame: render, present, then the screenshot and exit checks.
fn headless_frame(state: &mut State<Headless>, output: &Output, interval: Duration) {
    let report = match state.backend.render(output, &state.core) {
        Ok(report) => report,
        Err(err) => {
            tracing::error!(err = %crate::ErrorChain(&err), output = output.name(), "frame failed");
            state.core.control.exit = Some(Exit::Failed);
            return;
        }
    };
    let presented = state.core.clock.now();
    state.core.counters.frames += 1;
    if report.damaged {
        state.core.counters.frames_rendered += 1;
        let c = state.core.counters_of(output);
        c.queued += 1;
        c.flips += 1;
    }
    let seq = state.core.counters.frames;
    let feedback = frame_made(&state.core, output, &report.states);
    finish_frame(&mut state.core, output, &report.states, feedback, Presented::timer(presented, interval, seq));
    state.publish_output_paths(output);

    if state.core.primary_output() != Some(output) {
        return;
    }
    let Some(request) = state.core.control.primary_frame() else { return };
    let written = state.backend.screenshot(output).map_err(|e| e.to_string()).and_then(|shot| request.write(&shot));
    match written {
        Ok(()) => {
            state.core.control.screenshots_written += 1;
            tracing::info!(path = %request.path.display(), "screenshot written");
        }
        Err(err) => {
            tracing::error!(%err, path = %request.path.display(), "screenshot not written");
            state.core.control.exit = Some(Exit::Failed);
        }
    }
}

impl Control {
    pub(crate) fn configure(&mut self, screenshot: Option<ScreenshotRequest>, exit_after_frames: Option<u64>) {
        self.screenshot = screenshot;
        self.exit_after_frames = exit_after_frames;
    }

    /// Counts a frame shown by the primary output, sets the exit condition when reached, and
    /// returns the screenshot request when one is due now.
    pub(crate) fn primary_frame(&mut self) -> Option<ScreenshotRequest> {
        self.primary_frames += 1;
        let frames = self.primary_frames;
        if self.exit_after_frames.is_some_and(|n| frames >= n) && self.exit.is_none() {
            self.exit = Some(Exit::FramesDone);
        }
        let request = self.screenshot.as_ref()?;
        let scheduled = request.after_frames.is_some_and(|n| frames == n);
        (scheduled || std::mem::take(&mut self.screenshot_asked)).then(|| request.clone())
    }
}

impl<B: Backend> Compositor<B> {
    pub(crate) fn assemble(
        event_loop: EventLoop<'static, State<B>>,
        display: Display<State<B>>,
        state: State<B>,
        socket: &SocketChoice,
        stats_file: Option<PathBuf>,
    ) -> Result<Self, StartError> {
        let handle = event_loop.handle();
        handle
            .insert_source(Generic::new(display, Interest::READ, Mode::Level), |_, display, state| {
                // SAFETY: the display is never dropped while the event loop runs.
                if let Err(err) = unsafe { display.get_mut().dispatch_clients(state) } {
                    tracing::error!(%err, "dispatching clients failed");
                }
                Ok(PostAction::Continue)
            })
            .map_err(|e| StartError::EventLoop(e.error))?;

        let socket = match socket {
            SocketChoice::Auto => {
                Some(ListeningSocketSource::new_auto().map_err(|source| StartError::Socket { name: "wayland-N".into(), source })?)
            }
            SocketChoice::Named(name) => {
                Some(ListeningSocketSource::with_name(name).map_err(|source| StartError::Socket { name: name.clone(), source })?)
            }
            SocketChoice::None => None,
        };
        let socket_name = socket.as_ref().map(|s| s.socket_name().to_os_string());
        let mut state = state;
        let stats = match stats_file {
            Some(path) => Some(crate::stats::StatsWriter::new(path, false)),
            None => socket_name
                .as_ref()
                .and_then(|n| crate::stats::path_for(&n.to_string_lossy()))
                .map(|p| crate::stats::StatsWriter::new(p, true)),
        };
        if let Some(writer) = stats {
            tracing::info!(path = %writer.path().display(), "live statistics");
            state.core.stats = Some(writer);
            handle
                .insert_source(Timer::immediate(), |_, _, state| {
                    let snapshot = crate::stats::Stats::collect(state);
                    if let Some(writer) = state.core.stats.as_mut() {
                        writer.write(snapshot);
                    }
                    TimeoutAction::ToDuration(crate::stats::INTERVAL)
                })
                .map_err(|e| StartError::EventLoop(e.error))?;
        }
        if let Some(socket) = socket {
            handle
                .insert_source(socket, |stream, _, state| {
                    if let Err(err) = state.core.display_handle.insert_client(stream, state.core.client_data()) {
                        tracing::warn!(%err, "could not accept client");
                    }
                })
                .map_err(|e| StartError::EventLoop(e.error))?;
        }
        Ok(Self { event_loop, state, socket_name, app: None, signals: Vec::new() })
    }

    /// Handles signals the way a user of the `cohere` binary expects: SIGTERM and SIGINT stop
    /// [`Compositor::run`] cleanly with [`Exit::Terminated`] (the launched app is terminated,
    /// the last statistics written); SIGUSR1 writes a screenshot of the primary output's next
    /// frame to the `--screenshot` file (headless); SIGHUP reads the quirk database and the
    /// overrides again ([`State::reload_coherency`]). An embedder that handles signals itself
    /// doesn't call this.
    pub fn handle_signals(&mut self) -> Result<(), StartError> {
        self.on_signals(&[signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT], |state| {
            tracing::info!("termination signal: stopping");
            if state.core.control.exit.is_none() {
                state.core.control.exit = Some(Exit::Terminated);
            }
        })?;
        self.on_signals(&[signal_hook::consts::SIGUSR1], |state| {
            if state.core.control.screenshot.is_some() {
                state.core.control.screenshot_asked = true;
            } else {
                tracing::warn!("SIGUSR1: no --screenshot file to write to");
            }
        })?;
        self.on_signals(&[signal_hook::consts::SIGHUP], |state| match state.reload_coherency() {
            Ok(()) => tracing::info!("SIGHUP: configuration reloaded, plans recomputed"),
            // A broken file leaves the running configuration in place.
            Err(err) => tracing::error!(%err, "SIGHUP: configuration not reloaded"),
        })
    }

    /// Runs `then` on the event loop whenever one of `signals` arrives (a self-pipe).
    fn on_signals(&mut self, signals: &[i32], then: fn(&mut State<B>)) -> Result<(), StartError> {
        let (read, write) = UnixStream::pair().map_err(StartError::Signals)?;
        read.set_nonblocking(true).map_err(StartError::Signals)?;
        for &signal in signals {
            let write = write.try_clone().map_err(StartError::Signals)?;
            self.signals.push(signal_hook::low_level::pipe::register(signal, write).map_err(StartError::Signals)?);
        }
        self.event_loop
            .handle()
            .insert_source(Generic::new(read, Interest::READ, Mode::Level), move |_, read, state| {
                // Drain the wake-up bytes: several signals may have collapsed into one wake-up.
                let mut buf = [0u8; 16];
                // SAFETY: the stream stays registered with the loop; reading doesn't close it.
                while std::io::Read::read(unsafe { read.get_mut() }, &mut buf).is_ok_and(|n| n > 0) {}
                then(state);
                Ok(PostAction::Continue)
            })
            .map_err(|e| StartError::EventLoop(e.error))?;
        Ok(())
    }

    /// The socket name clients use as WAYLAND_DISPLAY, if listening.
    pub fn socket_name(&self) -> Option<&OsStr> {
        self.socket_name.as_deref()
    }

    /// Launches `command` with WAYLAND_DISPLAY pointing at this compositor. In kiosk mode the
    /// compositor exits with the app's status when it exits.
    pub fn spawn(&mut self, command: &[OsString]) -> Result<(), StartError> {
        let Some((program, args)) = command.split_first() else { return Ok(()) };
        let describe = || command.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
        let mut cmd = Command::new(program);
        cmd.args(args).env_remove("WAYLAND_SOCKET");
        if let Some(name) = &self.socket_name {
            cmd.env("WAYLAND_DISPLAY", name);
        }
        let child = cmd.spawn().map_err(|source| StartError::Spawn { command: describe(), source })?;
        let pid = child.id();
        tracing::info!(pid, command = %describe(), "launched app");
        let pidfd = rustix::process::Pid::from_raw(pid as i32)
            .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok());
        let exit_with_app = self.state.core.shell.mode == ShellMode::Kiosk;
        self.app = Some(LaunchedApp { child, exit_with_app });
        match pidfd {
            Some(fd) => self.watch_app(fd),
            None => tracing::warn!(pid, "pidfd_open failed; the app's exit will not be noticed"),
        }
        Ok(())
    }

    fn watch_app(&mut self, pidfd: OwnedFd) {
        let source = Generic::new(pidfd, Interest::READ, Mode::Level);
        let result = self.event_loop.handle().insert_source(source, |_, _, state| {
            state.core.control.app_exited = true;
            Ok(PostAction::Remove)
        });
        if let Err(err) = result {
            tracing::warn!(%err, "cannot watch the launched app");
        }
    }

    /// Dispatches pending events once, waiting at most `timeout`, then flushes clients.
    pub fn dispatch(&mut self, timeout: Option<Duration>) -> Option<Exit> {
        if let Err(err) = self.event_loop.dispatch(timeout, &mut self.state) {
            tracing::error!(%err, "event loop failed");
            self.state.core.control.exit = Some(Exit::Failed);
        }
        self.reap_app();
        let handle = self.state.core.loop_handle.clone();
        self.state.core.commits.prune(&handle);
        self.flush();
        self.state.core.control.exit
    }

    fn reap_app(&mut self) {
        if !std::mem::take(&mut self.state.core.control.app_exited) {
            return;
        }
        let Some(app) = self.app.as_mut() else { return };
        match app.child.try_wait() {
            Ok(Some(status)) => {
                let code = exit_code(status);
                tracing::info!(code, "launched app exited");
                if app.exit_with_app && self.state.core.control.exit.is_none() {
                    self.state.core.control.exit = Some(Exit::AppExited(code));
                }
                self.app = None;
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(%err, "waiting for the launched app"),
        }
    }

    /// Sends queued events to every client.
    pub fn flush(&mut self) {
        if let Err(err) = self.state.core.display_handle.flush_clients() {
            tracing::debug!(%err, "flushing clients");
        }
    }

    /// Runs until an exit condition is met, then writes the last statistics.
    pub fn run(&mut self) -> Exit {
        loop {
            if let Some(exit) = self.dispatch(None) {
                self.finish_stats(&format!("{exit:?}"));
                return exit;
            }
        }
    }

    /// Writes the last statistics snapshot (`running: false`, with `why`) and stops writing.
    pub fn finish_stats(&mut self, why: &str) {
        let snapshot = crate::stats::Stats::collect(&self.state);
        if let Some(mut writer) = self.state.core.stats.take() {
            writer.finish(snapshot, why.to_owned());
        }
    }

    /// Connects a client over one end of a socket pair (tests, embedders with their own sockets).
    pub fn insert_client(&mut self, stream: UnixStream) -> std::io::Result<Client> {
        let data = self.state.core.client_data();
        self.state.core.display_handle.insert_client(stream, data)
    }
}

impl<B: Backend> Drop for Compositor<B> {
    fn drop(&mut self) {
        for id in self.signals.drain(..) {
            signal_hook::low_level::unregister(id);
        }
        // Don't leave the launched app running without its compositor.
        if let Some(mut app) = self.app.take() {
            if let Ok(None) = app.child.try_wait() {
                if let Some(pid) = rustix::process::Pid::from_raw(app.child.id() as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
                let _ = app.child.wait();
            }
        }
    }
}

/// dev_t of the first /dev/dri/renderD* node, for linux-dmabuf feedback's main device.
pub(crate) fn first_render_node() -> Option<u64> {
    let mut nodes: Vec<_> = std::fs::read_dir("/dev/dri")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("renderD")))
        .collect();
    nodes.sort();
    nodes.iter().find_map(|p| rustix::fs::stat(p).ok().map(|s| s.st_rdev))
}

/// The shell convention for a child's status: its exit code, or 128 + the signal number.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
