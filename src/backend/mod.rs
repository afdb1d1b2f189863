//! Backends own the renderer and the outputs' scanout targets. The headless backend renders
//! into offscreen buffers paced by a timer; the KMS backend drives DRM devices.

pub mod drm;
pub mod headless;
pub mod renderer;

/// What the backend-independent handlers may ask of any backend.
pub trait Backend: Sized + 'static {
    /// Something changed that may need drawing on the next frame.
    fn schedule_redraw(&mut self);

    /// The coherency model as this backend holds it (facts, plans, counters).
    fn coherency(&self) -> &crate::coherency::CoherencyState;
    fn coherency_mut(&mut self) -> &mut crate::coherency::CoherencyState;

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

/// What the implicit modifier means on this machine, from the coherency facts: linear when
/// every device allocates it so, refused otherwise.
pub(crate) fn implicit_modifier(coherency: &crate::coherency::CoherencyState) -> crate::import::ImplicitModifier {
    let fact = coherency.machine.implicit_modifier_linear();
    tracing::info!(linear = %fact, "implicit modifier");
    if fact.value {
        crate::import::ImplicitModifier::AsLinear
    } else {
        crate::import::ImplicitModifier::Refuse
    }
}

/// Whether the import hook should test-import `dmabuf` into the renderer. Only when the
/// renderer will read the buffer itself (a CpuCopy buffer never reaches it), and only when no
/// device is still writing it: pixman's import brackets a read with DMA_BUF_IOCTL_SYNC, which
/// waits for the write fences and would block the event loop. Such a buffer is imported when
/// first drawn, after its commit waited for the fence (see [`crate::sync::acquire`]).
pub(crate) fn wants_test_import(plan: &crate::coherency::BufferPlan, dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf) -> bool {
    if !plan.render.path().reads_buffer() {
        return false;
    }
    let ready = !crate::sync::is_being_written(dmabuf);
    if !ready {
        tracing::debug!("test import deferred: the buffer's write fence hasn't signalled");
    }
    ready
}

/// The import hook both backends share: plans the buffer, lets the renderer import it when the
/// renderer reads it itself, and if the renderer can't, plans it again without the renderer (a
/// CPU copy where the CPU can map it and the copy handles its format). An `Err` becomes `failed`.
pub(crate) fn plan_and_test_import(
    coherency: &mut crate::coherency::CoherencyState,
    dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf,
    import: impl FnOnce(&smithay::backend::allocator::dmabuf::Dmabuf) -> Result<(), String>,
) -> Result<crate::coherency::BufferPlan, crate::import::ImportRejected> {
    use crate::import::ImportRejected;
    let plan = coherency.plan_import(dmabuf).map_err(ImportRejected)?.clone();
    if !wants_test_import(&plan, dmabuf) {
        return Ok(plan);
    }
    let Err(err) = import(dmabuf) else { return Ok(plan) };
    tracing::info!(%err, "the renderer can't import this buffer: planned without it");
    let plan = coherency.render_cannot_import(dmabuf, format!("refused: {err}")).map_err(ImportRejected)?.clone();
    if plan.render.path() == crate::coherency::Path::CpuCopy && !crate::path::cpu_copy::copyable(dmabuf) {
        return Err(ImportRejected(format!("the renderer can't import it ({err}) and its format can't be copied")));
    }
    Ok(plan)
}
