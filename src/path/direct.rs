//! Direct scanout: smithay's GBM framebuffer exporter accepts a client buffer for a plane only
//! when the buffer's `node()` is the device's node. Setting that node here, and only for
//! buffers whose plan says `Direct` or `DirectWithMaintenance` for that device's scanout, is how
//! the plan keeps every other buffer off the planes (it is then composited).

use smithay::backend::allocator::dmabuf::Dmabuf;
use smithay::backend::drm::DrmNode;

use crate::coherency::{BufferPlan, ConsumerId, DeviceId, Path};

/// The first of `devices`, in the plan's order, whose display engine the plan lets read the
/// buffer directly: as it is, or after cache maintenance (which [`super::maintenance`] does
/// before every new commit of such a buffer).
pub fn scanout_device(plan: &BufferPlan, devices: &[DeviceId]) -> Option<DeviceId> {
    plan.scanout
        .iter()
        .filter(|c| matches!(c.path(), Path::Direct | Path::DirectWithMaintenance))
        .find_map(|c| devices.iter().find(|d| ConsumerId::Scanout(**d) == c.consumer).copied())
}

/// Marks `dmabuf` with the node of [`scanout_device`] among `devices`, or clears the mark.
pub fn mark_for_scanout(dmabuf: &Dmabuf, plan: &BufferPlan, devices: &[DrmNode]) -> Option<DrmNode> {
    let ids: Vec<DeviceId> = devices.iter().map(|n| DeviceId(n.dev_id())).collect();
    let chosen = scanout_device(plan, &ids);
    let node = devices.iter().find(|n| Some(DeviceId(n.dev_id())) == chosen).copied();
    dmabuf.set_node(node);
    tracing::debug!(node = ?node, "direct scanout allowed on");
    node
}

use smithay::backend::allocator::dumb::DumbBuffer;
use smithay::backend::allocator::gbm::GbmDevice;
use smithay::backend::drm::dumb::{framebuffer_from_dumb_buffer, DumbFramebuffer};
use smithay::backend::drm::exporter::{ExportBuffer, ExportFramebuffer};
use smithay::backend::drm::gbm::{framebuffer_from_wayland_buffer, GbmFramebuffer};
use smithay::backend::drm::{DrmDeviceFd, Framebuffer};
use smithay::reexports::drm::control::framebuffer;

/// Framebuffer exporter that applies the plan: the compositor's own swapchain buffers (dumb,
/// LINEAR, which every KMS device scans out and Pixman can draw into) always; a client buffer
/// only when [`mark_for_scanout`] marked it with this device.
#[derive(Debug)]
pub struct PlanExporter {
    gbm: GbmDevice<DrmDeviceFd>,
    node: DrmNode,
}

impl PlanExporter {
    pub fn new(gbm: GbmDevice<DrmDeviceFd>, node: DrmNode) -> Self {
        Self { gbm, node }
    }
}

/// A swapchain framebuffer or a client buffer's.
#[derive(Debug)]
pub enum PlanFramebuffer {
    Swapchain(DumbFramebuffer),
    Client(GbmFramebuffer),
}

impl AsRef<framebuffer::Handle> for PlanFramebuffer {
    fn as_ref(&self) -> &framebuffer::Handle {
        match self {
            PlanFramebuffer::Swapchain(f) => f.as_ref(),
            PlanFramebuffer::Client(f) => f.as_ref(),
        }
    }
}

impl Framebuffer for PlanFramebuffer {
    fn format(&self) -> smithay::backend::allocator::Format {
        match self {
            PlanFramebuffer::Swapchain(f) => f.format(),
            PlanFramebuffer::Client(f) => f.format(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("swapchain framebuffer: {0}")]
    Swapchain(smithay::backend::drm::DrmError),
    #[error("client framebuffer: {0}")]
    Client(smithay::backend::drm::gbm::Error),
}

impl ExportFramebuffer<DumbBuffer> for PlanExporter {
    type Framebuffer = PlanFramebuffer;
    type Error = ExportError;

    fn add_framebuffer(
        &self,
        drm: &DrmDeviceFd,
        buffer: ExportBuffer<'_, DumbBuffer>,
        use_opaque: bool,
    ) -> Result<Option<PlanFramebuffer>, ExportError> {
        match buffer {
            ExportBuffer::Wayland(wl) => framebuffer_from_wayland_buffer(drm, &self.gbm, wl, use_opaque)
                .map(|fb| fb.map(PlanFramebuffer::Client))
                .map_err(ExportError::Client),
            ExportBuffer::Allocator(dumb) => framebuffer_from_dumb_buffer(drm, dumb, use_opaque)
                .map(|fb| Some(PlanFramebuffer::Swapchain(fb)))
                .map_err(|e| ExportError::Swapchain(e.into())),
        }
    }

    fn can_add_framebuffer(&self, buffer: &ExportBuffer<'_, DumbBuffer>) -> bool {
        match buffer {
            ExportBuffer::Wayland(wl) => smithay::wayland::dmabuf::get_dmabuf(wl).is_ok_and(|d| d.node() == Some(self.node)),
            ExportBuffer::Allocator(_) => true,
        }
    }
}
