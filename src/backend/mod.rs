//! Backends own the renderer and the outputs' scanout targets. The headless backend renders
//! into offscreen buffers paced by a timer; the KMS backend is still to come.

pub mod headless;

/// What the backend-independent handlers may ask of any backend.
pub trait Backend: Sized + 'static {
    /// Something changed that may need drawing on the next frame.
    fn schedule_redraw(&mut self);
}
