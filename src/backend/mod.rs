//! Backends own the renderer and the outputs' scanout targets. The headless backend renders
//! into offscreen buffers paced by a timer; the KMS backend drives DRM devices.

pub mod drm;
pub mod headless;

/// What the backend-independent handlers may ask of any backend.
pub trait Backend: Sized + 'static {
    /// Something changed that may need drawing on the next frame.
    fn schedule_redraw(&mut self);

    /// The coherency model as this backend holds it (facts, plans, counters).
    fn coherency(&self) -> &crate::coherency::CoherencyState;

    /// A surface committed (maybe a new buffer, so a new plan): backends with displays update
    /// the surface's dma-buf feedback here.
    fn surface_committed(&mut self, _surface: &smithay::reexports::wayland_server::protocol::wl_surface::WlSurface) {}

    /// Per-output counters, by output name (KMS outputs; headless has none to report).
    fn output_counters(&self) -> Vec<(String, OutputCounters)> {
        Vec::new()
    }
}

/// Counters per output, for "why isn't my video zero-copy?".
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OutputCounters {
    /// Frames queued to KMS.
    pub frames: u64,
    /// Client buffers scanned out directly on a plane, summed over frames.
    pub zero_copy_elements: u64,
    /// Surfaces drawn by the renderer (composited), summed over frames.
    pub composited_elements: u64,
}
