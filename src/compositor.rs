//! The runnable compositor: event loop, Wayland display and socket, frame pacing, the launched
//! app, screenshots and exit conditions. The `cohere` binary is a thin CLI over this type, and
//! an embedder can drive it the same way.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smithay::output::Output;
use smithay::reexports::calloop::generic::Generic;
use smithay::reexports::calloop::timer::{TimeoutAction, Timer};
use smithay::reexports::calloop::{EventLoop, Interest, Mode, PostAction};
use smithay::reexports::wayland_server::{Client, Display};
use smithay::wayland::socket::ListeningSocketSource;

use crate::backend::headless::{Headless, HeadlessError, RendererKind};
use crate::backend::Backend;
use crate::core::{ClientState, Core, OutputConfig};
use crate::render::{finish_frame, Screenshot};
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

/// A screenshot to write once the primary output has shown `after_frames` frames.
#[derive(Debug)]
pub struct ScreenshotRequest {
    pub path: PathBuf,
    pub after_frames: u64,
    /// Opened at start-up so an unwritable path fails before anything runs.
    file: File,
}

impl ScreenshotRequest {
    /// Opens (creates) `path` for writing now; the PNG is written later.
    pub fn new(path: PathBuf, after_frames: u64) -> std::io::Result<Self> {
        let file = File::create(&path)?;
        Ok(Self { path, after_frames, file })
    }
}

/// Everything the compositor needs to start.
#[derive(Debug, Default)]
pub struct Options {
    pub shell: ShellMode,
    /// One entry per output; empty means one default output.
    pub outputs: Vec<OutputConfig>,
    pub renderer: RendererKind,
    pub socket: SocketChoice,
    pub screenshot: Option<ScreenshotRequest>,
    pub exit_after_frames: Option<u64>,
    pub pacing: FramePacing,
    /// linux-dmabuf main device (dev_t). `None` picks the first DRM render node, if any.
    pub dmabuf_main_device: Option<u64>,
    /// Quirk database and user overrides for the coherency model.
    pub coherency: crate::coherency::CoherencyOptions,
    /// KMS: drive only this device node instead of every one on the seat.
    pub drm_device: Option<PathBuf>,
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
}

/// Errors that stop the compositor from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Headless(#[from] HeadlessError),
    #[error(transparent)]
    Quirks(#[from] crate::coherency::QuirkError),
    #[error("could not create the Wayland display: {0}")]
    Display(String),
    #[error("socket {name:?}: {reason}")]
    Socket { name: String, reason: String },
    #[error("event loop: {0}")]
    EventLoop(String),
    #[error(transparent)]
    Drm(#[from] crate::backend::drm::DrmBackendError),
    #[error("{0}")]
    Unsupported(String),
    #[error("could not launch {command:?}: {source}")]
    Spawn { command: String, source: std::io::Error },
}

/// Run-time controls that frame handlers consult: screenshot, exit conditions.
#[derive(Debug, Default)]
pub struct Control {
    pub exit: Option<Exit>,
    screenshot: Option<ScreenshotRequest>,
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
    pub state: State<B>,
    socket_name: Option<OsString>,
    app: Option<LaunchedApp>,
    stats_path: Option<PathBuf>,
}

impl Compositor<Headless> {
    /// Starts a headless compositor with the given options.
    pub fn new_headless(options: Options) -> Result<Self, StartError> {
        let event_loop: EventLoop<'static, State<Headless>> = EventLoop::try_new().map_err(|e| StartError::EventLoop(e.to_string()))?;
        let display: Display<State<Headless>> = Display::new().map_err(|e| StartError::Display(e.to_string()))?;
        let dh = display.handle();
        let main_device = options.dmabuf_main_device.or_else(first_render_node);
        let quirks = options.coherency.load()?;
        let backend = Headless::new(options.renderer, &dh, main_device, quirks)?;
        let mut core = Core::new(dh, options.shell, event_loop.handle());
        let configs = if options.outputs.is_empty() { vec![OutputConfig::default()] } else { options.outputs.clone() };
        let mut outputs = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            outputs.push((core.add_output(&format!("HEADLESS-{}", i + 1), *config, "headless"), *config));
        }
        let mut state = State { backend, core };
        for (output, _) in &outputs {
            state.backend.add_output(output)?;
        }
        state.core.control.configure(options.screenshot, options.exit_after_frames);
        let mut compositor = Self::assemble(event_loop, display, state, &options.socket)?;
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
            .map_err(|e| StartError::EventLoop(e.to_string()))?;
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
            tracing::error!(%err, output = output.name(), "frame failed");
            state.core.control.exit = Some(Exit::Failed);
            return;
        }
    };
    let presented = state.core.clock.now();
    state.core.counters.frames += 1;
    if report.damaged {
        state.core.counters.frames_rendered += 1;
    }
    let seq = state.core.counters.frames;
    finish_frame(&mut state.core, output, &report.states, presented, interval, seq);

    if state.core.primary_output() != Some(output) {
        return;
    }
    let Some(request) = state.core.control.primary_frame() else { return };
    let written = state
        .backend
        .screenshot(output)
        .map_err(|e| e.to_string())
        .and_then(|shot| shot.write_png(std::io::BufWriter::new(&request.file)).map_err(|e| e.to_string()));
    match written {
        Ok(()) => tracing::info!(path = %request.path.display(), "screenshot written"),
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
    /// returns the screenshot request that is due now, if any.
    pub(crate) fn primary_frame(&mut self) -> Option<ScreenshotRequest> {
        self.primary_frames += 1;
        let frames = self.primary_frames;
        if self.exit_after_frames.is_some_and(|n| frames >= n) && self.exit.is_none() {
            self.exit = Some(Exit::FramesDone);
        }
        if self.screenshot.as_ref().is_some_and(|s| frames >= s.after_frames) {
            return self.screenshot.take();
        }
        None
    }
}

