//! The element that draws a CpuCopy surface from its shadow.

use smithay::backend::renderer::element::memory::MemoryRenderBufferRenderElement;
use smithay::backend::renderer::element::{Element, Id, Kind, RenderElement, UnderlyingStorage};
use smithay::backend::renderer::utils::{Buffer, CommitCounter, DamageSet, OpaqueRegions, RendererSurfaceStateUserData};
use smithay::backend::renderer::{ImportMem, Renderer};
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::utils::{Buffer as BufferCoords, Physical, Point, Rectangle, Scale, Transform};
use smithay::wayland::compositor::SurfaceData;

use super::CopyData;

/// Draws a CpuCopy surface from its shadow; offers the client's buffer for direct scanout.
#[derive(Debug)]
pub struct CopiedSurfaceElement<R: Renderer> {
    /// The surface's own id, so frame callbacks, presentation feedback and scanout-output
    /// tracking (all keyed by the surface) see this element as the surface.
    id: Id,
    copy: MemoryRenderBufferRenderElement<R>,
    buffer: Option<Buffer>,
}

/// The element for a surface whose current buffer is copied, or `None` to draw it the usual way.
pub fn element<R>(
    renderer: &mut R,
    surface: &WlSurface,
    states: &SurfaceData,
    location: Point<f64, Physical>,
    alpha: f32,
    kind: Kind,
) -> Option<CopiedSurfaceElement<R>>
where
    R: Renderer + ImportMem,
    R::TextureId: Send + Clone + 'static,
{
    let data = states.data_map.get::<CopyData>()?;
    let guard = data.lock().unwrap_or_else(|e| e.into_inner());
    let shadow = guard.shadow.as_ref().filter(|_| guard.active)?;
    let rs = states.data_map.get::<RendererSurfaceStateUserData>()?;
    let rs = rs.lock().unwrap_or_else(|e| e.into_inner());
    let view = rs.view()?;
    let buffer = rs.buffer().cloned();
    let copy =
        MemoryRenderBufferRenderElement::from_buffer(renderer, location, &shadow.buffer, Some(alpha), Some(view.src), Some(view.dst), kind)
            .map_err(|err| tracing::warn!(%err, "copied surface: texture import failed"))
            .ok()?;
    Some(CopiedSurfaceElement { id: Id::from_wayland_resource(surface), copy, buffer })
}

impl<R: Renderer> Element for CopiedSurfaceElement<R> {
    fn id(&self) -> &Id {
        &self.id
    }
    fn current_commit(&self) -> CommitCounter {
        self.copy.current_commit()
    }
    fn src(&self) -> Rectangle<f64, BufferCoords> {
        self.copy.src()
    }
    fn transform(&self) -> Transform {
        self.copy.transform()
    }
    fn geometry(&self, scale: Scale<f64>) -> Rectangle<i32, Physical> {
        self.copy.geometry(scale)
    }
    fn damage_since(&self, scale: Scale<f64>, commit: Option<CommitCounter>) -> DamageSet<i32, Physical> {
        self.copy.damage_since(scale, commit)
    }
    fn opaque_regions(&self, scale: Scale<f64>) -> OpaqueRegions<i32, Physical> {
        self.copy.opaque_regions(scale)
    }
    fn alpha(&self) -> f32 {
        self.copy.alpha()
    }
    fn kind(&self) -> Kind {
        self.copy.kind()
    }
}

impl<R> RenderElement<R> for CopiedSurfaceElement<R>
where
    R: Renderer,
    MemoryRenderBufferRenderElement<R>: RenderElement<R>,
{
    fn draw(
        &self,
        frame: &mut R::Frame<'_, '_>,
        src: Rectangle<f64, BufferCoords>,
        dst: Rectangle<i32, Physical>,
        damage: &[Rectangle<i32, Physical>],
        opaque_regions: &[Rectangle<i32, Physical>],
    ) -> Result<(), R::Error> {
        self.copy.draw(frame, src, dst, damage, opaque_regions)
    }

    fn underlying_storage(&self, _renderer: &mut R) -> Option<UnderlyingStorage<'_>> {
        // Only the plane exporter looks at this, and it takes the buffer only where the plan
        // allows direct scanout; everywhere else the element is drawn from the copy.
        self.buffer.as_ref().map(UnderlyingStorage::Wayland)
    }
}
