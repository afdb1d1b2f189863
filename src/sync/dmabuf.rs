//! Implicit fences on dma-bufs, as sync_files (kernel ≥ 6.0). smithay 0.7 has no helpers for
//! these two ioctls.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use rustix::ioctl::{ioctl, opcode, Setter, Updater};

use super::SyncFile;

/// Which implicit fences a sync_file export waits for or an import adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmabufAccess {
    /// Readers wait for writers: export gives the write fences; import adds a read fence.
    Read,
    /// Writers wait for everyone: export gives all fences; import adds a write fence.
    Write,
}

impl DmabufAccess {
    fn flags(self) -> u32 {
        // DMA_BUF_SYNC_READ = 1 << 0, DMA_BUF_SYNC_WRITE = 2 << 0
        match self {
            DmabufAccess::Read => 1,
            DmabufAccess::Write => 2,
        }
    }
}

/// struct dma_buf_export_sync_file / dma_buf_import_sync_file
#[repr(C)]
#[derive(Debug, Default)]
struct DmaBufSyncFile {
    flags: u32,
    fd: i32,
}

const EXPORT_SYNC_FILE: rustix::ioctl::Opcode = opcode::read_write::<DmaBufSyncFile>(b'b', 2);
const IMPORT_SYNC_FILE: rustix::ioctl::Opcode = opcode::write::<DmaBufSyncFile>(b'b', 3);

/// DMA_BUF_IOCTL_EXPORT_SYNC_FILE: the buffer's current implicit fences, as one sync_file.
pub fn export_sync_file(dmabuf: impl AsFd, access: DmabufAccess) -> std::io::Result<SyncFile> {
    let mut arg = DmaBufSyncFile { flags: access.flags(), fd: -1 };
    // SAFETY: the opcode matches the kernel's definition and `arg` is its exact layout.
    unsafe { ioctl(dmabuf, Updater::<EXPORT_SYNC_FILE, DmaBufSyncFile>::new(&mut arg)) }?;
    if arg.fd < 0 {
        return Err(std::io::Error::other("kernel returned no sync_file"));
    }
    // SAFETY: on success the kernel installed a new descriptor we now own.
    Ok(SyncFile::from_fd(unsafe { OwnedFd::from_raw_fd(arg.fd) }))
}

/// DMA_BUF_IOCTL_IMPORT_SYNC_FILE: adds `fence` to the buffer's implicit fences.
pub fn import_sync_file(dmabuf: impl AsFd, fence: &SyncFile, access: DmabufAccess) -> std::io::Result<()> {
    let arg = DmaBufSyncFile { flags: access.flags(), fd: fence.as_fd().as_raw_fd() };
    // SAFETY: as above; the kernel only reads `arg`.
    unsafe { ioctl(dmabuf, Setter::<IMPORT_SYNC_FILE, DmaBufSyncFile>::new(arg)) }?;
    Ok(())
}
