//! The framebuffer exporter of cohere's displays: its own swapchain buffers (dumb, LINEAR,
//! which every KMS device scans out and Pixman can draw into) and client dma-bufs imported
//! through GBM. Which client buffers may be used is not decided here: it is wrapped in
//! [`crate::path::direct::ScanoutFilter`], which asks the plans.

use smithay::backend::allocator::dumb::DumbBuffer;
use smithay::backend::allocator::gbm::GbmDevice;
use smithay::backend::drm::dumb::{framebuffer_from_dumb_buffer, DumbFramebuffer};
use smithay::backend::drm::exporter::{ExportBuffer, ExportFramebuffer};
use smithay::backend::drm::gbm::{framebuffer_from_wayland_buffer, GbmFramebuffer};
use smithay::backend::drm::{DrmDeviceFd, Framebuffer};
use smithay::reexports::drm::control::framebuffer;

/// Dumb swapchain buffers, and client dma-bufs through GBM.
#[derive(Debug)]
pub struct SwapchainExporter {
    gbm: GbmDevice<DrmDeviceFd>,
}

impl SwapchainExporter {
    pub fn new(gbm: GbmDevice<DrmDeviceFd>) -> Self {
        Self { gbm }
    }
}

/// A swapchain framebuffer or a client buffer's.
#[derive(Debug)]
pub enum SwapchainFramebuffer {
    Swapchain(DumbFramebuffer),
    Client(GbmFramebuffer),
}

impl AsRef<framebuffer::Handle> for SwapchainFramebuffer {
    fn as_ref(&self) -> &framebuffer::Handle {
        match self {
            SwapchainFramebuffer::Swapchain(f) => f.as_ref(),
            SwapchainFramebuffer::Client(f) => f.as_ref(),
        }
    }
}

impl Framebuffer for SwapchainFramebuffer {
    fn format(&self) -> smithay::backend::allocator::Format {
        match self {
            SwapchainFramebuffer::Swapchain(f) => f.format(),
            SwapchainFramebuffer::Client(f) => f.format(),
        }
    }
}

/// Why a framebuffer couldn't be made.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("swapchain framebuffer")]
    Swapchain(#[source] smithay::backend::drm::DrmError),
    #[error("client framebuffer")]
    Client(#[source] smithay::backend::drm::gbm::Error),
}

impl ExportFramebuffer<DumbBuffer> for SwapchainExporter {
    type Framebuffer = SwapchainFramebuffer;
    type Error = ExportError;

    fn add_framebuffer(
        &self,
        drm: &DrmDeviceFd,
        buffer: ExportBuffer<'_, DumbBuffer>,
        use_opaque: bool,
    ) -> Result<Option<SwapchainFramebuffer>, ExportError> {
        match buffer {
            ExportBuffer::Wayland(wl) => framebuffer_from_wayland_buffer(drm, &self.gbm, wl, use_opaque)
                .map(|fb| fb.map(SwapchainFramebuffer::Client))
                .map_err(ExportError::Client),
            ExportBuffer::Allocator(dumb) => framebuffer_from_dumb_buffer(drm, dumb, use_opaque)
                .map(|fb| Some(SwapchainFramebuffer::Swapchain(fb)))
                .map_err(|e| ExportError::Swapchain(e.into())),
        }
    }

    fn can_add_framebuffer(&self, buffer: &ExportBuffer<'_, DumbBuffer>) -> bool {
        // Client buffers: the ScanoutFilter around this exporter decides.
        matches!(buffer, ExportBuffer::Allocator(_))
    }
}
