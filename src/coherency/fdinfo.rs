//! Buffer facts from `/proc/self/fdinfo/<fd>`: a dma-buf's exporter, name, size and references.
//!
//! A descriptor that is not a dma-buf has no `exp_name` line, which is how a memfd, pipe or file
//! passed off as a dma-buf is told apart.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;

use rustix::fs::{Mode, OFlags};

/// What fdinfo says about a dma-buf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmabufFdInfo {
    /// Size in bytes.
    pub size: u64,
    /// File references held on the buffer.
    pub count: u64,
    /// Exporter: `udmabuf`, `system` (dma-heap), `drm` (any PRIME export), ...
    pub exp_name: String,
    /// Optional name set with DMA_BUF_SET_NAME.
    pub name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
/// Why a dma-buf's fdinfo couldn't be read.
pub enum FdInfoError {
    #[error("reading {path}: {source}")]
    /// The file couldn't be read.
    Read {
        /// The fdinfo file.
        path: String,
        /// The system's error.
        source: std::io::Error,
    },
    #[error("fd {0} is not a dma-buf (fdinfo has no exp_name)")]
    /// The descriptor isn't a dma-buf (no `exp_name`).
    NotDmabuf(i32),
    #[error("fdinfo of fd {fd}: field {field} is malformed: {value:?}")]
    /// A field couldn't be parsed.
    Malformed {
        /// The descriptor.
        fd: i32,
        /// The field.
        field: &'static str,
        /// Its text.
        value: String,
    },
}

impl DmabufFdInfo {
    /// Reads the fdinfo of `fd` in this process.
    pub fn read(fd: impl AsFd) -> Result<Self, FdInfoError> {
        let raw = fd.as_fd().as_raw_fd();
        let read_error = |source: rustix::io::Errno| FdInfoError::Read { path: format!("/proc/self/fdinfo/{raw}"), source: source.into() };
        // Every import reads this, so it is opened relative to a kept directory descriptor:
        // resolving /proc/self/fdinfo/N from the root costs more than the read itself.
        let file = fdinfo_dir()
            .and_then(|dir| rustix::fs::openat(&dir, raw.to_string(), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()))
            .map_err(read_error)?;
        // A dma-buf's fdinfo is a few hundred bytes, made by one seq_file show: a read that
        // doesn't fill the buffer returned all of it, and the read that would see EOF is saved
        // (a syscall at every import). A longer text is read on until EOF.
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 2048];
        loop {
            let n = rustix::io::read(&file, &mut chunk).map_err(read_error)?;
            bytes.extend_from_slice(&chunk[..n]);
            if n < chunk.len() {
                break;
            }
        }
        Self::parse(raw, &String::from_utf8_lossy(&bytes))
    }

    /// Whether `fd` is a dma-buf. A dma-buf lives on the kernel's dma-buf pseudo-filesystem, so
    /// one `fstatfs` answers for every kernel cohere supports. Anything else is asked of fdinfo,
    /// which has `exp_name` exactly for dma-bufs.
    pub fn is_dmabuf(fd: impl AsFd) -> bool {
        /// DMA_BUF_MAGIC from include/uapi/linux/magic.h ("DMAB").
        const DMA_BUF_MAGIC: i64 = 0x444d_4142;
        // f_type is i64 on x86_64 and narrower elsewhere (i32 on 32-bit ARM, u32 on s390x).
        #[allow(clippy::unnecessary_cast)]
        match rustix::fs::fstatfs(&fd) {
            Ok(stat) if stat.f_type as i64 == DMA_BUF_MAGIC => true,
            _ => Self::read(fd).is_ok(),
        }
    }

    /// Parses fdinfo text (`key:\tvalue` lines).
    pub fn parse(fd: i32, text: &str) -> Result<Self, FdInfoError> {
        let field = |key: &str| {
            text.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_owned())
            })
        };
        let exp_name = field("exp_name").ok_or(FdInfoError::NotDmabuf(fd))?;
        let number = |key: &'static str| -> Result<u64, FdInfoError> {
            let value = field(key).unwrap_or_default();
            value.parse().map_err(|_| FdInfoError::Malformed { fd, field: key, value })
        };
        Ok(Self { size: number("size")?, count: number("count")?, exp_name, name: field("name").filter(|n| !n.is_empty()) })
    }
}

/// Opens the kept `/proc/<pid>/fdinfo` descriptor now (see [`DmabufFdInfo::read`]). If that
/// fails, each read tries again and reports the error.
pub(crate) fn keep_fdinfo_dir() {
    if let Err(err) = fdinfo_dir() {
        tracing::warn!(%err, "can't open /proc/self/fdinfo: every dma-buf import will fail");
    }
}

/// This process's `/proc/<pid>/fdinfo`, opened once per process: a forked child that calls
/// [`DmabufFdInfo::read`] opens its own.
fn fdinfo_dir() -> Result<std::sync::Arc<OwnedFd>, rustix::io::Errno> {
    static DIR: Mutex<Option<(rustix::process::Pid, std::sync::Arc<OwnedFd>)>> = Mutex::new(None);
    let pid = rustix::process::getpid();
    let mut dir = DIR.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((owner, fd)) = dir.as_ref() {
        if *owner == pid {
            return Ok(fd.clone());
        }
    }
    let fd = std::sync::Arc::new(rustix::fs::open(
        format!("/proc/{}/fdinfo", pid.as_raw_nonzero()),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?);
    *dir = Some((pid, fd.clone()));
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_udmabuf_fdinfo() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\nsize:\t65536\ncount:\t1\nexp_name:\tudmabuf\n";
        let info = DmabufFdInfo::parse(5, text).unwrap();
        assert_eq!(info, DmabufFdInfo { size: 65536, count: 1, exp_name: "udmabuf".into(), name: None });
    }

    #[test]
    fn a_memfd_is_not_a_dmabuf() {
        let memfd = rustix::fs::memfd_create("not-a-dmabuf", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&memfd, 4096).unwrap();
        assert!(!DmabufFdInfo::is_dmabuf(&memfd));
        // Read through the kept directory descriptor, twice: the second read reuses it.
        for _ in 0..2 {
            assert!(matches!(DmabufFdInfo::read(&memfd), Err(FdInfoError::NotDmabuf(_))));
        }
    }

    #[test]
    fn named_buffer() {
        let text = "size:\t4096\ncount:\t2\nexp_name:\tsystem\nname:\tcamera0\n";
        assert_eq!(DmabufFdInfo::parse(5, text).unwrap().name.as_deref(), Some("camera0"));
    }

    #[test]
    fn memfd_is_not_a_dmabuf() {
        let text = "pos:\t0\nflags:\t0100002\nmnt_id:\t1\nino:\t7\n";
        assert!(matches!(DmabufFdInfo::parse(9, text), Err(FdInfoError::NotDmabuf(9))));
    }

    #[test]
    fn malformed_size_names_the_field() {
        let err = DmabufFdInfo::parse(3, "size:\tlots\ncount:\t1\nexp_name:\tdrm\n").unwrap_err();
        assert_eq!(err.to_string(), "fdinfo of fd 3: field size is malformed: \"lots\"");
    }

    #[test]
    fn real_memfd_has_no_exp_name() {
        let fd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        assert!(matches!(DmabufFdInfo::read(&fd), Err(FdInfoError::NotDmabuf(_))));
    }
}
