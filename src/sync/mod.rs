//! Fences: sync_file objects, and the implicit ↔ explicit bridge on dma-bufs.
//!
//! Everything that waits on or produces a fence lives here, so no other module has to know how a
//! fence is represented. [`acquire`](mod@acquire) holds commits whose dma-buf is still being written.
//! [`explicit`] is linux-drm-syncobj-v1 over [`syncobj`]'s timelines.

pub mod acquire;
pub mod dmabuf;
pub mod explicit;
pub mod sync_file;
pub mod syncobj;

pub use acquire::{acquire, acquire_point, is_being_written, Acquire, FenceBlocker, FenceFd};
pub use dmabuf::{export_sync_file, import_sync_file, DmabufAccess};
pub use sync_file::SyncFile;
