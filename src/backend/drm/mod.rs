//! KMS backend: a libseat session, udev for devices and hotplug, one `DrmCompositor` per
//! connected connector on every DRM device with displays, and one renderer for all of them:
//! Pixman, or GLES on the EGL device [`crate::backend::renderer`] chose. Either draws into the
//! display device's own scanout buffers (dumb, linear, imported by the renderer), so rendering
//! on one device and scanning out on another needs no copy.
//!
//! Which client buffers may go on a plane is the coherency plan's decision: each display's
//! framebuffer exporter is wrapped in [`crate::path::direct::ScanoutFilter`], which asks the
//! plans by the buffer's identity and the display's device. Everything else is composited.

mod device;
mod exporter;
mod pacing;
mod start;

use std::collections::HashMap;
use std::time::Duration;

use smithay::backend::allocator::dmabuf::Dmabuf;
use smithay::backend::drm::{DrmEventMetadata as EventMetadata, DrmEventTime as DrmTime, DrmNode};
use smithay::backend::renderer::element::RenderElementStates;
use smithay::backend::renderer::gles::GlesRenderer;
use smithay::backend::renderer::pixman::PixmanRenderer;
use smithay::backend::renderer::ImportDma;
use smithay::backend::session::libseat::LibSeatSession;
use smithay::desktop::utils::OutputPresentationFeedback;
use smithay::output::Output;
use smithay::reexports::calloop::LoopHandle;
use smithay::reexports::wayland_protocols::wp::presentation_time::server::wp_presentation_feedback;
use smithay::reexports::wayland_server::DisplayHandle;
use smithay::utils::{Monotonic, Time};

use crate::backend::renderer::Unguarded;
use crate::backend::Backend;
use crate::coherency::{CoherencyState, ProbeOptions, Quirks, RendererChoice};
use crate::import::{ImportConfig, ImportHandler, ImportRejected, ImportState};
use crate::path::guard::Guarded;
use crate::render::Presented;

use crate::State;
use device::PendingFrame;
use pacing::{Pacing, Trigger};

pub use device::{Device, DeviceError};

