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
    pub path: PathBuf,
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
        Err(KitError {
            what: format!("no DRM device with driver {driver} (found: {seen:?})"),
            source: std::io::ErrorKind::NotFound.into(),
        })
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
