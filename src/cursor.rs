//! The pointer cursor: the surface a client set with `wl_pointer.set_cursor`, or cohere's own
//! arrow when the cursor is a named one (the default, and what clients ask for with
//! cursor-shape). Its elements are `Kind::Cursor`, so `DrmCompositor` puts them on the device's
//! cursor plane when it has one, and composites them otherwise.
//!
//! Nothing is drawn until a real pointer device has moved the pointer: a headless compositor
//! (tests, CI screenshots) has no pointer to show.

use smithay::backend::allocator::Fourcc;
use smithay::backend::renderer::element::memory::{MemoryRenderBuffer, MemoryRenderBufferRenderElement};
use smithay::backend::renderer::element::surface::{render_elements_from_surface_tree, WaylandSurfaceRenderElement};
use smithay::backend::renderer::element::Kind;
use smithay::backend::renderer::{ImportAll, ImportMem, Renderer};
use smithay::input::pointer::{CursorImageStatus, CursorImageSurfaceData};
use smithay::reexports::wayland_server::Resource;
use smithay::utils::{Logical, Physical, Point, Scale, Transform};
use smithay::wayland::compositor::with_states;

/// cohere's arrow: `X` black outline, `.` white fill, space transparent; hotspot at the tip.
const ARROW: [&str; 19] = [
    "X           ",
    "XX          ",
    "X.X         ",
    "X..X        ",
    "X...X       ",
    "X....X      ",
    "X.....X     ",
    "X......X    ",
    "X.......X   ",
    "X........X  ",
    "X.........X ",
    "X......XXXXX",
    "X...X..X    ",
    "X..XX..X    ",
    "X.X  X..X   ",
    "XX   X..X   ",
    "X     X..X  ",
    "      X..X  ",
    "       XX   ",
];

/// The arrow's pixels, rows top-down: `Some(rgb)` where it is opaque.
pub fn arrow_pixels() -> Vec<Vec<Option<u32>>> {
    ARROW
        .iter()
        .map(|row| {
            row.bytes()
                .map(|c| match c {
                    b'X' => Some(0x00_0000),
                    b'.' => Some(0xff_ffff),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

/// The arrow as an ARGB8888 buffer (opaque or fully transparent pixels only).
pub fn arrow() -> MemoryRenderBuffer {
    let pixels = arrow_pixels();
    let (w, h) = (ARROW[0].len(), ARROW.len());
    let bytes: Vec<u8> = pixels.iter().flatten().flat_map(|p| p.map_or(0u32, |rgb| 0xff00_0000 | rgb).to_le_bytes()).collect();
    MemoryRenderBuffer::from_slice(&bytes, Fourcc::Argb8888, (w as i32, h as i32), 1, Transform::Normal, None)
}

/// What the cursor shows, for [`crate::render::output_elements`].
pub enum CursorElements<R: Renderer> {
    /// cohere's arrow.
    Arrow(Box<MemoryRenderBufferRenderElement<R>>),
    /// The client's cursor surface tree.
    Surface(Vec<WaylandSurfaceRenderElement<R>>),
}

/// The cursor's elements at `location` (output-local, logical), or `None` when it is hidden.
pub fn elements<R>(
    renderer: &mut R,
    status: &CursorImageStatus,
    arrow: &MemoryRenderBuffer,
    location: Point<f64, Logical>,
    scale: Scale<f64>,
) -> Option<CursorElements<R>>
where
    R: Renderer + ImportAll + ImportMem,
    R::TextureId: Send + Clone + 'static,
{
    match status {
        CursorImageStatus::Hidden => None,
        CursorImageStatus::Surface(surface) if surface.is_alive() => {
            let hotspot = with_states(surface, |states| {
                states
                    .data_map
                    .get::<CursorImageSurfaceData>()
                    .map(|d| d.lock().unwrap_or_else(|e| e.into_inner()).hotspot)
                    .unwrap_or_default()
            });
            let at: Point<i32, Physical> = (location - hotspot.to_f64()).to_physical(scale).to_i32_round();
            Some(CursorElements::Surface(render_elements_from_surface_tree(renderer, surface, at, scale, 1.0, Kind::Cursor)))
        }
        // Named cursors, and a cursor surface that is gone: the arrow.
        _ => {
            let at = location.to_physical(scale);
            MemoryRenderBufferRenderElement::from_buffer(renderer, at, arrow, None, None, None, Kind::Cursor)
                .map_err(|err| tracing::warn!(%err, "cursor: texture import failed"))
                .ok()
                .map(|e| CursorElements::Arrow(Box::new(e)))
        }
    }
}
