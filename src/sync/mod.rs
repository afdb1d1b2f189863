//! Fences: sync_file objects, and the implicit ↔ explicit bridge on dma-bufs.
//!
//! Everything that waits on or produces a fence lives here, so no other module has to know how a
//! fence is represented. [`acquire`] holds commits whose dma-buf is still being written.
//! Explicit sync (linux-drm-syncobj-v1) is still to come.

pub mod acquire;
pub mod dmabuf;
pub mod sync_file;

pub use acquire::{acquire, is_being_written, Acquire, FenceBlocker, FenceFd};
pub use dmabuf::{export_sync_file, import_sync_file, DmabufAccess};
pub use sync_file::SyncFile;
