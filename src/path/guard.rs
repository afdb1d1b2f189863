//! The renderer-level safety net of the CPU copy: [`Guarded`] wraps any smithay renderer and
//! refuses to import a client dma-buf whose plan says the renderer must not read it itself
//! (CpuCopy, Reject). cohere's element builder ([`crate::path::elements`]) never asks for
//! such an import: it draws those surfaces from their CPU copy. But an embedder's other render
//! paths (smithay's `space::render_output`, `Window::render_elements`, a screencopy) build
//! their own surface elements, which import the client's buffer. Through a `Guarded` renderer
//! that import fails, so the surface is left out of that frame: never read incoherently (a GPU
//! that doesn't snoop the CPU caches reading cached memory the exporter can't sync) or on every
//! repaint (a CPU renderer reading write-combined memory).
//!
//! Everything else passes through unchanged: the associated types are the wrapped renderer's,
//! so elements, frames and damage tracking work as before.
//!
//! ```no_run
//! use cohere::coherency::CoherencyState;
//! use cohere::path::guard::Guarded;
//!
//! // Wrap the renderer once the plans exist; draw with the wrapper from then on.
//! fn guard<R>(renderer: R, coherency: &CoherencyState) -> Guarded<R> {
//!     Guarded::new(renderer, coherency.plans.verdicts())
//! }
//! ```
//!
//! The wrapped renderer's error type must implement [`RefusedImport`]: cohere implements it
//! for smithay's Pixman and GLES renderers (features `pixman` and `gles`).

use smithay::backend::allocator::dmabuf::Dmabuf;
use smithay::backend::allocator::format::FormatSet;
use smithay::backend::allocator::{Format, Fourcc};
use smithay::backend::renderer::sync::SyncPoint;
use smithay::backend::renderer::{
    Bind, ContextId, DebugFlags, ExportMem, ImportDma, ImportDmaWl, ImportMem, ImportMemWl, Offscreen, Renderer, RendererSuper,
    TextureFilter,
};
use smithay::reexports::wayland_server::protocol::{wl_buffer, wl_shm};
use smithay::utils::{Buffer as BufferCoords, Physical, Rectangle, Size, Transform};
use smithay::wayland::compositor::SurfaceData;

use crate::coherency::Verdicts;

/// Renderer errors that can say "this buffer may not be imported here", so [`Guarded`] can
/// refuse an import in the wrapped renderer's own error type.
pub trait RefusedImport {
    /// The error a refused import returns.
    fn refused_import() -> Self;
}

#[cfg(feature = "pixman")]
impl RefusedImport for smithay::backend::renderer::pixman::PixmanError {
    fn refused_import() -> Self {
        smithay::backend::renderer::pixman::PixmanError::ImportFailed
    }
}

#[cfg(feature = "gles")]
impl RefusedImport for smithay::backend::renderer::gles::GlesError {
    fn refused_import() -> Self {
        // The closest variant smithay has: the buffer's layout is not one this renderer reads.
        smithay::backend::renderer::gles::GlesError::UnsupportedPixelLayout
    }
}

/// A renderer that won't read a client buffer itself where the plan says it mustn't.
#[derive(Debug)]
pub struct Guarded<R> {
    inner: R,
    verdicts: Verdicts,
    /// Imports refused so far, for statistics.
    refused: u64,
}

impl<R> Guarded<R> {
    /// Wraps `renderer`; `verdicts` are the plans' answers (`PlanCache::verdicts`).
    pub fn new(renderer: R, verdicts: Verdicts) -> Self {
        Self { inner: renderer, verdicts, refused: 0 }
    }

