//! A minimal compositor with its own state that embeds cohere: linux-dmabuf import, the
//! coherency plan, the commit pipeline (fences, CPU copies, releases), the plan-following
//! elements and the renderer guard. It shows every toplevel full-output on one virtual output,
//! drawn with Pixman, and writes a screenshot once the client's buffer is on screen.
//!
//! ```text
//! cargo run --example embed --features pixman -- --screenshot shot.png -- weston-simple-shm
//! ```

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use cohere::coherency::{CoherencyOptions, CoherencyState, ProbeOptions, RendererChoice};
use cohere::commit::{CommitHandler, CommitState};
use cohere::import::{ImplicitModifier, ImportConfig, ImportHandler, ImportRejected, ImportState};
use cohere::path::elements::{surface_tree_elements, SurfaceElement};
use cohere::path::guard::Guarded;
use smithay::backend::allocator::{dmabuf::Dmabuf, Fourcc};
use smithay::backend::renderer::damage::OutputDamageTracker;
use smithay::backend::renderer::element::Kind;
use smithay::backend::renderer::pixman::PixmanRenderer;
use smithay::backend::renderer::utils::{on_commit_buffer_handler, with_renderer_surface_state};
use smithay::backend::renderer::{Bind, ExportMem, ImportDma, Offscreen};
use smithay::desktop::utils::{send_frames_surface_tree, take_presentation_feedback_surface_tree, OutputPresentationFeedback};
use smithay::input::{SeatHandler, SeatState};
use smithay::output::{Mode as OutputMode, Output, PhysicalProperties, Subpixel};
use smithay::reexports::calloop::generic::Generic;
use smithay::reexports::calloop::timer::{TimeoutAction, Timer};
use smithay::reexports::calloop::{EventLoop, Interest, LoopHandle, Mode, PostAction};
use smithay::reexports::pixman::Image;
use smithay::reexports::wayland_protocols::wp::presentation_time::server::wp_presentation_feedback::Kind as FeedbackKind;
use smithay::reexports::wayland_server::protocol::{wl_buffer::WlBuffer, wl_seat::WlSeat, wl_surface::WlSurface};
use smithay::reexports::wayland_server::{backend::ClientData, Client, Display, DisplayHandle};
use smithay::utils::{Clock, Monotonic, Rectangle, Scale, Serial, Transform};
use smithay::wayland::buffer::BufferHandler;
use smithay::wayland::compositor::{add_pre_commit_hook, CompositorClientState, CompositorHandler, CompositorState};
use smithay::wayland::output::OutputHandler;
use smithay::wayland::presentation::{PresentationState, Refresh};
use smithay::wayland::shell::xdg::{PopupSurface, PositionerState, ToplevelSurface, XdgShellHandler, XdgShellState};
use smithay::wayland::shm::{ShmHandler, ShmState};
use smithay::wayland::socket::ListeningSocketSource;

/// The one output's size.
const SIZE: (i32, i32) = (320, 240);

#[derive(Parser)]
struct Args {
    /// Write the output here once the client's buffer is on screen, then exit.
    #[arg(long)]
    screenshot: std::path::PathBuf,
    /// The client to run.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// The compositor's own state: smithay's protocol states, and cohere's parts.
struct App {
    display: DisplayHandle,
    handle: LoopHandle<'static, App>,
    compositor: CompositorState,
    shm: ShmState,
    xdg: XdgShellState,
    seat: SeatState<App>,
    output: Output,
    clock: Clock<Monotonic>,
    // cohere's parts: linux-dmabuf, plans, the commit pipeline, a guarded renderer.
    import: ImportState,
    coherency: CoherencyState,
    commits: CommitState,
    renderer: Guarded<PixmanRenderer>,
    target: Image<'static, 'static>,
    damage: OutputDamageTracker,
    frames: u64,
    /// Frames drawn since the client's buffer arrived and its commit went through.
    settled: u64,
    screenshot: std::path::PathBuf,
    done: bool,
}

struct ClientState(CompositorClientState);
impl ClientData for ClientState {}

impl CompositorHandler for App {
    fn compositor_state(&mut self) -> &mut CompositorState {
        &mut self.compositor
    }
    fn client_compositor_state<'a>(&self, client: &'a Client) -> &'a CompositorClientState {
        &client.get_data::<ClientState>().expect("every client is inserted with ClientState").0
    }
    fn new_surface(&mut self, surface: &WlSurface) {
        // Before a commit applies, cohere decides what it waits for: fences, a CPU copy.
        add_pre_commit_hook::<Self, _>(surface, |app, _, surface| cohere::commit::pre_commit(app, surface));
    }
    fn commit(&mut self, surface: &WlSurface) {
        let attached = cohere::commit::attached(surface);
        // A y_invert buffer's flip becomes part of its buffer transform.
        self.import.orient(surface);
        on_commit_buffer_handler::<Self>(surface);
        cohere::commit::committed(self, surface, attached);
        // Full-output toplevels: configure once, at the initial commit.
        if let Some(toplevel) = self.xdg.toplevel_surfaces().iter().find(|t| t.wl_surface() == surface) {
            if !toplevel.is_initial_configure_sent() {
                toplevel.send_configure();
            }
        }
    }
}

