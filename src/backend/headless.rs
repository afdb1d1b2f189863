//! Headless backend: no udev, seat or libinput. Each output renders into an offscreen buffer
//! with damage tracking by buffer age, and frames are paced by a timer at the output's refresh
//! (driven by [`crate::Compositor`]).

use smithay::backend::allocator::dmabuf::Dmabuf;
use smithay::backend::allocator::Fourcc;
use smithay::backend::renderer::damage::OutputDamageTracker;
use smithay::backend::renderer::element::RenderElementStates;
use smithay::backend::renderer::gles::{GlesRenderbuffer, GlesRenderer};
use smithay::backend::renderer::pixman::PixmanRenderer;
use smithay::backend::renderer::{Bind, ExportMem, ImportAll, ImportDma, ImportMem, Offscreen, Renderer, Texture};
use smithay::output::Output;
use smithay::reexports::pixman::Image;

use smithay::reexports::wayland_server::DisplayHandle;

use crate::backend::renderer::{RendererDecision, RendererKind};
use crate::backend::Backend;
use crate::coherency::{CoherencyState, ProbeOptions, Quirks, RendererChoice};
use crate::core::Core;
use crate::import::{ImportConfig, ImportHandler, ImportRejected, ImportState};
use crate::path::guard::Guarded;
use crate::render::{clear_color, output_elements, read_framebuffer, Screenshot, ScreenshotError};
use crate::State;

/// A renderer's own error, boxed: the two renderers have different error types.
pub type RenderError = Box<dyn std::error::Error + Send + Sync>;

