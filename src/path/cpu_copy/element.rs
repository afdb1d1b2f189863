//! The element that draws a CpuCopy surface from its shadow.

use smithay::backend::renderer::element::texture::TextureRenderElement;
use smithay::backend::renderer::element::{Element, Id, Kind, RenderElement, UnderlyingStorage};
use smithay::backend::renderer::utils::{Buffer, CommitCounter, DamageSet, OpaqueRegions, RendererSurfaceStateUserData};
use smithay::backend::renderer::{ImportMem, Renderer, Texture};
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::utils::{Buffer as BufferCoords, Physical, Point, Rectangle, Scale, Transform};
use smithay::wayland::compositor::SurfaceData;

use super::shadow::ReadPin;
use super::CopyData;

/// Draws a CpuCopy surface from its shadow; offers the client's buffer for direct scanout.
#[derive(Debug)]
pub struct CopiedSurfaceElement<R: Renderer> {
    /// Draws the shadow. Its id is the surface's own, so frame callbacks, presentation
    /// feedback and scanout-output tracking (all keyed by the surface) see this element as the
    /// surface.
    copy: TextureRenderElement<R::TextureId>,
    buffer: Option<Buffer>,
    /// Keeps the next copy out of the shadow until this frame is drawn, where the renderer
    /// reads the shadow in place.
    _pin: Option<ReadPin>,
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
    let shadow = shadow.buffer.clone();
    // The texture is taken without the surface's locks: a copy may hold the shadow meanwhile.
    drop((rs, guard));
    let texture = shadow.texture(renderer).map_err(|err| tracing::warn!(%err, "copied surface: texture import failed")).ok()?;
    let (_, scale, transform) = shadow.layout();
    let copy = TextureRenderElement::from_texture_with_damage(
        Id::from_wayland_resource(surface),
        renderer.context_id(),
        location,
        texture.texture,
        scale,
        transform,
        Some(alpha),
        Some(view.src),
        Some(view.dst),
        shadow.opaque_regions(),
        texture.damage,
        kind,
    );
    Some(CopiedSurfaceElement { copy, buffer, _pin: texture.pin })
}

impl<R: Renderer> Element for CopiedSurfaceElement<R>
where
    R::TextureId: Texture,
{
    fn id(&self) -> &Id {
        self.copy.id()
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
    R::TextureId: Texture,
    TextureRenderElement<R::TextureId>: RenderElement<R>,
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