impl CommitHandler for App {
    fn commit_state(&mut self) -> &mut CommitState {
        &mut self.commits
    }
    fn coherency(&self) -> &CoherencyState {
        &self.coherency
    }
    fn loop_handle(&self) -> LoopHandle<'static, Self> {
        self.handle.clone()
    }
    fn display_handle(&self) -> DisplayHandle {
        self.display.clone()
    }
    fn y_inverted(&self, dmabuf: &Dmabuf) -> bool {
        self.import.is_y_inverted(dmabuf)
    }
}

impl ImportHandler for App {
    fn import_state(&mut self) -> &mut ImportState {
        &mut self.import
    }
    fn import_buffer(&mut self, dmabuf: &Dmabuf) -> Result<(), ImportRejected> {
        // Plan the buffer, and let the renderer try it where the plan has it read the buffer.
        let renderer = &mut self.renderer;
        cohere::import::plan_and_test_import(&mut self.coherency, dmabuf, |d| {
            renderer.import_dmabuf(d, None).map(|_| ()).map_err(|e| e.to_string())
        })
        .map(|_| ())
    }
}

impl XdgShellHandler for App {
    fn xdg_shell_state(&mut self) -> &mut XdgShellState {
        &mut self.xdg
    }
    fn new_toplevel(&mut self, toplevel: ToplevelSurface) {
        toplevel.with_pending_state(|state| state.size = Some(SIZE.into()));
    }
    fn new_popup(&mut self, _: PopupSurface, _: PositionerState) {}
    fn grab(&mut self, _: PopupSurface, _: WlSeat, _: Serial) {}
    fn reposition_request(&mut self, _: PopupSurface, _: PositionerState, _: u32) {}
}

impl BufferHandler for App {
    fn buffer_destroyed(&mut self, _: &WlBuffer) {}
}
impl ShmHandler for App {
    fn shm_state(&self) -> &ShmState {
        &self.shm
    }
}
impl SeatHandler for App {
    type KeyboardFocus = WlSurface;
    type PointerFocus = WlSurface;
    type TouchFocus = WlSurface;
    fn seat_state(&mut self) -> &mut SeatState<Self> {
        &mut self.seat
    }
}
impl OutputHandler for App {}

smithay::delegate_compositor!(App);
smithay::delegate_shm!(App);
smithay::delegate_xdg_shell!(App);
smithay::delegate_seat!(App);
smithay::delegate_output!(App);
smithay::delegate_presentation!(App);
cohere::delegate_import!(App);

impl App {
    /// A frame every 16 ms; a failed one stops the compositor.
    fn tick(&mut self) -> TimeoutAction {
        if let Err(err) = self.frame() {
            eprintln!("frame failed: {err}");
            self.done = true;
        }
        TimeoutAction::ToDuration(Duration::from_millis(16))
    }

