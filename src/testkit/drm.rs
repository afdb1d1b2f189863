//! DRM device nodes, found by driver name (never by card index).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use smithay::reexports::drm;
use smithay::reexports::drm::Device as _;

use super::{Context, KitError};

/// An open /dev/dri/cardN.
#[derive(Debug)]
pub struct Card {
    file: File,
    /// The node's path.
    pub path: PathBuf,
    /// The DRM driver.
    pub driver: String,
    /// DRM minor, which names the device's debugfs directory.
    pub minor: u32,
}

impl AsFd for Card {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl drm::Device for Card {}
impl drm::control::Device for Card {}

impl Card {
    /// Opens the primary node whose kernel driver is `driver` (vkms, vgem, virtio_gpu).
    pub fn open_driver(driver: &str) -> Result<Card, KitError> {
        let mut seen = Vec::new();
        let entries = std::fs::read_dir("/dev/dri").context("listing /dev/dri")?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("card")))
            .collect();
        paths.sort();
        for path in paths {
            let file = OpenOptions::new().read(true).write(true).open(&path).context(format!("opening {}", path.display()))?;
            let minor = rustix::fs::minor(rustix::fs::fstat(&file).context("fstat")?.st_rdev);
            let mut card = Card { file, path, driver: String::new(), minor };
            card.driver = card.get_driver().context("DRM_IOCTL_VERSION")?.name().to_string_lossy().into_owned();
            if card.driver == driver {
                return Ok(card);
            }
            seen.push(card.driver);
        }
        Err(KitError { what: format!("no DRM device with driver {driver} (found: {seen:?})"), source: std::io::ErrorKind::NotFound.into() })
    }

    /// The render node (`/dev/dri/renderD*`) whose driver is `driver`: for syncobjs and GPU work
    /// without touching the display.
    pub fn render_node(driver: &str) -> Result<PathBuf, KitError> {
        let entries = std::fs::read_dir("/dev/dri").context("listing /dev/dri")?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("renderD")))
            .collect();
        paths.sort();
        for path in paths {
            let file = OpenOptions::new().read(true).write(true).open(&path).context(format!("opening {}", path.display()))?;
            let node = RenderNode(file);
            if node.get_driver().context("DRM_IOCTL_VERSION")?.name().to_string_lossy() == driver {
                return Ok(path);
            }
        }
        Err(KitError { what: format!("no render node with driver {driver}"), source: std::io::ErrorKind::NotFound.into() })
    }

    /// Enables atomic modesetting and writeback connectors for this client.
    pub fn enable_atomic(&self) -> Result<(), KitError> {
        self.set_client_capability(drm::ClientCapability::UniversalPlanes, true).context("universal planes cap")?;
        self.set_client_capability(drm::ClientCapability::Atomic, true).context("atomic cap")?;
        self.set_client_capability(drm::ClientCapability::WritebackConnectors, true).context("writeback cap")?;
        Ok(())
    }

    /// The debugfs directory of this device.
    pub fn debugfs(&self) -> PathBuf {
        PathBuf::from(format!("/sys/kernel/debug/dri/{}", self.minor))
    }
}

struct RenderNode(File);
impl AsFd for RenderNode {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
impl drm::Device for RenderNode {}

#[repr(C)]
#[derive(Default)]
struct MapDumb {
    handle: u32,
    pad: u32,
    offset: u64,
}
const MODE_MAP_DUMB: rustix::ioctl::Opcode = rustix::ioctl::opcode::read_write::<MapDumb>(b'd', 0xB3);

impl Card {
    /// What the primary plane of the active CRTC shows, read through DRM_IOCTL_MODE_GETFB2 and
    /// a dumb-buffer mapping: (width, height, XRGB8888 pixels). Works for compositor-allocated
    /// (dumb) framebuffers; a directly scanned-out client dma-buf is an imported object and
    /// can't be mapped this way (use vkms CRC for those).
    pub fn read_primary_plane(&self) -> Result<(u32, u32, Vec<u32>), KitError> {
        use smithay::reexports::drm::control::Device as _;
        self.enable_atomic()?;
        for p in self.plane_handles().context("planes")? {
            let info = self.get_plane(p).context("plane")?;
            let (Some(_), Some(fb)) = (info.crtc(), info.framebuffer()) else { continue };
            let props = self.get_properties(p).context("plane props")?;
            let names = props.as_hashmap(self).context("plane props")?;
            let is_primary = names.get("type").is_some_and(|t| props.iter().any(|(h, v)| *h == t.handle() && *v == 1));
            if !is_primary {
                continue;
            }
            let fbinfo = self
                .get_planar_framebuffer(fb)
                .map_err(|e| KitError { what: format!("GETFB2: {e:?}"), source: std::io::ErrorKind::Other.into() })?;
            let (w, h) = fbinfo.size();
            let pitch = fbinfo.pitches()[0] as usize;
            let handle: u32 = fbinfo.buffers()[0]
                .map(Into::into)
                .ok_or_else(|| KitError { what: "GETFB2 gave no handle".into(), source: std::io::ErrorKind::PermissionDenied.into() })?;
            let mut map = MapDumb { handle, ..Default::default() };
            // SAFETY: DRM_IOCTL_MODE_MAP_DUMB with its exact struct layout.
            unsafe { rustix::ioctl::ioctl(self, rustix::ioctl::Updater::<MODE_MAP_DUMB, MapDumb>::new(&mut map)) }
                .context("MODE_MAP_DUMB")?;
            let len = pitch * h as usize;
            // SAFETY: a fresh read-only shared mapping of the framebuffer, unmapped below.
            let ptr = unsafe {
                rustix::mm::mmap(std::ptr::null_mut(), len, rustix::mm::ProtFlags::READ, rustix::mm::MapFlags::SHARED, self, map.offset)
            }
            .context("mmap framebuffer")?;
            // SAFETY: ptr is valid for len bytes until munmap.
            let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
            let mut pixels = Vec::with_capacity((w * h) as usize);
            for row in 0..h as usize {
                for px in bytes[row * pitch..row * pitch + w as usize * 4].chunks_exact(4) {
                    pixels.push(u32::from_le_bytes([px[0], px[1], px[2], px[3]]) & 0x00ff_ffff);
                }
            }
            // SAFETY: unmapping what we mapped.
            unsafe { rustix::mm::munmap(ptr, len) }.context("munmap")?;
            return Ok((w, h, pixels));
        }
        Err(KitError { what: format!("{}: no active primary plane", self.driver), source: std::io::ErrorKind::NotFound.into() })
    }
}
