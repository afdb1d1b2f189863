//! Scanout on vkms and reading back what it showed: CRC from debugfs and the writeback connector.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use smithay::reexports::drm::buffer::{DrmFourcc, DrmModifier, Handle as BufferHandle, PlanarBuffer};
use smithay::reexports::drm::control::{
    atomic::AtomicModeReq, connector, crtc, framebuffer, plane, property, AtomicCommitFlags, Device as _, FbCmd2Flags, Mode,
};

use super::alloc::MappedDmabuf;
use super::drm::Card;
use super::{Context, KitError};
use crate::sync::SyncFile;

/// A dma-buf imported into a KMS device as a framebuffer.
struct Imported {
    size: (u32, u32),
    format: DrmFourcc,
    pitch: u32,
    handle: BufferHandle,
}

impl PlanarBuffer for Imported {
    fn size(&self) -> (u32, u32) {
        self.size
    }
    fn format(&self) -> DrmFourcc {
        self.format
    }
    fn modifier(&self) -> Option<DrmModifier> {
        None
    }
    fn pitches(&self) -> [u32; 4] {
        [self.pitch, 0, 0, 0]
    }
    fn handles(&self) -> [Option<BufferHandle>; 4] {
        [Some(self.handle), None, None, None]
    }
    fn offsets(&self) -> [u32; 4] {
        [0; 4]
    }
}

/// The vkms pipeline: one CRTC, its primary plane, the Virtual and Writeback connectors.
pub struct Vkms<'a> {
    /// The vkms card.
    pub card: &'a Card,
    /// Its CRTC.
    pub crtc: crtc::Handle,
    /// Its primary plane.
    pub primary: plane::Handle,
    /// Its virtual connector.
    pub virtual_connector: connector::Handle,
    /// Its writeback connector.
    pub writeback: connector::Handle,
    /// The mode.
    pub mode: Mode,
    props: HashMap<(u32, String), property::Handle>,
}

impl<'a> Vkms<'a> {
    /// Finds the pipeline's objects on `card`.
    pub fn new(card: &'a Card) -> Result<Self, KitError> {
        card.enable_atomic()?;
        let res = card.resource_handles().context("resources")?;
        let crtc = *res.crtcs().first().ok_or_else(|| not_found("CRTC"))?;
        let mut virtual_connector = None;
        let mut writeback = None;
        let mut mode = None;
        for &c in res.connectors() {
            let info = card.get_connector(c, false).context("connector")?;
            match info.interface() {
                connector::Interface::Writeback => writeback = Some(c),
                _ => {
                    mode = info.modes().first().copied();
                    virtual_connector = Some(c);
                }
            }
        }
        let mut primary = None;
        for p in card.plane_handles().context("planes")? {
            let props = card.get_properties(p).context("plane props")?.as_hashmap(card).context("plane props")?;
            let Some(type_prop) = props.get("type") else { continue };
            let values = card.get_properties(p).context("plane props")?;
            let is_primary = values.iter().any(|(h, v)| *h == type_prop.handle() && *v == 1);
            if is_primary {
                primary = Some(p);
                break;
            }
        }
        let mut kms = Vkms {
            card,
            crtc,
            primary: primary.ok_or_else(|| not_found("primary plane"))?,
            virtual_connector: virtual_connector.ok_or_else(|| not_found("Virtual connector"))?,
            writeback: writeback.ok_or_else(|| not_found("Writeback connector"))?,
            mode: mode.ok_or_else(|| not_found("mode"))?,
            props: HashMap::new(),
        };
        let objects: [(u32, HashMap<String, property::Info>); 4] = [
            (kms.crtc.into(), card.get_properties(kms.crtc).context("crtc props")?.as_hashmap(card).context("props")?),
            (kms.primary.into(), card.get_properties(kms.primary).context("plane props")?.as_hashmap(card).context("props")?),
            (
                kms.virtual_connector.into(),
                card.get_properties(kms.virtual_connector).context("conn props")?.as_hashmap(card).context("props")?,
            ),
            (kms.writeback.into(), card.get_properties(kms.writeback).context("wb props")?.as_hashmap(card).context("props")?),
        ];
        for (id, map) in objects {
            for (name, info) in map {
                kms.props.insert((id, name), info.handle());
            }
        }
        Ok(kms)
    }