/// Why the KMS backend can't run here.
#[derive(Debug, thiserror::Error)]
pub enum DrmBackendError {
    #[error("no seat")]
    /// No seat could be taken (libseat).
    Session(#[source] smithay::backend::session::libseat::Error),
    #[error("udev")]
    /// udev could not list or watch the devices.
    Udev(#[source] std::io::Error),
    #[error("no DRM device with a connected display")]
    /// No device has a connected display.
    NoDisplay,
    #[error("pixman renderer")]
    /// The Pixman renderer could not be created.
    Renderer(#[source] smithay::backend::renderer::pixman::PixmanError),
    #[error("GLES renderer: {0}")]
    /// The GLES renderer could not be created.
    Gles(String),
    #[error("linux-dmabuf")]
    /// linux-dmabuf could not be offered.
    Import(#[from] crate::import::ImportError),
}

/// The KMS backend.
pub struct Drm {
    /// The libseat session the devices are opened through.
    pub session: LibSeatSession,
    /// The renderer every display is drawn with.
    pub renderer: KmsRenderer,
    /// The DRM devices driven, by node.
    pub devices: HashMap<DrmNode, Device>,
    import: ImportState,
    /// The coherency model: facts, plans, counters.
    pub coherency: CoherencyState,
    pub(crate) handle: LoopHandle<'static, State<Drm>>,
    /// `--drm-device`: the only device node to drive.
    pub(crate) only_device: Option<std::path::PathBuf>,
    /// What drives each output's next frame: its queued flip or a refresh tick.
    pacing: Pacing,
}

/// The renderer that composites on every display.
#[allow(clippy::large_enum_variant)] // one per backend, never moved after creation
pub enum KmsRenderer {
    /// Pixman, drawing into the displays' dumb buffers.
    Pixman(Guarded<PixmanRenderer>),
    /// GLES on the chosen EGL device.
    Gles(Guarded<GlesRenderer>),
}

/// Runs `$body` with `$r` bound to whichever renderer is active.
macro_rules! with_renderer {
    ($renderer:expr, $r:ident => $body:expr) => {
        match $renderer {
            KmsRenderer::Pixman($r) => $body,
            KmsRenderer::Gles($r) => $body,
        }
    };
}

impl KmsRenderer {
    /// What the renderer can import (and draw into).
    pub fn dmabuf_formats(&self) -> Vec<smithay::backend::allocator::Format> {
        with_renderer!(self, r => r.dmabuf_formats().into_iter().collect())
    }

    fn import(&mut self, dmabuf: &Dmabuf) -> Result<(), String> {
        with_renderer!(self, r => r.import_dmabuf(dmabuf, None).map(|_| ()).map_err(|e| e.to_string()))
    }
}

impl Drm {
    pub(crate) fn new(
        session: LibSeatSession,
        handle: LoopHandle<'static, State<Drm>>,
        display: &DisplayHandle,
        main_device: Option<u64>,
        quirks: Quirks,
        decision: &crate::backend::renderer::RendererDecision,
    ) -> Result<Self, DrmBackendError> {
        let (renderer, choice) = match (decision.kind, &decision.device) {
            (crate::backend::renderer::RendererKind::Gles, Some(device)) => {
                let egl =
                    crate::backend::renderer::egl_device(device).ok_or_else(|| DrmBackendError::Gles("the EGL device is gone".into()))?;
                let gles = crate::backend::renderer::gles_on(&egl).map_err(DrmBackendError::Gles)?;
                (Unguarded::Gles(gles), RendererChoice::Gles(crate::backend::renderer::gles_facts(device)))
            }
            _ => (Unguarded::Pixman(PixmanRenderer::new().map_err(DrmBackendError::Renderer)?), RendererChoice::Cpu("pixman".into())),
        };
        let probe = ProbeOptions { renderer_reason: Some(decision.reason.clone()), ..ProbeOptions::live(choice) };
        let coherency = CoherencyState::new(quirks, &probe);
        // The renderer reads no client buffer the plan keeps from it.
        let verdicts = coherency.plans.verdicts();
        let renderer = match renderer {
            Unguarded::Pixman(pixman) => KmsRenderer::Pixman(Guarded::new(pixman, verdicts)),
            Unguarded::Gles(gles) => KmsRenderer::Gles(Guarded::new(gles, verdicts)),
        };
        let formats = renderer.dmabuf_formats();
        let implicit_modifier = crate::import::ImplicitModifier::from_facts(coherency.machine());
        let import = ImportState::new::<State<Drm>>(display, ImportConfig { formats, main_device, implicit_modifier })?;
        Ok(Self { session, renderer, devices: HashMap::new(), import, coherency, handle, only_device: None, pacing: Pacing::default() })
    }

    /// The linux-dmabuf global's state.
    pub fn import_state(&self) -> &ImportState {
        &self.import
    }

    /// Forgets queued frames and pending ticks (session resumed, device gone): the next
    /// render starts fresh.
    pub(crate) fn reset_pacing(&mut self) {
        self.pacing.reset(&self.handle);
    }

    /// Feedback for a surface: a scanout tranche for the device its buffer's plan allows direct
    /// scanout on, then the render tranche; `None` (the default feedback) otherwise.
    fn feedback_for(
        &self,
        surface: &smithay::reexports::wayland_server::protocol::wl_surface::WlSurface,
    ) -> Option<crate::import::Feedback> {
        let dmabuf = crate::import::surface_dmabuf(surface)?;
        let plan = self.coherency.plans.get(&dmabuf)?;
        let id = crate::path::direct::scanout_device(plan, &self.scanout_devices())?;
        let (node, device) = self.devices.iter().find(|(_, d)| d.id == id)?;
        let render = self.import.formats().to_vec();
        let scanout: Vec<_> = device.scanout_formats().into_iter().filter(|f| render.contains(f)).collect();
        let main = self.import.default_feedback().map_or(node.dev_id(), |f| f.main_device);
        Some(crate::import::Feedback::with_scanout(main, node.dev_id(), &scanout, &render))
    }

    /// The output a surface belongs to, with its device and CRTC.
    fn find_output(&self, output: &Output) -> Option<(DrmNode, smithay::reexports::drm::control::crtc::Handle)> {
        self.devices.iter().find_map(|(node, d)| d.crtc_of(output).map(|crtc| (*node, crtc)))
    }
}

impl Backend for Drm {
    fn import(&self) -> &ImportState {
        self.import_state()
    }

    fn coherency(&self) -> &CoherencyState {
        &self.coherency
    }

    fn coherency_mut(&mut self) -> &mut CoherencyState {
        &mut self.coherency
    }

    fn surface_committed(&mut self, surface: &smithay::reexports::wayland_server::protocol::wl_surface::WlSurface) {
        // Most surfaces never ask for feedback: don't work out a plan-based feedback per commit.
        if !self.import.has_surface_feedback(surface) {
            return;
        }
        let feedback = self.feedback_for(surface);
        self.import.update_surface_feedback(surface, feedback);
    }

    fn scanout_devices(&self) -> Vec<crate::coherency::DeviceId> {
        self.devices.values().map(|d| d.id).collect()
    }

    fn device_stats(&self) -> Vec<crate::stats::DeviceStats> {
        let mut devices: Vec<_> = self
            .devices
            .values()
            .map(|d| crate::stats::DeviceStats {
                card: d.card.clone(),
                driver: d.driver.clone(),
                outputs: d.outputs().map(|o| o.name()).collect(),
            })
            .collect();
        devices.sort_by(|a, b| a.card.cmp(&b.card));
        devices
    }

    fn schedule_redraw(&mut self) {
        // Outputs with a frame queued draw again at its vblank; those waiting on a refresh
        // tick draw now, so the change makes the next vblank.
        self.pacing.redraw_soon(&self.handle);
    }
}

impl ImportHandler for State<Drm> {
    fn import_state(&mut self) -> &mut ImportState {
        &mut self.backend.import
    }

    fn import_buffer(&mut self, dmabuf: &Dmabuf) -> Result<(), ImportRejected> {
        let Drm { renderer, coherency, .. } = &mut self.backend;
        crate::import::plan_and_test_import(coherency, dmabuf, |d| renderer.import(d))?;
        Ok(())
    }

    fn surface_feedback(
        &mut self,
        surface: &smithay::reexports::wayland_server::protocol::wl_surface::WlSurface,
    ) -> Option<crate::import::Feedback> {
        self.backend.feedback_for(surface)
    }
}

crate::delegate_import!(State<Drm>);

/// Renders and queues one frame on `output`, if [`Pacing`] lets `trigger` draw it. When
/// nothing changed, the refresh still counts (frame callbacks, exit condition) unless a flip
/// already did, and the next try is one refresh later (or at a commit before that).
pub(crate) fn render_output(state: &mut State<Drm>, output: &Output, trigger: Trigger) {
    if !state.backend.pacing.may_render(output, trigger) {
        // A queued frame or a pending tick will render this output soon.
        return;
    }
    let Some((node, crtc)) = state.backend.find_output(output) else {
        state.backend.pacing.forget(output, &state.backend.handle);
        return;
    };
    let clear = crate::render::clear_color(state.core.shell.mode);
    let Drm { renderer, devices, .. } = &mut state.backend;
    let Some(device) = devices.get_mut(&node) else {
        state.backend.pacing.forget(output, &state.backend.handle);
        return;
    };
    let outcome = with_renderer!(renderer, r => {
        let elements = crate::render::output_elements(r, &state.core, output);
        crate::render::choose_filter(r, &elements, output);
        device.render(crtc, r, &elements, clear)
    });
    match outcome {
        Ok(device::Rendered::Queued { states, zero_copy, composited, cursor_plane, fence }) => {
            let c = state.core.counters_of(output);
            c.queued += 1;
            c.zero_copy_elements += zero_copy;
            c.composited_elements += composited;
            c.cursor_plane_frames += u64::from(cursor_plane);
            // The client buffers this frame scans out stay in use until a later frame replaced
            // it on screen.
            let on_planes = crate::render::scanned_out(&state.core, &states);
            state.core.commits.releases.frame_queued(output, on_planes);
            state.core.commits.releases.rendered(fence);
            let feedback = crate::render::frame_made(&state.core, output, &states);
            if let Some(dev) = state.backend.devices.get_mut(&node) {
                dev.set_pending(crtc, device::PendingFrame { states, feedback });
            }
            state.backend.pacing.queued(output, &state.backend.handle);
        }
        // A commit found nothing new to show: the pending tick still answers this refresh.
        Ok(device::Rendered::Empty { .. }) if trigger == Trigger::Commit => {}
        Ok(device::Rendered::Empty { states }) => {
            // Nothing to show: answer frame callbacks now and look again in one refresh.
            let refresh = refresh_of(output);
            if trigger == Trigger::Tick {
                // No flip: the refresh tick stands in for the vblank, and says so (no flags).
                let now = state.core.clock.now();
                let seq = state.core.counters.frames + 1;
                let feedback = crate::render::frame_made(&state.core, output, &states);
                finish(state, output, &states, feedback, Presented::timer(now, refresh, seq));
            }
            let tick = output.clone();
            let timer = smithay::reexports::calloop::timer::Timer::from_duration(refresh);
            let inserted = state.backend.handle.insert_source(timer, move |_, _, state| {
                if state.backend.pacing.done(&tick, Trigger::Tick) {
                    render_output(state, &tick, Trigger::Tick);
                }
                smithay::reexports::calloop::timer::TimeoutAction::Drop
            });
            match inserted {
                Ok(token) => state.backend.pacing.ticking(output, token),
                // Without its tick nothing drives this output: it stays free, and the next
                // commit or flip renders it.
                Err(err) => tracing::warn!(%err, output = output.name(), "no refresh timer for an idle output"),
            }
        }
        Err(err) => {
            // A commit's try leaves the output's tick in place; otherwise nothing drives it
            // until the next commit.
            tracing::warn!(err = %crate::ErrorChain(&err), output = output.name(), "frame not rendered");
        }
    }
}

fn refresh_of(output: &Output) -> Duration {
    let mhz = output.current_mode().map(|m| m.refresh).unwrap_or(60_000).max(1) as u64;
    Duration::from_nanos(1_000_000_000_000 / mhz)
}

fn finish(
    state: &mut State<Drm>,
    output: &Output,
    states: &RenderElementStates,
    feedback: OutputPresentationFeedback,
    presented: Presented,
) {
    state.core.counters.frames += 1;
    crate::render::finish_frame(&mut state.core, output, states, feedback, presented);
    state.publish_output_paths(output);
    if state.core.primary_output() == Some(output) {
        // Screenshots are refused at start-up on KMS, so only the exit condition applies.
        let _ = state.core.control.primary_frame();
    }
}

/// A page flip completed on `crtc` of `node`: the frame is on screen.
pub(crate) fn vblank(
    state: &mut State<Drm>,
    node: DrmNode,
    crtc: smithay::reexports::drm::control::crtc::Handle,
    flip: Option<EventMetadata>,
) {
    let Some(device) = state.backend.devices.get_mut(&node) else { return };
    let Some((output, frame)) = device.frame_submitted(crtc) else { return };
    let presented = flip_presented(flip, state.core.clock.now(), refresh_of(&output), state.core.counters.frames + 1);
    let PendingFrame { states, feedback } = frame
        .unwrap_or_else(|| PendingFrame { states: RenderElementStates::default(), feedback: OutputPresentationFeedback::new(&output) });
    state.core.counters_of(&output).flips += 1;
    state.core.commits.releases.frame_shown(&output);
    state.core.commits.releases.poll_deferred();
    finish(state, &output, &states, feedback, presented);
    // The presentation events and frame callbacks go out now, not after the render below: a
    // client paced by them starts its next frame that much earlier, and that frame has one
    // refresh for its draw, commit, copy and render.
    if let Err(err) = state.core.display_handle.flush_clients() {
        tracing::debug!(%err, "flushing clients after a flip");
    }
    if state.backend.pacing.done(&output, Trigger::Vblank) {
        render_output(state, &output, Trigger::Vblank);
    }
}

/// Presentation of a completed flip: the kernel's vblank timestamp and sequence, when the
/// device gives monotonic timestamps, which is what `HW_CLOCK` promises; the flip completing
/// is a hardware event (`HW_COMPLETION`) at a vblank (`VSYNC`) either way. A device with
/// realtime timestamps (or an event without them) gets the time the event was handled and
/// cohere's own frame count, without `HW_CLOCK`.
fn flip_presented(flip: Option<EventMetadata>, now: Time<Monotonic>, refresh: Duration, frame: u64) -> Presented {
    use wp_presentation_feedback::Kind;
    let at_vblank = Kind::Vsync | Kind::HwCompletion;
    match flip {
        Some(EventMetadata { time: DrmTime::Monotonic(at), sequence }) => {
            Presented { at: Time::from(at), refresh, seq: u64::from(sequence), flags: at_vblank | Kind::HwClock }
        }
        _ => Presented { at: now, refresh, seq: frame, flags: at_vblank },
    }
}