/// Why the headless backend could not start or draw.
#[derive(Debug, thiserror::Error)]
pub enum HeadlessError {
    #[error("pixman renderer")]
    /// The Pixman renderer could not be created.
    Pixman(#[source] smithay::backend::renderer::pixman::PixmanError),
    #[error("listing EGL devices")]
    /// The EGL devices could not be listed.
    EglDevices(#[source] smithay::backend::egl::Error),
    #[error("no EGL software device (EGL_MESA_device_software) is available")]
    /// No software EGL device to run GLES on.
    NoSoftwareDevice,
    #[error("GLES on the chosen EGL device: {0}")]
    /// EGL on the chosen device failed.
    Egl(String),
    #[error("GLES renderer")]
    /// The GLES renderer could not be created.
    Gles(#[source] smithay::backend::renderer::gles::GlesError),
    #[error("output {0} is not known to the headless backend")]
    /// The output isn't one of this backend's.
    UnknownOutput(String),
    #[error("rendering failed")]
    /// Drawing a frame failed.
    Render(#[source] RenderError),
    #[error("linux-dmabuf")]
    /// linux-dmabuf could not be offered.
    Import(#[from] crate::import::ImportError),
}

/// Buffers per output. Nothing scans a headless buffer out and every frame is finished before
/// the next one starts (and before a screenshot reads it), so one buffer is enough: each frame
/// then repaints one frame's damage (age 1), where two buffers would repaint two (age 2). With
/// software GL that is most of a frame's cost. Buffer ages above 1 are exercised on KMS.
const SWAPCHAIN_LEN: usize = 1;

struct Slot<T> {
    target: T,
    /// Frame number this slot was last rendered at; `None` means undefined contents (age 0).
    rendered_at: Option<u64>,
}

struct OffscreenOutput<T> {
    output: Output,
    damage: OutputDamageTracker,
    slots: Vec<Slot<T>>,
    frame: u64,
    front: Option<usize>,
}

struct Swapchains<R, T> {
    renderer: R,
    format: Fourcc,
    outputs: Vec<OffscreenOutput<T>>,
}

/// What one headless frame did.
#[derive(Debug)]
pub struct FrameReport {
    /// Whether any pixel changed.
    pub damaged: bool,
    /// Per-element render states, for primary-scanout and presentation bookkeeping.
    pub states: RenderElementStates,
}

impl<R, T> Swapchains<R, T>
where
    R: Renderer + ImportAll + ImportMem + ImportDma + ExportMem + Bind<T> + Offscreen<T>,
    R::TextureId: Clone + Texture + Send + 'static,
    R::Error: std::error::Error + Send + Sync + 'static,
{
    fn add_output(&mut self, output: &Output) -> Result<(), HeadlessError> {
        let size = output.current_mode().map(|m| m.size).unwrap_or_default();
        let buffer_size = (size.w, size.h).into();
        let mut slots = Vec::with_capacity(SWAPCHAIN_LEN);
        for _ in 0..SWAPCHAIN_LEN {
            let target = self.renderer.create_buffer(self.format, buffer_size).map_err(|e| HeadlessError::Render(Box::new(e)))?;
            slots.push(Slot { target, rendered_at: None });
        }
        self.outputs.push(OffscreenOutput {
            output: output.clone(),
            damage: OutputDamageTracker::from_output(output),
            slots,
            frame: 0,
            front: None,
        });
        Ok(())
    }

    fn render<B: Backend>(&mut self, output: &Output, core: &Core<B>) -> Result<FrameReport, HeadlessError> {
        let out = self.outputs.iter_mut().find(|o| &o.output == output).ok_or_else(|| HeadlessError::UnknownOutput(output.name()))?;
        out.frame += 1;
        let index = out.front.map_or(0, |f| (f + 1) % out.slots.len());
        let slot = &mut out.slots[index];
        let age = slot.rendered_at.map_or(0, |at| (out.frame - at) as usize);
        let elements = output_elements(&mut self.renderer, core, output);
        crate::render::choose_filter(&mut self.renderer, &elements, output);
        let mut framebuffer = self.renderer.bind(&mut slot.target).map_err(|e| HeadlessError::Render(Box::new(e)))?;
        let result = out
            .damage
            .render_output(&mut self.renderer, &mut framebuffer, age, &elements, clear_color(core.shell.mode))
            .map_err(|e| HeadlessError::Render(Box::new(e)))?;
        let damaged = result.damage.is_some_and(|d| !d.is_empty());
        if let Err(err) = result.sync.wait() {
            tracing::warn!(?err, "render fence wait failed");
        }
        let states = result.states;
        // Release textures of buffers that are gone (a client that left), so their memory and
        // fds go at the next frame instead of lingering in the renderer's cache.
        if let Err(err) = self.renderer.cleanup_texture_cache() {
            tracing::debug!(%err, "texture cache cleanup");
        }
        slot.rendered_at = Some(out.frame);
        out.front = Some(index);
        Ok(FrameReport { damaged, states })
    }

    fn screenshot(&mut self, output: &Output) -> Result<Screenshot, ScreenshotError> {
        let out = self.outputs.iter_mut().find(|o| &o.output == output).ok_or(ScreenshotError::NoFrame)?;
        let front = out.front.ok_or(ScreenshotError::NoFrame)?;
        let size = output.current_mode().map(|m| m.size).unwrap_or_default();
        let framebuffer = self.renderer.bind(&mut out.slots[front].target).map_err(|e| ScreenshotError::Readback(e.to_string()))?;
        read_framebuffer(&mut self.renderer, &framebuffer, size.w.max(0) as u32, size.h.max(0) as u32)
    }
}

#[allow(clippy::large_enum_variant)] // one per backend, never moved after creation
enum AnyRenderer {
    Pixman(Swapchains<Guarded<PixmanRenderer>, Image<'static, 'static>>),
    Gles(Swapchains<Guarded<GlesRenderer>, GlesRenderbuffer>),
}

/// Runs `$body` with `$r` bound to whichever offscreen renderer is active.
macro_rules! with_renderer {
    ($self:expr, $r:ident => $body:expr) => {
        match $self {
            AnyRenderer::Pixman($r) => $body,
            AnyRenderer::Gles($r) => $body,
        }
    };
}

/// The headless backend.
pub struct Headless {
    renderer: AnyRenderer,
    import: ImportState,
    /// The coherency model: facts, plans, counters.
    pub coherency: CoherencyState,
}

impl Headless {
    /// Creates the renderer the decision names (see [`crate::backend::renderer`]).
    /// `main_device` is the dev_t offered as linux-dmabuf's main device (enables feedback).
    pub fn new(
        decision: &RendererDecision,
        display: &DisplayHandle,
        main_device: Option<u64>,
        quirks: Quirks,
    ) -> Result<Self, HeadlessError> {
        let (renderer, choice) = match (decision.kind, &decision.device) {
            (RendererKind::Gles, Some(device)) => {
                let egl = super::renderer::egl_device(device).ok_or(HeadlessError::NoSoftwareDevice)?;
                let gles = super::renderer::gles_on(&egl).map_err(HeadlessError::Egl)?;
                (super::renderer::Unguarded::Gles(gles), RendererChoice::Gles(super::renderer::gles_facts(device)))
            }
            _ => (
                super::renderer::Unguarded::Pixman(PixmanRenderer::new().map_err(HeadlessError::Pixman)?),
                RendererChoice::Cpu("pixman".into()),
            ),
        };
        let probe = ProbeOptions { renderer_reason: Some(decision.reason.clone()), ..ProbeOptions::live(choice) };
        let coherency = CoherencyState::new(quirks, &probe);
        // The renderer reads no client buffer the plan keeps from it.
        let verdicts = coherency.plans.verdicts();
        let renderer = match renderer {
            super::renderer::Unguarded::Gles(gles) => {
                AnyRenderer::Gles(Swapchains { renderer: Guarded::new(gles, verdicts), format: Fourcc::Abgr8888, outputs: Vec::new() })
            }
            super::renderer::Unguarded::Pixman(pixman) => {
                AnyRenderer::Pixman(Swapchains { renderer: Guarded::new(pixman, verdicts), format: Fourcc::Argb8888, outputs: Vec::new() })
            }
        };
        let formats: Vec<_> = with_renderer!(&renderer, r => r.renderer.dmabuf_formats().into_iter().collect());
        let implicit_modifier = crate::import::ImplicitModifier::from_facts(coherency.machine());
        let import = ImportState::new::<State<Headless>>(display, ImportConfig { formats, main_device, implicit_modifier })?;
        tracing::info!(renderer = ?decision.kind, reason = %decision.reason, "headless backend ready");
        Ok(Self { renderer, import, coherency })
    }

    /// Which renderer draws.
    pub fn renderer_kind(&self) -> RendererKind {
        match self.renderer {
            AnyRenderer::Pixman(_) => RendererKind::Pixman,
            AnyRenderer::Gles(_) => RendererKind::Gles,
        }
    }

    /// Allocates the swapchain for a new output.
    pub fn add_output(&mut self, output: &Output) -> Result<(), HeadlessError> {
        with_renderer!(&mut self.renderer, r => r.add_output(output))
    }

    /// Renders one frame of `output` into its next swapchain slot.
    pub fn render<B: Backend>(&mut self, output: &Output, core: &Core<B>) -> Result<FrameReport, HeadlessError> {
        with_renderer!(&mut self.renderer, r => r.render(output, core))
    }

    /// Reads back the frame `output` currently shows.
    pub fn screenshot(&mut self, output: &Output) -> Result<Screenshot, ScreenshotError> {
        with_renderer!(&mut self.renderer, r => r.screenshot(output))
    }

    /// Every (format, modifier) the renderer says it can import (before linux-dmabuf drops
    /// the formats it has no layout for).
    pub fn renderer_dmabuf_formats(&self) -> Vec<smithay::backend::allocator::Format> {
        with_renderer!(&self.renderer, r => r.renderer.dmabuf_formats().into_iter().collect())
    }

    /// The linux-dmabuf global's state.
    pub fn import_state(&self) -> &ImportState {
        &self.import
    }

    /// Test-imports a client dma-buf into the renderer.
    pub fn import_dmabuf(&mut self, dmabuf: &Dmabuf) -> Result<(), String> {
        with_renderer!(&mut self.renderer, r => r.renderer.import_dmabuf(dmabuf, None).map(|_| ()).map_err(|e| e.to_string()))
    }
}

impl ImportHandler for State<Headless> {
    fn import_state(&mut self) -> &mut ImportState {
        &mut self.backend.import
    }

    fn import_buffer(&mut self, dmabuf: &Dmabuf) -> Result<(), ImportRejected> {
        let Headless { renderer, coherency, .. } = &mut self.backend;
        crate::import::plan_and_test_import(
            coherency,
            dmabuf,
            |d| with_renderer!(renderer, r => r.renderer.import_dmabuf(d, None).map(|_| ()).map_err(|e| e.to_string())),
        )
        .map(|_| ())
    }
}

crate::delegate_import!(State<Headless>);

impl Backend for Headless {
    fn import(&self) -> &ImportState {
        self.import_state()
    }

    fn coherency(&self) -> &CoherencyState {
        &self.coherency
    }

    fn coherency_mut(&mut self) -> &mut CoherencyState {
        &mut self.coherency
    }

    /// Headless outputs render on every refresh tick anyway; damage tracking makes a frame
    /// with nothing new cost nothing, so there is nothing to schedule.
    fn schedule_redraw(&mut self) {}
}
