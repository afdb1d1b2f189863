//! Buffer facts from `/proc/self/fdinfo/<fd>`: a dma-buf's exporter, name, size and references.
//!
//! A descriptor that is not a dma-buf has no `exp_name` line, which is how a memfd, pipe or file
//! passed off as a dma-buf is told apart.

use std::os::fd::{AsFd, AsRawFd};

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
        let path = format!("/proc/self/fdinfo/{raw}");
        let text = std::fs::read_to_string(&path).map_err(|source| FdInfoError::Read { path, source })?;
        Self::parse(raw, &text)
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
