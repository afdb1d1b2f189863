//! linux-dmabuf feedback (v4+): the format table in a sealed memfd, the main device, and
//! tranches that tell clients which (format, modifier) pairs to allocate for which device.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
use smithay::backend::allocator::Format;
use smithay::reexports::wayland_protocols::wp::linux_dmabuf::zv1::server::zwp_linux_dmabuf_feedback_v1::{
    TrancheFlags, ZwpLinuxDmabufFeedbackV1,
};

/// The format table clients mmap: 16 bytes per entry (u32 format, u32 padding, u64 modifier).
#[derive(Debug)]
pub struct FormatTable {
    formats: Vec<Format>,
    fd: OwnedFd,
    size: u32,
}

#[derive(Debug, thiserror::Error)]
/// Why the format table couldn't be made.
pub enum FormatTableError {
    #[error("the format table has {0} entries; feedback indices are 16-bit")]
    /// More formats than the protocol's u16 indices address.
    TooLarge(usize),
    #[error("creating the format table memfd: {0}")]
    /// The memfd couldn't be made.
    Memfd(#[from] std::io::Error),
}

impl FormatTable {
    /// Writes `formats` (deduplicated, order kept) to a memfd sealed against any change, so one
    /// descriptor can be shared with every client.
    pub fn new(formats: &[Format]) -> Result<Self, FormatTableError> {
        let mut unique: Vec<Format> = Vec::with_capacity(formats.len());
        for f in formats {
            if !unique.contains(f) {
                unique.push(*f);
            }
        }
        if unique.len() > usize::from(u16::MAX) + 1 {
            return Err(FormatTableError::TooLarge(unique.len()));
        }
        let fd = memfd_create("cohere-dmabuf-formats", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).map_err(std::io::Error::from)?;
        let mut bytes = Vec::with_capacity(unique.len() * 16);
        for f in &unique {
            bytes.extend_from_slice(&(f.code as u32).to_ne_bytes());
            bytes.extend_from_slice(&0u32.to_ne_bytes());
            bytes.extend_from_slice(&u64::from(f.modifier).to_ne_bytes());
        }
        let mut file = std::fs::File::from(fd);
        file.write_all(&bytes)?;
        let fd = OwnedFd::from(file);
        fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL).map_err(std::io::Error::from)?;
        Ok(Self { formats: unique, fd, size: bytes.len() as u32 })
    }

    /// The formats, in table order.
    pub fn formats(&self) -> &[Format] {
        &self.formats
    }

    fn index_of(&self, format: &Format) -> Option<u16> {
        self.formats.iter().position(|f| f == format).and_then(|i| u16::try_from(i).ok())
    }
}

/// One tranche: formats preferred for a target device, with flags (scanout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tranche {
    /// The device (dev_t) the tranche is for.
    pub target_device: u64,
    /// Scanout or not.
    pub flags: TrancheFlags,
    /// Its formats, by the table's order.
    pub formats: Vec<Format>,
}

/// A complete feedback: main device plus tranches in preference order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    /// The main (render) device's dev_t.
    pub main_device: u64,
    /// Preferred first.
    pub tranches: Vec<Tranche>,
}

impl Feedback {
    /// The default feedback: everything the renderer imports, for the main device.
    pub fn render_only(main_device: u64, formats: &[Format]) -> Self {
        Self {
            main_device,
            tranches: vec![Tranche { target_device: main_device, flags: TrancheFlags::empty(), formats: formats.to_vec() }],
        }
    }

    /// Scanout first: a tranche the display can scan out directly, then the render tranche.
    pub fn with_scanout(main_device: u64, scanout_device: u64, scanout: &[Format], render: &[Format]) -> Self {
        Self {
            main_device,
            tranches: vec![
                Tranche { target_device: scanout_device, flags: TrancheFlags::Scanout, formats: scanout.to_vec() },
                Tranche { target_device: main_device, flags: TrancheFlags::empty(), formats: render.to_vec() },
            ],
        }
    }

    /// Sends the whole feedback sequence, ending with `done`. Formats missing from the table
    /// are left out (the table is what clients can index).
    pub fn send(&self, resource: &ZwpLinuxDmabufFeedbackV1, table: &FormatTable) {
        resource.format_table(table.fd.as_fd(), table.size);
        resource.main_device(self.main_device.to_ne_bytes().to_vec());
        for tranche in &self.tranches {
            resource.tranche_target_device(tranche.target_device.to_ne_bytes().to_vec());
            let indices: Vec<u8> = tranche.formats.iter().filter_map(|f| table.index_of(f)).flat_map(u16::to_ne_bytes).collect();
            resource.tranche_formats(indices);
            resource.tranche_flags(tranche.flags);
            resource.tranche_done();
        }
        resource.done();
    }
}
