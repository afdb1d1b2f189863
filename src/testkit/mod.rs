//! Test support for the real-kernel VM tier (feature `test-support`): make dma-bufs from every
//! source the kernel offers, drive vgem and sw_sync fences, and read back what vkms scanned out.
//!
//! Everything here talks to real kernel interfaces through rustix and the drm crate; nothing is
//! simulated (`uinput` makes a real kernel input device). It only works where the devices exist, which is the VM described in
//! ARCHITECTURE.md ("VM tier").

pub mod alloc;
pub mod drm;
pub mod fence;
pub mod uinput;
pub mod vkms;

pub use alloc::{heap_buffer, udmabuf, vgem_buffer, MappedDmabuf};
pub use drm::Card;

/// Errors from test-support helpers, with what was being attempted.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct KitError {
    /// What was being done.
    pub what: String,
    #[source]
    /// The system's error.
    pub source: std::io::Error,
}

pub(crate) trait Context<T> {
    fn context(self, what: impl Into<String>) -> Result<T, KitError>;
}

impl<T, E: Into<std::io::Error>> Context<T> for Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T, KitError> {
        self.map_err(|e| KitError { what: what.into(), source: e.into() })
    }
}