    /// The mode's size.
    pub fn size(&self) -> (u32, u32) {
        let (w, h) = self.mode.size();
        (u32::from(w), u32::from(h))
    }

    fn prop(&self, object: impl Into<u32>, name: &str) -> Result<property::Handle, KitError> {
        let id = object.into();
        self.props.get(&(id, name.to_owned())).copied().ok_or_else(|| not_found(&format!("property {name} on object {id}")))
    }

    /// Imports a LINEAR single-plane dma-buf as a framebuffer.
    pub fn import(&self, buffer: &MappedDmabuf, size: (u32, u32), format: DrmFourcc, pitch: u32) -> Result<framebuffer::Handle, KitError> {
        let handle = self.card.prime_fd_to_buffer(buffer.as_fd()).context("PRIME import")?;
        self.card.add_planar_framebuffer(&Imported { size, format, pitch, handle }, FbCmd2Flags::empty()).context("ADDFB2")
    }

    fn base_request(&self, fb: framebuffer::Handle) -> Result<AtomicModeReq, KitError> {
        let mut req = AtomicModeReq::new();
        let blob = self.card.create_property_blob(&self.mode).context("mode blob")?;
        let (w, h) = self.size();
        req.add_property(self.crtc, self.prop(self.crtc, "MODE_ID")?, blob);
        req.add_property(self.crtc, self.prop(self.crtc, "ACTIVE")?, property::Value::Boolean(true));
        let p = self.primary;
        req.add_property(p, self.prop(p, "FB_ID")?, property::Value::Framebuffer(Some(fb)));
        req.add_property(p, self.prop(p, "CRTC_ID")?, property::Value::CRTC(Some(self.crtc)));
        for (name, value) in [("SRC_X", 0), ("SRC_Y", 0), ("SRC_W", u64::from(w) << 16), ("SRC_H", u64::from(h) << 16)] {
            req.add_property(p, self.prop(p, name)?, property::Value::UnsignedRange(value));
        }
        for (name, value) in [("CRTC_X", 0), ("CRTC_Y", 0), ("CRTC_W", i64::from(w)), ("CRTC_H", i64::from(h))] {
            let v = if name.ends_with('X') || name.ends_with('Y') {
                property::Value::SignedRange(value)
            } else {
                property::Value::UnsignedRange(value as u64)
            };
            req.add_property(p, self.prop(p, name)?, v);
        }
        Ok(req)
    }

    /// Shows `fb` full-screen on the Virtual connector (blocking modeset commit).
    pub fn show(&self, fb: framebuffer::Handle) -> Result<(), KitError> {
        let mut req = self.base_request(fb)?;
        let c = self.virtual_connector;
        req.add_property(c, self.prop(c, "CRTC_ID")?, property::Value::CRTC(Some(self.crtc)));
        let w = self.writeback;
        req.add_property(w, self.prop(w, "CRTC_ID")?, property::Value::CRTC(None));
        self.card.atomic_commit(AtomicCommitFlags::ALLOW_MODESET, req).context("atomic commit (show)")
    }

