//! Real fences: vgem's implicit fences on a buffer, and sw_sync timelines.

use std::fs::File;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use rustix::ioctl::{ioctl, opcode, Setter, Updater};

use super::drm::Card;
use super::{Context, KitError};
use crate::sync::SyncFile;

#[repr(C)]
#[derive(Default)]
struct VgemFenceAttach {
    handle: u32,
    flags: u32,
    out_fence: u32,
    pad: u32,
}

#[repr(C)]
struct VgemFenceSignal {
    fence: u32,
    flags: u32,
}

// DRM_COMMAND_BASE (0x40) + DRM_VGEM_FENCE_ATTACH (1) / DRM_VGEM_FENCE_SIGNAL (2)
const VGEM_FENCE_ATTACH: rustix::ioctl::Opcode = opcode::read_write::<VgemFenceAttach>(b'd', 0x41);
const VGEM_FENCE_SIGNAL: rustix::ioctl::Opcode = opcode::write::<VgemFenceSignal>(b'd', 0x42);
const VGEM_FENCE_WRITE: u32 = 1;

/// A fence vgem attached to one of its buffers; it signals when [`VgemFence::signal`] is called
/// (or after vgem's 10 s timeout).
#[derive(Debug)]
pub struct VgemFence {
    id: u32,
}

/// Attaches an unsignalled exclusive (write) fence to the vgem buffer `handle`.
pub fn vgem_attach_write_fence(vgem: &Card, handle: u32) -> Result<VgemFence, KitError> {
    let mut arg = VgemFenceAttach { handle, flags: VGEM_FENCE_WRITE, ..Default::default() };
    // SAFETY: DRM_IOCTL_VGEM_FENCE_ATTACH with its exact struct layout.
    unsafe { ioctl(vgem, Updater::<VGEM_FENCE_ATTACH, VgemFenceAttach>::new(&mut arg)) }.context("VGEM_FENCE_ATTACH")?;
    Ok(VgemFence { id: arg.out_fence })
}

impl VgemFence {
    /// Signals the fence.
    pub fn signal(self, vgem: &Card) -> Result<(), KitError> {
        // SAFETY: DRM_IOCTL_VGEM_FENCE_SIGNAL with its exact struct layout.
        unsafe { ioctl(vgem, Setter::<VGEM_FENCE_SIGNAL, VgemFenceSignal>::new(VgemFenceSignal { fence: self.id, flags: 0 })) }
            .context("VGEM_FENCE_SIGNAL")
    }
}

#[repr(C)]
struct SwSyncCreateFence {
    value: u32,
    name: [u8; 32],
    fence: i32,
}

const SW_SYNC_CREATE_FENCE: rustix::ioctl::Opcode = opcode::read_write::<SwSyncCreateFence>(b'W', 0);
const SW_SYNC_INC: rustix::ioctl::Opcode = opcode::write::<u32>(b'W', 1);

/// A sw_sync timeline: fences at points on it signal when the timeline is advanced past them.
#[derive(Debug)]
pub struct Timeline {
    file: File,
}

impl Timeline {
    /// Opens a new timeline (each open of the debugfs file is one timeline, starting at 0).
    pub fn new() -> Result<Timeline, KitError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/sys/kernel/debug/sync/sw_sync")
            .context("open /sys/kernel/debug/sync/sw_sync (is sw_sync.ko loaded?)")?;
        Ok(Timeline { file })
    }

    /// A sync_file that signals when the timeline reaches `point`.
    pub fn fence_at(&self, point: u32) -> Result<SyncFile, KitError> {
        let mut name = [0u8; 32];
        name[..6].copy_from_slice(b"cohere");
        let mut arg = SwSyncCreateFence { value: point, name, fence: -1 };
        // SAFETY: SW_SYNC_IOC_CREATE_FENCE with its exact struct layout.
        unsafe { ioctl(&self.file, Updater::<SW_SYNC_CREATE_FENCE, SwSyncCreateFence>::new(&mut arg)) }
            .context("SW_SYNC_IOC_CREATE_FENCE")?;
        // SAFETY: the kernel installed `arg.fence` for us.
        Ok(SyncFile::from_fd(unsafe { OwnedFd::from_raw_fd(arg.fence) }))
    }

    /// Advances the timeline by `steps`.
    pub fn advance(&self, steps: u32) -> Result<(), KitError> {
        // SAFETY: SW_SYNC_IOC_INC takes a u32.
        unsafe { ioctl(self.file.as_fd(), Setter::<SW_SYNC_INC, u32>::new(steps)) }.context("SW_SYNC_IOC_INC")
    }
}
