//! Backend-independent compositor state: protocol globals, the window space, outputs and the
//! shell policy. The backend half lives in [`crate::backend`]; both are joined in
//! [`crate::State`] so a handler can borrow them at the same time.

use std::time::Duration;

use smithay::desktop::{PopupManager, Space, Window};
use smithay::input::{Seat, SeatState};
use smithay::output::{Mode, Output, PhysicalProperties, Scale, Subpixel};
use smithay::reexports::calloop::LoopHandle;
use smithay::reexports::wayland_server::backend::{ClientData, ClientId, DisconnectReason};
use smithay::reexports::wayland_server::protocol::wl_shm;
use smithay::reexports::wayland_server::DisplayHandle;
use smithay::utils::{Clock, Monotonic, Point, Size, Transform};
use smithay::wayland::compositor::{CompositorClientState, CompositorState};
use smithay::wayland::output::OutputManagerState;
use smithay::wayland::presentation::PresentationState;
use smithay::wayland::shell::xdg::decoration::XdgDecorationState;
use smithay::wayland::shell::xdg::XdgShellState;
use smithay::wayland::shm::ShmState;
use smithay::wayland::viewporter::ViewporterState;

use crate::backend::Backend;
use crate::shell::{Shell, ShellMode};
use crate::State;

/// One virtual or physical output as the user configured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputConfig {
    /// Mode size in physical pixels.
    pub size: (i32, i32),
    /// Refresh rate in millihertz (60 Hz = 60_000).
    pub refresh_mhz: u32,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self { size: (1280, 720), refresh_mhz: 60_000 }
    }
}

impl OutputConfig {
    /// Duration of one refresh cycle. A zero refresh is clamped to 1 mHz so the division is defined;
    /// the CLI rejects zero before it gets here.
    pub fn refresh_interval(&self) -> Duration {
        Duration::from_nanos(1_000_000_000_000u64 / u64::from(self.refresh_mhz.max(1)))
    }
}

/// Counters that tests and `inspect` read. They only ever grow.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Frames completed on any output (one per refresh tick).
    pub frames: u64,
    /// Frames in which the renderer drew any damage.
    pub frames_rendered: u64,
}

/// Counters per output, for "why isn't my video zero-copy?" and for tests that wait on frames.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputCounters {
    /// Refresh cycles completed: a page flip, an idle refresh (KMS) or a timer tick
    /// (headless). Frame callbacks and presentation feedback go out once per frame.
    pub frames: u64,
    /// Frames with new content queued to the display (KMS); frames that drew damage headless.
    pub queued: u64,
    /// Frames with new content that reached the screen: completed page flips on KMS, frames
    /// that drew damage headless. Equal to `queued` when no flip is pending.
    pub flips: u64,
    /// Client buffers scanned out directly on a plane, summed over frames.
    pub zero_copy_elements: u64,
    /// Surfaces drawn by the renderer (composited), summed over frames.
    pub composited_elements: u64,
    /// Bytes the CpuCopy executor copied out of client buffers shown here.
    pub bytes_copied: u64,
    /// Frames whose cursor was on the cursor plane rather than composited.
    pub cursor_plane_frames: u64,
}

/// How many frames a surface has been part of; kept in the surface's data.
#[derive(Debug, Default)]
pub(crate) struct FramesShown(pub(crate) std::sync::atomic::AtomicU64);