    /// The wrapped renderer.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// The wrapped renderer, mutably (for renderer-specific calls).
    pub fn inner_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Imports refused because the plan forbids the renderer to read the buffer.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

impl<R: RendererSuper> RendererSuper for Guarded<R> {
    type Error = R::Error;
    type TextureId = R::TextureId;
    type Framebuffer<'buffer> = R::Framebuffer<'buffer>;
    type Frame<'frame, 'buffer>
        = R::Frame<'frame, 'buffer>
    where
        'buffer: 'frame,
        Self: 'frame;
}

impl<R: Renderer> Renderer for Guarded<R> {
    fn context_id(&self) -> ContextId<R::TextureId> {
        self.inner.context_id()
    }
    fn downscale_filter(&mut self, filter: TextureFilter) -> Result<(), R::Error> {
        self.inner.downscale_filter(filter)
    }
    fn upscale_filter(&mut self, filter: TextureFilter) -> Result<(), R::Error> {
        self.inner.upscale_filter(filter)
    }
    fn set_debug_flags(&mut self, flags: DebugFlags) {
        self.inner.set_debug_flags(flags)
    }
    fn debug_flags(&self) -> DebugFlags {
        self.inner.debug_flags()
    }
    fn render<'frame, 'buffer>(
        &'frame mut self,
        framebuffer: &'frame mut R::Framebuffer<'buffer>,
        output_size: Size<i32, Physical>,
        dst_transform: Transform,
    ) -> Result<R::Frame<'frame, 'buffer>, R::Error>
    where
        'buffer: 'frame,
    {
        self.inner.render(framebuffer, output_size, dst_transform)
    }
    fn wait(&mut self, sync: &SyncPoint) -> Result<(), R::Error> {
        self.inner.wait(sync)
    }
    fn cleanup_texture_cache(&mut self) -> Result<(), R::Error> {
        self.inner.cleanup_texture_cache()
    }
}

impl<R: ImportDma> ImportDma for Guarded<R>
where
    R::Error: RefusedImport,
{
    fn dmabuf_formats(&self) -> FormatSet {
        self.inner.dmabuf_formats()
    }
    fn has_dmabuf_format(&self, format: Format) -> bool {
        self.inner.has_dmabuf_format(format)
    }
    fn import_dmabuf(&mut self, dmabuf: &Dmabuf, damage: Option<&[Rectangle<i32, BufferCoords>]>) -> Result<R::TextureId, R::Error> {
        if !self.verdicts.render_may_read(dmabuf) {
            self.refused += 1;
            tracing::debug!("import refused: the plan has the renderer read this buffer through its CPU copy");
            return Err(R::Error::refused_import());
        }
        self.inner.import_dmabuf(dmabuf, damage)
    }
}

// The default import_dma_buffer goes through import_dmabuf above, so the veto holds there too.
impl<R: ImportDma> ImportDmaWl for Guarded<R> where R::Error: RefusedImport {}

impl<R: ImportMem> ImportMem for Guarded<R> {
    fn import_memory(
        &mut self,
        data: &[u8],
        format: Fourcc,
        size: Size<i32, BufferCoords>,
        flipped: bool,
    ) -> Result<R::TextureId, R::Error> {
        self.inner.import_memory(data, format, size, flipped)
    }
    fn update_memory(&mut self, texture: &R::TextureId, data: &[u8], region: Rectangle<i32, BufferCoords>) -> Result<(), R::Error> {
        self.inner.update_memory(texture, data, region)
    }
    fn mem_formats(&self) -> Box<dyn Iterator<Item = Fourcc>> {
        self.inner.mem_formats()
    }
}

impl<R: ImportMemWl> ImportMemWl for Guarded<R> {
    fn import_shm_buffer(
        &mut self,
        buffer: &wl_buffer::WlBuffer,
        surface: Option<&SurfaceData>,
        damage: &[Rectangle<i32, BufferCoords>],
    ) -> Result<R::TextureId, R::Error> {
        self.inner.import_shm_buffer(buffer, surface, damage)
    }
    fn shm_formats(&self) -> Box<dyn Iterator<Item = wl_shm::Format>> {
        self.inner.shm_formats()
    }
}

impl<R: Bind<T>, T> Bind<T> for Guarded<R> {
    fn bind<'a>(&mut self, target: &'a mut T) -> Result<R::Framebuffer<'a>, R::Error> {
        self.inner.bind(target)
    }
    fn supported_formats(&self) -> Option<FormatSet> {
        self.inner.supported_formats()
    }
}

impl<R: Offscreen<T>, T> Offscreen<T> for Guarded<R> {
    fn create_buffer(&mut self, format: Fourcc, size: Size<i32, BufferCoords>) -> Result<T, R::Error> {
        self.inner.create_buffer(format, size)
    }
}

impl<R: ExportMem> ExportMem for Guarded<R> {
    type TextureMapping = R::TextureMapping;

    fn copy_framebuffer(
        &mut self,
        target: &R::Framebuffer<'_>,
        region: Rectangle<i32, BufferCoords>,
        format: Fourcc,
    ) -> Result<R::TextureMapping, R::Error> {
        self.inner.copy_framebuffer(target, region, format)
    }
    fn copy_texture(
        &mut self,
        texture: &R::TextureId,
        region: Rectangle<i32, BufferCoords>,
        format: Fourcc,
    ) -> Result<R::TextureMapping, R::Error> {
        self.inner.copy_texture(texture, region, format)
    }
    fn can_read_texture(&mut self, texture: &R::TextureId) -> Result<bool, R::Error> {
        self.inner.can_read_texture(texture)
    }
    fn map_texture<'a>(&mut self, texture_mapping: &'a R::TextureMapping) -> Result<&'a [u8], R::Error> {
        self.inner.map_texture(texture_mapping)
    }
}
