//! linux-dmabuf: the seam where client dma-bufs enter cohere.
//!
//! This first version advertises smithay's `zwp_linux_dmabuf_v1` global with the formats the
//! renderer can import and test-imports each buffer before answering. Validation of untrusted
//! params (DESIGN.md §1) and the coherency plan will replace the inside of this module; callers
//! only see [`DmabufImport`] and the backend's import hook.

use smithay::backend::allocator::Format;
use smithay::reexports::wayland_server::DisplayHandle;
use smithay::wayland::dmabuf::{DmabufGlobal, DmabufHandler, DmabufState};

/// The linux-dmabuf global and its state.
pub struct DmabufImport {
    pub state: DmabufState,
    pub global: DmabufGlobal,
}

impl DmabufImport {
    /// Advertises linux-dmabuf (v3 format events; v4+ default feedback is not sent yet).
    pub fn new<D>(display: &DisplayHandle, formats: Vec<Format>) -> Self
    where
        D: DmabufHandler + 'static,
        D: smithay::reexports::wayland_server::GlobalDispatch<
            smithay::reexports::wayland_protocols::wp::linux_dmabuf::zv1::server::zwp_linux_dmabuf_v1::ZwpLinuxDmabufV1,
            smithay::wayland::dmabuf::DmabufGlobalData,
        >,
        D: smithay::wayland::buffer::BufferHandler,
    {
        let mut state = DmabufState::new();
        tracing::info!(formats = formats.len(), "linux-dmabuf global");
        let global = state.create_global::<D>(display, formats);
        Self { state, global }
    }
}
