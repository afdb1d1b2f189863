//! Render elements for a surface tree that follow the plan: a surface whose buffer is copied
//! (CpuCopy) is drawn from its shadow, never from the client's buffer, and a buffer that a
//! device started writing again after its commit is left out until it is done. Any other
//! surface is smithay's own `WaylandSurfaceRenderElement`.
//!
//! # How to use
//!
//! Put both element types in the compositor's element enum (or use [`SurfaceElement`]) and
//! build each window's elements with [`surface_tree_elements`]:
//!
//! ```no_run
//! use cohere::path::elements::{surface_tree_elements, SurfaceElement};
//! use smithay::backend::renderer::element::Kind;
//! use smithay::backend::renderer::{ImportAll, ImportMem, Renderer, Texture};
//! use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
//! use smithay::utils::Scale;
//!
//! fn window_elements<R>(renderer: &mut R, surface: &WlSurface) -> Vec<SurfaceElement<R>>
//! where
//!     R: Renderer + ImportAll + ImportMem,
//!     R::TextureId: Clone + Texture + Send + 'static,
//! {
//!     surface_tree_elements(renderer, surface, (0, 0).into(), Scale::from(1.0), 1.0, Kind::Unspecified)
//! }
//! ```

use smithay::backend::renderer::element::surface::WaylandSurfaceRenderElement;
use smithay::backend::renderer::element::{render_elements, Kind};
use smithay::backend::renderer::utils::RendererSurfaceStateUserData;
use smithay::backend::renderer::{ImportAll, ImportMem, Renderer, Texture};
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::utils::{Physical, Point, Scale};
use smithay::wayland::compositor::{with_surface_tree_downward, SurfaceData, TraversalAction};

use super::cpu_copy::CopiedSurfaceElement;

/// The element enum, in a module of its own: smithay's `render_elements!` makes items without
/// docs of their own.
#[allow(missing_docs)]
mod element {
    use super::*;
    render_elements! {
        /// A surface's element: from its buffer, or from its CPU copy.
        pub SurfaceElement<R> where R: ImportAll + ImportMem;
        Surface = WaylandSurfaceRenderElement<R>,
        Copied = CopiedSurfaceElement<R>,
    }
}
pub use element::SurfaceElement;

/// Elements for the surface tree of `root` at `location`, topmost first, as smithay's
/// `render_elements_from_surface_tree` builds them, except that CpuCopy surfaces are drawn from
/// their shadow and surfaces whose buffer is being written again are left out. `E` is any
/// element type both kinds convert into (a `render_elements!` enum with both, or
/// [`SurfaceElement`]).
pub fn surface_tree_elements<R, E>(
    renderer: &mut R,
    root: &WlSurface,
    location: Point<i32, Physical>,
    scale: Scale<f64>,
    alpha: f32,
    kind: Kind,
) -> Vec<E>
where
    R: Renderer + ImportAll + ImportMem,
    R::TextureId: Clone + Texture + Send + 'static,
    E: From<WaylandSurfaceRenderElement<R>> + From<CopiedSurfaceElement<R>>,
{
    let mut out = Vec::new();
    let offset = |states: &SurfaceData, location: Point<f64, Physical>| -> Option<Point<f64, Physical>> {
        let data = states.data_map.get::<RendererSurfaceStateUserData>()?;
        let view = data.lock().unwrap_or_else(|e| e.into_inner()).view()?;
        Some(location + view.offset.to_f64().to_physical(scale))
    };
    with_surface_tree_downward(
        root,
        location.to_f64(),
        |_, states, location| match offset(states, *location) {
            Some(location) => TraversalAction::DoChildren(location),
            None => TraversalAction::SkipChildren,
        },
        |surface, states, location| {
            let Some(location) = offset(states, *location) else { return };
            if let Some(copied) = super::cpu_copy::element(renderer, surface, states, location, alpha, kind) {
                out.push(E::from(copied));
                return;
            }
            if fenced_since_commit(states) {
                mark_withheld(states);
                return;
            }
            match WaylandSurfaceRenderElement::from_surface(renderer, surface, states, location, alpha, kind) {
                Ok(Some(element)) => out.push(E::from(element)),
                Ok(None) => {}
                Err(err) => tracing::warn!(%err, "surface not imported"),
            }
        },
        |_, _, _| true,
    );
    out
}

/// Commits wait for their dma-buf's acquire fence, so a committed buffer normally has none. One
/// that gained a write fence afterwards (a client writing a buffer it handed over) would make
/// the renderer's SYNC(START) wait on the event loop, or a plane hold back the whole CRTC: its
/// surface is left out of the frame until the fence signals.
fn fenced_since_commit(states: &SurfaceData) -> bool {
    let fenced = crate::import::states_dmabuf(states).is_some_and(|d| crate::sync::is_being_written(&d));
    if fenced {
        tracing::debug!("surface skipped: its buffer gained a write fence after the commit");
    }
    fenced
}

/// Set in a surface's data when [`surface_tree_elements`] left it out.
#[derive(Debug, Default)]
struct Withheld(std::sync::atomic::AtomicBool);

fn mark_withheld(states: &SurfaceData) {
    states.data_map.get_or_insert_threadsafe(Withheld::default).0.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`surface_tree_elements`] left the surface out (a device was writing its buffer
/// again) since the last call; clears the mark.
pub fn take_withheld(states: &SurfaceData) -> bool {
    states.data_map.get::<Withheld>().is_some_and(|w| w.0.swap(false, std::sync::atomic::Ordering::Relaxed))
}
