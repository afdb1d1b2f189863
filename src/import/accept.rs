//! The import hook's decisions, for any compositor: plan a new buffer, test-import it into the
//! renderer where the renderer will read it itself, plan it again without the renderer when
//! that import fails, and say what the implicit modifier means on this machine.

use smithay::backend::allocator::dmabuf::Dmabuf;

use super::{ImplicitModifier, ImportRejected};
use crate::coherency::{BufferPlan, CoherencyState, MachineFacts, Path};

impl ImplicitModifier {
    /// What the implicit modifier means on `machine`: linear when every DRM device allocates
    /// it so, refused otherwise.
    pub fn from_facts(machine: &MachineFacts) -> Self {
        let fact = machine.implicit_modifier_linear();
        tracing::info!(linear = %fact, "implicit modifier");
        if fact.value {
            ImplicitModifier::AsLinear
        } else {
            ImplicitModifier::Refuse
        }
    }
}

/// Whether the import hook should test-import `dmabuf` into the renderer. Only when the
/// renderer will read the buffer itself (a CpuCopy buffer never reaches it), and only when no
/// device is still writing it: pixman's import brackets a read with DMA_BUF_IOCTL_SYNC, which
/// waits for the write fences and would block the event loop. Such a buffer is imported when
/// first drawn, after its commit waited for the fence (see [`crate::sync::acquire`](mod@crate::sync::acquire)).
pub fn wants_test_import(plan: &BufferPlan, dmabuf: &Dmabuf) -> bool {
    if !plan.render.path().reads_buffer() {
        return false;
    }
    let ready = !crate::sync::is_being_written(dmabuf);
    if !ready {
        tracing::debug!("test import deferred: the buffer's write fence hasn't signalled");
    }
    ready
}

/// The whole import hook in one call: plans `dmabuf`, lets the renderer import it (`test_import`)
/// when the renderer reads it itself, and if the renderer can't, plans it again without the
/// renderer (a CPU copy where the CPU can map it and the copy handles its format). The plan's
/// answers reach the scanout filters and guarded renderers through the plan cache's
/// [`Verdicts`](crate::coherency::Verdicts). An `Err` becomes `failed` for the client.
///
/// ```no_run
/// # use cohere::import::{ImportHandler, ImportRejected, ImportState};
/// # use smithay::backend::allocator::dmabuf::Dmabuf;
/// # use smithay::backend::renderer::ImportDma;
/// # struct MyState<R> { import: ImportState, coherency: cohere::coherency::CoherencyState, renderer: R }
/// # impl<R> smithay::wayland::buffer::BufferHandler for MyState<R> {
/// #     fn buffer_destroyed(&mut self, _: &smithay::reexports::wayland_server::protocol::wl_buffer::WlBuffer) {}
/// # }
/// impl<R: ImportDma> ImportHandler for MyState<R> {
///     fn import_state(&mut self) -> &mut ImportState {
///         &mut self.import
///     }
///     fn import_buffer(&mut self, dmabuf: &Dmabuf) -> Result<(), ImportRejected> {
///         let renderer = &mut self.renderer;
///         cohere::import::plan_and_test_import(&mut self.coherency, dmabuf, |d| {
///             renderer.import_dmabuf(d, None).map(|_| ()).map_err(|e| e.to_string())
///         })
///         .map(|_| ())
///     }
/// }
/// ```
pub fn plan_and_test_import(
    coherency: &mut CoherencyState,
    dmabuf: &Dmabuf,
    test_import: impl FnOnce(&Dmabuf) -> Result<(), String>,
) -> Result<BufferPlan, ImportRejected> {
    let plan = coherency.plan_import(dmabuf).map_err(ImportRejected)?.clone();
    if !wants_test_import(&plan, dmabuf) {
        return Ok(plan);
    }
    let Err(err) = test_import(dmabuf) else { return Ok(plan) };
    tracing::info!(%err, "the renderer can't import this buffer: planned without it");
    let plan = coherency.render_cannot_import(dmabuf, format!("refused: {err}")).map_err(ImportRejected)?.clone();
    if plan.render.path() == Path::CpuCopy && !crate::path::cpu_copy::copyable(dmabuf) {
        return Err(ImportRejected(format!("the renderer can't import it ({err}) and its format can't be copied")));
    }
    Ok(plan)
}
