//! DirectWithMaintenance: a buffer in CPU-cached memory goes on a plane of a display that
//! doesn't snoop the CPU caches, because its exporter's `DMA_BUF_IOCTL_SYNC` does the cache
//! maintenance for every attached device. For each new commit of such a buffer, once its acquire
//! fence has signalled (the client's writes are done), SYNC(START|READ) then SYNC(END|READ) make
//! the exporter write back what the CPU cached, so the display reads what the client wrote; only
//! then does the commit apply and the frame that scans it out get committed. No compositor or
//! kernel path does this for imported buffers (`drm_fb_dma_sync_non_coherent()` flushes a
//! driver's own GEM-DMA objects only).
//!
//! The ioctls run on the copy thread, never on the event loop: SYNC(START) would wait for a
//! fence added after the commit (see [`crate::sync::acquire`](mod@crate::sync::acquire)), and flushing a large buffer
//! takes time.

use smithay::backend::allocator::dmabuf::{Dmabuf, DmabufSyncFlags};

/// One commit's maintenance.
#[derive(Debug)]
pub struct MaintainJob {
    /// The commit wait it belongs to (see `crate::commit`).
    pub id: u64,
    /// The buffer.
    pub dmabuf: Dmabuf,
}

/// What came back.
#[derive(Debug)]
pub struct MaintainDone {
    /// The wait it belongs to.
    pub id: u64,
    /// Done, or why not.
    pub result: Result<(), String>,
}

/// SYNC(START|READ) and SYNC(END|READ) on every plane of the buffer.
pub fn run(job: MaintainJob) -> MaintainDone {
    let result = (|| {
        // A write fence added since the commit waited: SYNC(START) would block on it.
        if crate::sync::is_being_written(&job.dmabuf) {
            return Err("a device is writing the buffer again after its commit".to_owned());
        }
        for plane in 0..job.dmabuf.num_planes() {
            job.dmabuf.sync_plane(plane, DmabufSyncFlags::START | DmabufSyncFlags::READ).map_err(|e| format!("SYNC(START|READ): {e}"))?;
            job.dmabuf.sync_plane(plane, DmabufSyncFlags::END | DmabufSyncFlags::READ).map_err(|e| format!("SYNC(END|READ): {e}"))?;
        }
        Ok(())
    })();
    MaintainDone { id: job.id, result }
}