/// Per-client data smithay needs for every connection.
#[derive(Default)]
pub struct ClientState {
    /// smithay's per-client compositor state.
    pub compositor_state: CompositorClientState,
    /// The compositor's count of connected clients, shared by every client's data.
    connected: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl ClientState {
    /// Data for a client that counts itself in `connected` while it is connected.
    pub fn counted(connected: &std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        Self { compositor_state: CompositorClientState::default(), connected: connected.clone() }
    }
}

impl ClientData for ClientState {
    fn initialized(&self, _client_id: ClientId) {
        self.connected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn disconnected(&self, client_id: ClientId, reason: DisconnectReason) {
        self.connected.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(?client_id, ?reason, "client disconnected");
    }
}

/// The protocol globals cohere ships. Tests use exactly these, never a reduced set.
pub struct Globals<B: Backend> {
    /// wl_compositor, wl_subcompositor.
    pub compositor: CompositorState,
    /// xdg-shell.
    pub xdg_shell: XdgShellState,
    /// xdg-decoration (server-side title bars).
    pub xdg_decoration: XdgDecorationState,
    /// wl_shm.
    pub shm: ShmState,
    /// wl_output and xdg-output.
    pub output_manager: OutputManagerState,
    /// wl_seat.
    pub seat_state: SeatState<State<B>>,
    /// wp_presentation.
    pub presentation: PresentationState,
    /// wp_viewporter.
    pub viewporter: ViewporterState,
}

/// The pointer cursor as the seat last set it.
#[derive(Debug)]
pub struct Cursor {
    /// What the seat's client set.
    pub status: smithay::input::pointer::CursorImageStatus,
    /// A pointer device has moved the pointer: only then is a cursor drawn.
    pub seen: bool,
    /// cohere's arrow.
    pub arrow: smithay::backend::renderer::element::memory::MemoryRenderBuffer,
}

impl Default for Cursor {
    fn default() -> Self {
        Self { status: smithay::input::pointer::CursorImageStatus::default_named(), seen: false, arrow: crate::cursor::arrow() }
    }
}

/// Backend-independent half of [`State`].
pub struct Core<B: Backend> {
    /// The Wayland display.
    pub display_handle: DisplayHandle,
    /// The protocol globals.
    pub globals: Globals<B>,
    /// Windows and outputs.
    pub space: Space<Window>,
    /// Popups.
    pub popups: PopupManager,
    /// The seat.
    pub seat: Seat<State<B>>,
    /// Window policy (kiosk or desktop).
    pub shell: Shell,
    /// CLOCK_MONOTONIC, for presentation times.
    pub clock: Clock<Monotonic>,
    /// Global counters.
    pub counters: Counters,
    /// Screenshots and exit conditions.
    pub control: crate::compositor::Control,
    /// The event loop.
    pub loop_handle: LoopHandle<'static, State<B>>,
    /// The pointer cursor.
    pub cursor: Cursor,
    /// The commit pipeline: fence waits, CPU copies, maintenance, releases (see
    /// [`crate::commit`]).
    pub commits: crate::commit::CommitState,
    outputs: Vec<(Output, OutputConfig, smithay::reexports::wayland_server::backend::GlobalId)>,
    /// Per-output counters, by output (not by name: a name can come back after a hotplug).
    pub output_counters: std::collections::HashMap<Output, OutputCounters>,
    /// Input devices the input backend announced, by name, in arrival order.
    pub input_devices: Vec<String>,
    /// Connected clients (each client's [`ClientState`] counts itself).
    pub(crate) connected_clients: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Live statistics, when they are written somewhere (see [`crate::stats`]).
    pub(crate) stats: Option<crate::stats::StatsWriter>,
    /// linux-drm-syncobj-v1, where a device supports it.
    pub syncobj: Option<crate::sync::explicit::SyncobjState>,
    /// Where the quirk database and overrides come from, to read them again (SIGHUP).
    pub(crate) coherency_options: crate::coherency::CoherencyOptions,
    /// Reloads refused because a file was broken (the running configuration stayed).
    pub config_reload_failures: u64,
    /// cohere-buffer-path-v1, unless turned off.
    pub buffer_path: Option<crate::buffer_path::BufferPathState>,
}

impl<B: Backend> Core<B> {
    /// Creates every global cohere advertises except the backend-specific ones (linux-dmabuf).
    pub fn new(display_handle: DisplayHandle, shell: ShellMode, loop_handle: LoopHandle<'static, State<B>>) -> Self {
        let dh = &display_handle;
        let clock = Clock::<Monotonic>::new();
        let commits = crate::commit::CommitState::new::<State<B>>(&loop_handle);
        let mut seat_state = SeatState::new();
        let mut seat = seat_state.new_wl_seat(dh, "seat0");
        // Both capabilities are present even headless so clients that require them still start.
        if let Err(err) = seat.add_keyboard(Default::default(), 200, 25) {
            tracing::warn!(%err, "no keyboard: xkb keymap could not be compiled");
        }
        seat.add_pointer();
        let globals = Globals {
            compositor: CompositorState::new_v6::<State<B>>(dh),
            xdg_shell: XdgShellState::new::<State<B>>(dh),
            xdg_decoration: XdgDecorationState::new::<State<B>>(dh),
            shm: ShmState::new::<State<B>>(dh, Vec::<wl_shm::Format>::new()),
            output_manager: OutputManagerState::new_with_xdg_output::<State<B>>(dh),
            seat_state,
            presentation: PresentationState::new::<State<B>>(dh, clock.id() as u32),
            viewporter: ViewporterState::new::<State<B>>(dh),
        };
        Self {
            display_handle,
            globals,
            space: Space::default(),
            popups: PopupManager::default(),
            seat,
            shell: Shell::new(shell),
            clock,
            counters: Counters::default(),
            loop_handle,
            cursor: Cursor::default(),
            commits,
            control: Default::default(),
            outputs: Vec::new(),
            output_counters: Default::default(),
            input_devices: Vec::new(),
            connected_clients: Default::default(),
            stats: None,
            syncobj: None,
            buffer_path: None,
            coherency_options: Default::default(),
            config_reload_failures: 0,
        }
    }

