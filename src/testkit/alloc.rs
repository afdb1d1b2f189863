//! dma-bufs from each exporter the VM has: udmabuf (sealed memfd), the system dma-heap, and vgem
//! (dumb buffer + PRIME). Each can be filled through a CPU mapping bracketed by DMA_BUF_IOCTL_SYNC.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::fs::OFlags;
use rustix::ioctl::{ioctl, opcode, Updater};
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};
use smithay::backend::allocator::dmabuf::DmabufSyncFlags;
use smithay::reexports::drm::buffer::DrmFourcc;
use smithay::reexports::drm::control::Device as _;

use super::drm::Card;
use super::{Context, KitError};

/// A dma-buf and its size.
#[derive(Debug)]
pub struct MappedDmabuf {
    /// The dma-buf.
    pub fd: OwnedFd,
    /// Its size in bytes.
    pub size: usize,
    /// For vgem buffers: the GEM handle on the vgem card (needed to attach fences).
    pub vgem_handle: Option<u32>,
}

impl AsFd for MappedDmabuf {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[repr(C)]
struct DmaHeapAllocationData {
    len: u64,
    fd: u32,
    fd_flags: u32,
    heap_flags: u64,
}
const DMA_HEAP_IOCTL_ALLOC: rustix::ioctl::Opcode = opcode::read_write::<DmaHeapAllocationData>(b'H', 0);

fn page_round(size: usize) -> usize {
    size.div_ceil(4096) * 4096
}

/// A udmabuf over a sealed memfd (see [`crate::coherency::probe::udmabuf`]).
pub fn udmabuf(size: usize) -> Result<MappedDmabuf, KitError> {
    let size = page_round(size);
    let fd = crate::coherency::probe::udmabuf(size).context("udmabuf")?;
    Ok(MappedDmabuf { fd, size, vgem_handle: None })
}

/// A buffer from the system dma-heap.
pub fn heap_buffer(size: usize) -> Result<MappedDmabuf, KitError> {
    let size = page_round(size);
    let heap = rustix::fs::open("/dev/dma_heap/system", OFlags::RDWR | OFlags::CLOEXEC, rustix::fs::Mode::empty())
        .context("open /dev/dma_heap/system")?;
    let mut data = DmaHeapAllocationData { len: size as u64, fd: 0, fd_flags: (OFlags::RDWR | OFlags::CLOEXEC).bits(), heap_flags: 0 };
    // SAFETY: DMA_HEAP_IOCTL_ALLOC with its exact struct layout.
    unsafe { ioctl(&heap, Updater::<DMA_HEAP_IOCTL_ALLOC, DmaHeapAllocationData>::new(&mut data)) }.context("DMA_HEAP_IOCTL_ALLOC")?;
    // SAFETY: the kernel installed `data.fd` for us.
    let fd = unsafe { OwnedFd::from_raw_fd(data.fd as i32) };
    Ok(MappedDmabuf { fd, size, vgem_handle: None })
}

/// A vgem dumb buffer exported through PRIME (fdinfo exporter `drm`).
pub fn vgem_buffer(vgem: &Card, width: u32, height: u32) -> Result<MappedDmabuf, KitError> {
    let dumb = vgem.create_dumb_buffer((width, height), DrmFourcc::Xrgb8888, 32).context("vgem dumb buffer")?;
    let handle = smithay::reexports::drm::buffer::Buffer::handle(&dumb);
    let fd = vgem.buffer_to_prime_fd(handle, (OFlags::RDWR | OFlags::CLOEXEC).bits()).context("PRIME export")?;
    let size = (smithay::reexports::drm::buffer::Buffer::pitch(&dumb) * height) as usize;
    // The dumb buffer's GEM handle stays open (for fences) as long as the vgem card is open.
    Ok(MappedDmabuf { fd, size, vgem_handle: Some(handle.into()) })
}

impl MappedDmabuf {
    /// Writes `bytes` at the start of the buffer through a CPU mapping bracketed by
    /// DMA_BUF_IOCTL_SYNC (START|WRITE ... END|WRITE).
    pub fn write(&self, bytes: &[u8]) -> Result<(), KitError> {
        assert!(bytes.len() <= self.size, "{} bytes into a {}-byte buffer", bytes.len(), self.size);
        self.with_mapping(DmabufSyncFlags::WRITE, |map| map[..bytes.len()].copy_from_slice(bytes))
    }

    /// Reads the whole buffer through a SYNC(READ)-bracketed mapping.
    pub fn read(&self) -> Result<Vec<u8>, KitError> {
        let mut out = Vec::new();
        self.with_mapping(DmabufSyncFlags::READ, |map| out = map.to_vec())?;
        Ok(out)
    }

    fn with_mapping(&self, access: DmabufSyncFlags, f: impl FnOnce(&mut [u8])) -> Result<(), KitError> {
        // SAFETY: a fresh shared mapping of the whole dma-buf; unmapped below before returning.
        let ptr = unsafe { mmap(std::ptr::null_mut(), self.size, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, &self.fd, 0) }
            .context("mmap dma-buf")?;
        sync(&self.fd, DmabufSyncFlags::START | access)?;
        // SAFETY: ptr is valid for `size` bytes until munmap.
        f(unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), self.size) });
        let end = sync(&self.fd, DmabufSyncFlags::END | access);
        // SAFETY: ptr/size came from the mmap above.
        unsafe { munmap(ptr, self.size) }.context("munmap")?;
        end
    }
}

const DMA_BUF_IOCTL_SYNC: rustix::ioctl::Opcode = opcode::write::<u64>(b'b', 0);

fn sync(fd: impl AsFd, flags: DmabufSyncFlags) -> Result<(), KitError> {
    // SAFETY: DMA_BUF_IOCTL_SYNC takes a u64 of flags.
    unsafe { ioctl(fd, rustix::ioctl::Setter::<DMA_BUF_IOCTL_SYNC, u64>::new(flags.bits())) }.context("DMA_BUF_IOCTL_SYNC")
}
