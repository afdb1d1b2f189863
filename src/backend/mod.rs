//! Backends own the renderer and the outputs' scanout targets. The headless backend renders
//! into offscreen buffers paced by a timer; the KMS backend drives DRM devices.

#[cfg(feature = "kms")]
pub mod drm;
pub mod headless;
pub mod renderer;

/// What the backend-independent handlers may ask of any backend.
pub trait Backend: Sized + 'static {
    /// Something changed that may need drawing on the next frame.
    fn schedule_redraw(&mut self);

    /// The coherency model as this backend holds it (facts, plans, counters).
    fn coherency(&self) -> &crate::coherency::CoherencyState;
    /// The coherency model, to change it (a configuration reload).
    fn coherency_mut(&mut self) -> &mut crate::coherency::CoherencyState;

    /// The linux-dmabuf global's state (what each buffer was created with).
    fn import(&self) -> &crate::import::ImportState;

    /// Every live buffer's plan changed (hotplug, a configuration reload): backends with
    /// displays let buffers onto their planes anew.
    fn plans_changed(&mut self) {}

    /// A surface committed (maybe a new buffer, so a new plan): backends with displays update
    /// the surface's dma-buf feedback here.
    fn surface_committed(&mut self, _surface: &smithay::reexports::wayland_server::protocol::wl_surface::WlSurface) {}

    /// The display devices this backend drives (none headless): a buffer's plan for them
    /// decides whether it may go on their planes.
    fn scanout_devices(&self) -> Vec<crate::coherency::DeviceId> {
        Vec::new()
    }

    /// The DRM devices this backend drives, for the live statistics (none headless).
    fn device_stats(&self) -> Vec<crate::stats::DeviceStats> {
        Vec::new()
    }
}