    /// Draws every toplevel, answers frame callbacks and presentation feedback, and writes the
    /// screenshot once the client's buffer has been on screen for two frames.
    fn frame(&mut self) -> anyhow::Result<()> {
        let surfaces: Vec<WlSurface> = self.xdg.toplevel_surfaces().iter().map(|t| t.wl_surface().clone()).collect();
        let mut elements: Vec<SurfaceElement<Guarded<PixmanRenderer>>> = Vec::new();
        for surface in &surfaces {
            // cohere's builder: a CPU-copied surface is drawn from its copy.
            elements.extend(surface_tree_elements(&mut self.renderer, surface, (0, 0).into(), Scale::from(1.0), 1.0, Kind::Unspecified));
        }
        let mut framebuffer = self.renderer.bind(&mut self.target)?;
        self.damage.render_output(&mut self.renderer, &mut framebuffer, 0, &elements, [0.1, 0.1, 0.1, 1.0])?;
        self.frames += 1;
        let now = self.clock.now();
        let output = self.output.clone();
        for surface in &surfaces {
            send_frames_surface_tree(surface, &output, now, None, |_, _| Some(output.clone()));
            let mut feedback = OutputPresentationFeedback::new(&output);
            take_presentation_feedback_surface_tree(surface, &mut feedback, |_, _| Some(output.clone()), |_, _| FeedbackKind::empty());
            feedback.presented(now, Refresh::fixed(Duration::from_millis(16)), self.frames, FeedbackKind::empty());
        }
        let shown = surfaces.iter().any(|s| with_renderer_surface_state(s, |r| r.buffer().is_some()).unwrap_or(false));
        self.settled = if shown && self.commits.waiting() == 0 { self.settled + 1 } else { 0 };
        if self.settled >= 2 {
            let size = self.output.current_mode().map(|m| m.size).unwrap_or_default();
            let region = Rectangle::from_size((size.w, size.h).into());
            let mapping = self.renderer.copy_framebuffer(&framebuffer, region, Fourcc::Abgr8888)?;
            let rgba = self.renderer.map_texture(&mapping)?.to_vec();
            let mut png = png::Encoder::new(std::fs::File::create(&self.screenshot)?, size.w as u32, size.h as u32);
            png.set_color(png::ColorType::Rgba);
            png.write_header()?.write_image_data(&rgba)?;
            for surface in &surfaces {
                if let Some(plan) = cohere::import::surface_dmabuf(surface).and_then(|d| self.coherency.plans.get(&d).cloned()) {
                    println!("plan: {plan}");
                }
            }
            let (c, refused) = (self.commits.counters, self.renderer.refused());
            println!("frames {} cpu-copies {} bytes-copied {} refused-imports {refused}", self.frames, c.cpu_copies, c.bytes_copied);
            self.done = true;
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    let mut event_loop = EventLoop::<App>::try_new()?;
    let display = Display::<App>::new()?;
    let dh = display.handle();
    let clock = Clock::new();
    // The coherency model: the quirk database and overrides, then the machine's facts.
    let coherency = CoherencyState::new(CoherencyOptions::default().load()?, &ProbeOptions::live(RendererChoice::Cpu("pixman".into())));
    let mut renderer = Guarded::new(PixmanRenderer::new()?, coherency.plans.verdicts());
    let target = renderer.create_buffer(Fourcc::Argb8888, SIZE.into())?;
    let config = ImportConfig {
        formats: renderer.dmabuf_formats().into_iter().collect(),
        main_device: None,
        implicit_modifier: ImplicitModifier::from_facts(coherency.machine()),
    };
    let output = Output::new(
        "embed".into(),
        PhysicalProperties { size: (0, 0).into(), subpixel: Subpixel::Unknown, make: "cohere".into(), model: "embed".into() },
    );
    let mode = OutputMode { size: SIZE.into(), refresh: 60_000 };
    output.change_current_state(Some(mode), Some(Transform::Normal), Some(smithay::output::Scale::Integer(1)), Some((0, 0).into()));
    output.set_preferred(mode);
    output.create_global::<App>(&dh);
    let mut seat_state = SeatState::new();
    let _seat = seat_state.new_wl_seat(&dh, "seat0");
    let mut app = App {
        display: dh.clone(),
        handle: event_loop.handle(),
        compositor: CompositorState::new::<App>(&dh),
        shm: ShmState::new::<App>(&dh, Vec::new()),
        xdg: XdgShellState::new::<App>(&dh),
        seat: seat_state,
        import: ImportState::new::<App>(&dh, config)?,
        commits: CommitState::new::<App>(&event_loop.handle()),
        target,
        damage: OutputDamageTracker::from_output(&output),
        output,
        clock,
        coherency,
        renderer,
        frames: 0,
        settled: 0,
        screenshot: args.screenshot,
        done: false,
    };
    let _presentation = PresentationState::new::<App>(&dh, app.clock.id() as u32);
    let handle = event_loop.handle();
    let socket = ListeningSocketSource::new_auto()?;
    let name = socket.socket_name().to_os_string();
    handle
        .insert_source(socket, |stream, _, app| {
            let _ = app.display.insert_client(stream, Arc::new(ClientState(CompositorClientState::default())));
        })
        .map_err(|e| e.error)?;
    handle
        .insert_source(Generic::new(display, Interest::READ, Mode::Level), |_, display, app| {
            // SAFETY: the display is never dropped while the event loop runs.
            unsafe { display.get_mut().dispatch_clients(app)? };
            Ok(PostAction::Continue)
        })
        .map_err(|e| e.error)?;
    handle.insert_source(Timer::immediate(), |_, _, app| app.tick()).map_err(|e| e.error)?;
    let mut client = std::process::Command::new(&args.command[0]).args(&args.command[1..]).env("WAYLAND_DISPLAY", &name).spawn()?;
    while !app.done {
        event_loop.dispatch(Some(Duration::from_millis(16)), &mut app)?;
        app.display.flush_clients()?;
    }
    let _ = client.kill();
    let _ = client.wait();
    Ok(())
}
