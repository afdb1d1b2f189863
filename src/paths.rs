//! What cohere tells clients about their buffers' paths (cohere-buffer-path-v1, see
//! [`crate::buffer_path`]): each observed surface's report, from its buffer's plan and hints
//! (the backend's coherency state) and from what its last frame did (recorded by
//! [`crate::render::finish_frame`] through [`record_frame`]). Reports are published after
//! commits, after frames, and after the machine facts or the configuration changed; the
//! protocol module sends a batch only when a report changed.

use std::sync::Mutex;

use smithay::backend::allocator::{Buffer as _, Format};
use smithay::backend::renderer::element::{RenderElementPresentationState, RenderElementStates, RenderingReason};
use smithay::output::Output;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::wayland::compositor::{with_states, SurfaceData};

use crate::backend::Backend;
use crate::buffer_path::report::{self, CurrentBuffer, Observation, PlaneRefusal, RendererAccess, Shown};
use crate::buffer_path::{BufferPathHandler, BufferPathState, PathReport};
use crate::coherency::DeviceId;
use crate::State;

/// The display an output is on, kept in the output's data by the KMS backend: its device and
/// the formats its planes take.
#[derive(Debug, Clone)]
pub struct OutputDisplay {
    pub device: DeviceId,
    pub formats: Vec<Format>,
}

impl OutputDisplay {
    pub fn of(output: &Output) -> Option<&OutputDisplay> {
        output.user_data().get::<OutputDisplay>()
    }
}

/// What frames did with a surface, in its data.
#[derive(Debug, Default)]
struct SurfaceFrames(Mutex<FrameRecord>);

#[derive(Debug, Default)]
struct FrameRecord {
    last: Option<Observation>,
    /// Bytes the surface's newest CPU copy read.
    copy_bytes: u64,
}

fn with_record<T>(states: &SurfaceData, f: impl FnOnce(&mut FrameRecord) -> T) -> T {
    let frames = states.data_map.get_or_insert_threadsafe(SurfaceFrames::default);
    let mut record = frames.0.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut record)
}

/// The surface's CPU copy landed, having read `bytes`.
pub(crate) fn record_copy(surface: &WlSurface, bytes: u64) {
    with_states(surface, |states| with_record(states, |r| r.copy_bytes = bytes));
}

/// Records what a frame on `output` (the surface's main output) did with the surface.
pub(crate) fn record_frame(surface: &WlSurface, states: &SurfaceData, frame: &RenderElementStates, output: &Output) {
    let display = OutputDisplay::of(output);
    let state = frame.element_render_state(surface).map(|s| s.presentation_state);
    let copied = crate::path::cpu_copy::is_active(states);
    let withheld = crate::path::elements::take_withheld(states);
    with_record(states, |record| {
        let shown = match state {
            Some(RenderElementPresentationState::ZeroCopy) => Shown::ZeroCopy,
            Some(RenderElementPresentationState::Rendering { reason }) => {
                let refusal = match reason {
                    Some(RenderingReason::FormatUnsupported) => {
                        Some(PlaneRefusal::Format { fourcc_taken: fourcc_on_planes(states, display) })
                    }
                    Some(RenderingReason::ScanoutFailed) => Some(PlaneRefusal::Other),
                    None => None,
                };
                Shown::Drawn { copied, refusal }
            }
            Some(RenderElementPresentationState::Skipped) | None if withheld => Shown::Withheld,
            Some(RenderElementPresentationState::Skipped) | None => return,
        };
        record.last = Some(Observation { shown, display: display.map(|d| d.device), bytes_copied: record.copy_bytes });
    });
}

/// Whether the display's planes take the surface buffer's format with some modifier. Called
/// with the surface's state held, so it looks the buffer up in `states`.
fn fourcc_on_planes(states: &SurfaceData, display: Option<&OutputDisplay>) -> bool {
    let Some(display) = display else { return false };
    let Some(dmabuf) = crate::import::states_dmabuf(states) else { return false };
    let code = dmabuf.format().code;
    display.formats.iter().any(|f| f.code == code)
}

/// The report for `surface` now.
pub(crate) fn surface_report<B: Backend>(backend: &B, surface: &WlSurface) -> PathReport {
    let coherency = backend.coherency();
    let renderer = if coherency.machine().render_consumer().through_cpu { RendererAccess::ThroughCpu } else { RendererAccess::Gpu };
    let attached = smithay::backend::renderer::utils::with_renderer_surface_state(surface, |s| s.buffer().is_some()).unwrap_or(false);
    let dmabuf = crate::import::surface_dmabuf(surface);
    // Only the displays this compositor drives: headless, none.
    let displays = backend.scanout_devices();
    let planned = dmabuf.as_ref().and_then(|d| coherency.plans.plan_for_displays(d, coherency.machine(), &displays));
    let buffer = match (attached, &dmabuf, &planned) {
        (false, _, _) => CurrentBuffer::None,
        (true, None, _) => CurrentBuffer::Shm,
        (true, Some(_), Some((plan, hints))) => CurrentBuffer::Dmabuf { plan, hints },
        // A dma-buf whose plan is gone can't be described: say nothing rather than guess.
        (true, Some(_), None) => CurrentBuffer::None,
    };
    let seen = with_states(surface, |states| with_record(states, |r| r.last));
    report::report(renderer, buffer, seen.as_ref())
}

impl<B: Backend> BufferPathHandler for State<B> {
    fn buffer_path_state(&mut self) -> Option<&mut BufferPathState> {
        self.core.buffer_path.as_mut()
    }

    fn surface_path(&mut self, surface: &WlSurface) -> PathReport {
        surface_report(&self.backend, surface)
    }
}

crate::delegate_buffer_path!(@<B: Backend + 'static> State<B>);

impl<B: Backend> State<B> {
    /// Publishes the reports of the observed surfaces among `surfaces`.
    pub(crate) fn publish_paths<'a>(&mut self, surfaces: impl IntoIterator<Item = &'a WlSurface>) {
        let Some(state) = self.core.buffer_path.as_mut() else { return };
        for surface in surfaces.into_iter().filter(|s| BufferPathState::observed(s)) {
            let report = surface_report(&self.backend, surface);
            state.publish(surface, &report);
        }
    }

    /// Publishes the reports of every observed surface on screen (after the plans changed).
    pub(crate) fn publish_all_paths(&mut self) {
        self.publish_window_paths(None);
    }

    /// Publishes the reports of the observed surfaces on `output` (after a frame there).
    pub(crate) fn publish_output_paths(&mut self, output: &Output) {
        self.publish_window_paths(Some(output));
    }

    fn publish_window_paths(&mut self, output: Option<&Output>) {
        if self.core.buffer_path.is_none() {
            return;
        }
        let mut surfaces = Vec::new();
        for window in self.core.space.elements() {
            if output.map_or(true, |o| self.core.space.outputs_for_element(window).contains(o)) {
                window.with_surfaces(|surface, _| surfaces.push(surface.clone()));
            }
        }
        self.publish_paths(&surfaces);
    }
}