    /// Shows `fb` with the Writeback connector instead of the Virtual one, and returns the
    /// XRGB8888 pixels vkms wrote back.
    pub fn writeback(&self, fb: framebuffer::Handle) -> Result<Vec<u8>, KitError> {
        let (w, h) = self.size();
        let mut out = self.card.create_dumb_buffer((w, h), DrmFourcc::Xrgb8888, 32).context("writeback dumb buffer")?;
        let out_fb = self.card.add_framebuffer(&out, 24, 32).context("writeback fb")?;
        let mut fence_fd: i32 = -1;
        let mut req = self.base_request(fb)?;
        let c = self.virtual_connector;
        req.add_property(c, self.prop(c, "CRTC_ID")?, property::Value::CRTC(None));
        let wb = self.writeback;
        req.add_property(wb, self.prop(wb, "CRTC_ID")?, property::Value::CRTC(Some(self.crtc)));
        req.add_property(wb, self.prop(wb, "WRITEBACK_FB_ID")?, property::Value::Framebuffer(Some(out_fb)));
        req.add_property(wb, self.prop(wb, "WRITEBACK_OUT_FENCE_PTR")?, property::Value::UnsignedRange(&mut fence_fd as *mut i32 as u64));
        self.card.atomic_commit(AtomicCommitFlags::ALLOW_MODESET, req).context("atomic commit (writeback)")?;
        if fence_fd < 0 {
            return Err(not_found("writeback out-fence"));
        }
        // SAFETY: the kernel wrote a new sync_file descriptor through the pointer property.
        let fence = SyncFile::from_fd(unsafe { OwnedFd::from_raw_fd(fence_fd) });
        if !fence.wait(Some(std::time::Duration::from_secs(5))).context("writeback fence")? {
            return Err(KitError { what: "writeback fence did not signal in 5 s".into(), source: std::io::ErrorKind::TimedOut.into() });
        }
        let pitch = smithay::reexports::drm::buffer::Buffer::pitch(&out) as usize;
        let map = self.card.map_dumb_buffer(&mut out).context("map writeback buffer")?;
        let mut pixels = Vec::with_capacity((w * h * 4) as usize);
        for row in 0..h as usize {
            pixels.extend_from_slice(&map[row * pitch..row * pitch + w as usize * 4]);
        }
        drop(map);
        let _ = self.card.destroy_framebuffer(out_fb);
        let _ = self.card.destroy_dumb_buffer(out);
        Ok(pixels)
    }

    /// Starts CRC capture on the CRTC and returns the next `n` frame CRCs.
    pub fn crcs(&self, n: usize) -> Result<Vec<u32>, KitError> {
        let dir = self.card.debugfs().join("crtc-0/crc");
        std::fs::OpenOptions::new().write(true).open(dir.join("control")).and_then(|mut f| f.write_all(b"auto")).context("crc/control")?;
        let data = std::fs::File::open(dir.join("data")).context("crc/data")?;
        let mut lines = BufReader::new(data).lines();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let line = lines.next().ok_or_else(|| not_found("CRC line"))?.context("reading crc/data")?;
            // "0x<frame> 0x<crc>"
            let crc = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| u32::from_str_radix(v.trim_start_matches("0x"), 16).ok())
                .ok_or_else(|| KitError { what: format!("bad CRC line {line:?}"), source: std::io::ErrorKind::InvalidData.into() })?;
            out.push(crc);
        }
        Ok(out)
    }
}

/// The CRC vkms computes for a full-screen opaque XRGB8888 frame: crc32_le (seed 0, no final
/// inversion) over each composed row, where a row is `width` pixels of four little-endian u16
/// (a, r, g, b) and each 8-bit channel c becomes c * 257.
pub fn vkms_crc_xrgb8888(pixels: &[u32]) -> u32 {
    let mut bytes = Vec::with_capacity(pixels.len() * 8);
    for &p in pixels {
        for c in [0xffu32, (p >> 16) & 0xff, (p >> 8) & 0xff, p & 0xff] {
            bytes.extend_from_slice(&((c * 257) as u16).to_le_bytes());
        }
    }
    // crc32fast computes !crc32_le(!init, data); seeding it with !0 gives the kernel's raw form.
    let mut hasher = crc32fast::Hasher::new_with_initial(!0);
    hasher.update(&bytes);
    !hasher.finalize()
}

fn not_found(what: &str) -> KitError {
    KitError { what: format!("vkms: no {what}"), source: std::io::ErrorKind::NotFound.into() }
}