impl<B: Backend> Compositor<B> {
    pub(crate) fn assemble(
        event_loop: EventLoop<'static, State<B>>,
        display: Display<State<B>>,
        state: State<B>,
        socket: &SocketChoice,
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
            .map_err(|e| StartError::EventLoop(e.to_string()))?;

        let socket = match socket {
            SocketChoice::Auto => Some(
                ListeningSocketSource::new_auto().map_err(|e| StartError::Socket { name: "wayland-N".into(), reason: e.to_string() })?,
            ),
            SocketChoice::Named(name) => Some(ListeningSocketSource::with_name(name).map_err(|e| StartError::Socket {
                name: name.clone(),
                reason: match e {
                    smithay::reexports::wayland_server::BindError::AlreadyInUse => "already in use by another compositor".into(),
                    other => other.to_string(),
                },
            })?),
            SocketChoice::None => None,
        };
        let socket_name = socket.as_ref().map(|s| s.socket_name().to_os_string());
        // Live stats for `cohere inspect --live`, once a second, next to the socket.
        let stats_path = socket_name.as_ref().and_then(|n| crate::stats::path_for(&n.to_string_lossy()));
        if let Some(path) = stats_path.clone() {
            let timer = Timer::from_duration(Duration::from_secs(1));
            handle
                .insert_source(timer, move |_, _, state| {
                    if let Err(err) = crate::stats::Stats::collect(state).write(&path) {
                        tracing::debug!(%err, "stats not written");
                    }
                    TimeoutAction::ToDuration(Duration::from_secs(1))
                })
                .map_err(|e| StartError::EventLoop(e.to_string()))?;
        }
        if let Some(socket) = socket {
            handle
                .insert_source(socket, |stream, _, state| {
                    if let Err(err) = state.core.display_handle.insert_client(stream, Arc::new(ClientState::default())) {
                        tracing::warn!(%err, "could not accept client");
                    }
                })
                .map_err(|e| StartError::EventLoop(e.to_string()))?;
        }
        Ok(Self { event_loop, state, socket_name, app: None, stats_path })
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
        self.state.core.prune_commit_waits();
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

    /// Runs until an exit condition is met.
    pub fn run(&mut self) -> Exit {
        loop {
            if let Some(exit) = self.dispatch(None) {
                return exit;
            }
        }
    }

    /// Connects a client over one end of a socket pair (tests, embedders with their own sockets).
    pub fn insert_client(&mut self, stream: UnixStream) -> std::io::Result<Client> {
        self.state.core.display_handle.insert_client(stream, Arc::new(ClientState::default()))
    }
}

impl<B: Backend> Drop for Compositor<B> {
    fn drop(&mut self) {
        if let Some(path) = &self.stats_path {
            let _ = std::fs::remove_file(path);
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