    /// Adds an output to the right of the existing ones and advertises it as wl_output + xdg-output.
    pub fn add_output(&mut self, name: &str, config: OutputConfig, model: &str) -> Output {
        let output = Output::new(
            name.to_owned(),
            PhysicalProperties { size: (0, 0).into(), subpixel: Subpixel::Unknown, make: "cohere".into(), model: model.into() },
        );
        let x: i32 = self.outputs.iter().map(|(_, c, _)| c.size.0).sum();
        let mode = Mode { size: config.size.into(), refresh: config.refresh_mhz as i32 };
        output.change_current_state(Some(mode), Some(Transform::Normal), Some(Scale::Integer(1)), Some((x, 0).into()));
        output.set_preferred(mode);
        let global = output.create_global::<State<B>>(&self.display_handle);
        self.space.map_output(&output, (x, 0));
        self.outputs.push((output.clone(), config, global));
        tracing::info!(output = name, w = config.size.0, h = config.size.1, mhz = config.refresh_mhz, "output added");
        output
    }

    /// Removes an output (unplugged): its global goes, windows stay in the space.
    pub fn remove_output(&mut self, output: &Output) {
        self.space.unmap_output(output);
        if let Some(i) = self.outputs.iter().position(|(o, _, _)| o == output) {
            let (_, _, global) = self.outputs.remove(i);
            self.display_handle.remove_global::<State<B>>(global);
            self.output_counters.remove(output);
            self.commits.releases.output_gone(output);
            tracing::info!(output = output.name(), "output removed");
        }
    }

    /// Offers cohere-buffer-path-v1, which tells clients which path their buffers take.
    pub fn offer_buffer_path(&mut self) {
        self.buffer_path = Some(crate::buffer_path::BufferPathState::new::<State<B>>(&self.display_handle));
    }

    /// Offers linux-drm-syncobj-v1 on the device the machine facts found for it (timeline
    /// syncobjs and syncobj eventfd on its render node), and logs why it is or isn't offered.
    pub(crate) fn offer_explicit_sync(&mut self, machine: &crate::coherency::MachineFacts) {
        tracing::info!(verdict = %machine.explicit_sync_verdict(), "explicit sync (linux-drm-syncobj-v1)");
        let Some(node) = machine.explicit_sync_device().and_then(|d| d.render_node.clone()) else { return };
        let path = std::path::Path::new("/dev/dri").join(node);
        let device = match crate::sync::syncobj::SyncobjDevice::open(&path) {
            Ok(device) => device,
            Err(err) => {
                tracing::warn!(%err, path = %path.display(), "explicit sync not offered: can't open the device");
                return;
            }
        };
        match crate::sync::explicit::SyncobjState::new::<State<B>>(&self.display_handle, device) {
            Ok(state) => self.syncobj = Some(state),
            Err(err) => tracing::warn!(%err, "explicit sync not offered"),
        }
    }

    /// Connected clients.
    pub fn clients(&self) -> u64 {
        self.connected_clients.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Data for a new client connection, counted in [`Core::clients`].
    pub fn client_data(&self) -> std::sync::Arc<ClientState> {
        std::sync::Arc::new(ClientState::counted(&self.connected_clients))
    }

    /// The counters of `output` (created on first use).
    pub fn counters_of(&mut self, output: &Output) -> &mut OutputCounters {
        self.output_counters.entry(output.clone()).or_default()
    }

    /// The CpuCopy executor copied `bytes` of `surface`: booked on the first output showing it.
    pub(crate) fn surface_copied(&mut self, surface: &smithay::reexports::wayland_server::protocol::wl_surface::WlSurface, bytes: u64) {
        crate::paths::record_copy(surface, bytes);
        if let Some(output) = self.outputs_showing(surface).into_iter().next() {
            self.counters_of(&output).bytes_copied += bytes;
        }
    }

    /// Every output, in the order they were added.
    pub fn outputs(&self) -> impl Iterator<Item = &Output> {
        self.outputs.iter().map(|(o, _, _)| o)
    }

    /// How `output` was configured.
    pub fn output_config(&self, output: &Output) -> Option<OutputConfig> {
        self.outputs.iter().find(|(o, _, _)| o == output).map(|(_, c, _)| *c)
    }

    /// The output new kiosk windows go to and the one screenshots default to.
    pub fn primary_output(&self) -> Option<&Output> {
        self.outputs.first().map(|(o, _, _)| o)
    }

    /// Logical size of an output, for fullscreen configures.
    pub fn output_size(&self, output: &Output) -> Size<i32, smithay::utils::Logical> {
        self.space.output_geometry(output).map(|g| g.size).unwrap_or_default()
    }

    /// Where `output` is in the global space.
    pub fn output_origin(&self, output: &Output) -> Point<i32, smithay::utils::Logical> {
        self.space.output_geometry(output).map(|g| g.loc).unwrap_or_default()
    }
}
