//! Direct scanout: a client buffer goes on a display's planes only where its plan says Direct
//! or DirectWithMaintenance for that display. [`ScanoutFilter`] wraps any smithay framebuffer
//! exporter and asks the plans ([`Verdicts`]) by the buffer's identity and the display's
//! device: it doesn't look at `Dmabuf::node()` (smithay's MultiRenderer rewrites it when it
//! imports on the render GPU) or at any name. Every other client buffer is composited.
//!
//! # How to use
//!
//! Give each display's `DrmCompositor` its exporter wrapped in a filter for that display:
//!
//! ```no_run
//! use cohere::coherency::{DeviceId, Verdicts};
//! use cohere::path::direct::ScanoutFilter;
//! use smithay::backend::drm::DrmNode;
//! # fn f(verdicts: Verdicts, node: DrmNode, exporter: smithay::backend::drm::DrmDeviceFd) {
//! // `verdicts` is `coherency.plans.verdicts()`; `exporter` any ExportFramebuffer (GBM, dumb).
//! let filtered = ScanoutFilter::new(exporter, DeviceId::from(node), verdicts);
//! # }
//! ```

use smithay::backend::allocator::Buffer;
use smithay::backend::drm::exporter::{ExportBuffer, ExportFramebuffer};
use smithay::backend::drm::{DrmDeviceFd, DrmNode};

use crate::coherency::{BufferPlan, ConsumerId, DeviceId, Path, Verdicts};

impl From<DrmNode> for DeviceId {
    /// The display device of a DRM node: the dev_t of its primary node.
    fn from(node: DrmNode) -> Self {
        let primary = node.node_with_type(smithay::backend::drm::NodeType::Primary).and_then(Result::ok).unwrap_or(node);
        DeviceId(primary.dev_id())
    }
}

/// The first of `devices`, in the plan's order, whose display engine the plan lets read the
/// buffer directly: as it is, or after cache maintenance (which [`super::maintenance`] does
/// before every new commit of such a buffer). The surface's dma-buf feedback offers that
/// device's scanout tranche.
pub fn scanout_device(plan: &BufferPlan, devices: &[DeviceId]) -> Option<DeviceId> {
    plan.scanout
        .iter()
        .filter(|c| matches!(c.path(), Path::Direct | Path::DirectWithMaintenance))
        .find_map(|c| devices.iter().find(|d| ConsumerId::Scanout(**d) == c.consumer).copied())
}

/// A framebuffer exporter that lets a client buffer onto the planes of `device` only where the
/// plan allows it, and leaves everything else (the compositor's own swapchain buffers) to the
/// exporter it wraps.
///
/// For client buffers the plan replaces the wrapped exporter's own eligibility check (smithay's
/// GBM exporter compares `Dmabuf::node()` with its import node); the wrapped exporter still
/// makes the framebuffer, so it must be able to import client dma-bufs (smithay's
/// `GbmFramebufferExporter` can; the plain dumb exporter can't, and such buffers are then
/// composited).
#[derive(Debug)]
pub struct ScanoutFilter<E> {
    inner: E,
    device: DeviceId,
    verdicts: Verdicts,
    y_inverted: Option<crate::import::YInverted>,
}

impl<E> ScanoutFilter<E> {
    /// Wraps `inner`, the exporter of display `device`; `verdicts` are the plans' answers
    /// (`PlanCache::verdicts`).
    pub fn new(inner: E, device: DeviceId, verdicts: Verdicts) -> Self {
        Self { inner, device, verdicts, y_inverted: None }
    }

    /// Keeps y_invert buffers off the planes. cohere draws them through a row-flipping buffer
    /// transform, which smithay 0.7 turns into DRM's `REFLECT_Y | ROTATE_180`: vkms shows
    /// that column-mirrored (its `REFLECT_Y` mirrors rows). Composited, they show upright.
    pub fn keeping_off(mut self, y_inverted: crate::import::YInverted) -> Self {
        self.y_inverted = Some(y_inverted);
        self
    }

    /// The wrapped exporter.
    pub fn inner(&self) -> &E {
        &self.inner
    }

    /// Whether the plan lets `buffer` (a client's) onto this display's planes.
    fn admits(&self, buffer: &smithay::reexports::wayland_server::protocol::wl_buffer::WlBuffer) -> bool {
        smithay::wayland::dmabuf::get_dmabuf(buffer).is_ok_and(|d| {
            self.verdicts.scanout_allowed(d, self.device) && !self.y_inverted.as_ref().is_some_and(|inverted| inverted.contains(d))
        })
    }
}

impl<B: Buffer, E: ExportFramebuffer<B>> ExportFramebuffer<B> for ScanoutFilter<E> {
    type Framebuffer = E::Framebuffer;
    type Error = E::Error;

    fn add_framebuffer(
        &self,
        drm: &DrmDeviceFd,
        buffer: ExportBuffer<'_, B>,
        use_opaque: bool,
    ) -> Result<Option<E::Framebuffer>, E::Error> {
        match buffer {
            ExportBuffer::Wayland(wl) if !self.admits(wl) => Ok(None),
            buffer => self.inner.add_framebuffer(drm, buffer, use_opaque),
        }
    }

    fn can_add_framebuffer(&self, buffer: &ExportBuffer<'_, B>) -> bool {
        match buffer {
            ExportBuffer::Wayland(wl) => self.admits(wl),
            ExportBuffer::Allocator(_) => self.inner.can_add_framebuffer(buffer),
        }
    }
}
