//! zwp_linux_buffer_params_v1 validation: every check a client's numbers and fds must pass
//! before a buffer exists. This is the only place they are checked.
//!
//! The checks are the union of what wlroots, Weston and smithay do, made total: all arithmetic is
//! in u64, every plane is checked (not only plane 0), and the fd must really be a dma-buf.
//! Nothing here can panic on client input.

use std::os::fd::{AsFd, OwnedFd};

use smithay::backend::allocator::dmabuf::{Dmabuf, DmabufFlags};
use smithay::backend::allocator::{Format, Fourcc, Modifier};
use smithay::reexports::wayland_protocols::wp::linux_dmabuf::zv1::server::zwp_linux_buffer_params_v1::Error as ParamsError;

use super::format::layout;
use super::ImplicitModifier;
use crate::coherency::DmabufFdInfo;

/// Most planes a buffer can have (the protocol's plane_idx range).
pub const MAX_PLANES: usize = 4;

/// One `add` request.
#[derive(Debug)]
pub struct PlaneParams {
    /// The plane's descriptor.
    pub fd: OwnedFd,
    /// Its offset.
    pub offset: u32,
    /// Its stride.
    pub stride: u32,
    /// Its modifier.
    pub modifier: u64,
}

/// Why a params object did not become a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    /// A protocol error on the params object; the client is disconnected.
    /// A protocol error and its message.
    Protocol {
        /// The protocol error.
        code: ParamsError,
        /// Its message.
        message: String,
    },
    /// Well-formed, but not importable: `failed` for create, INVALID_WL_BUFFER for create_immed.
    Failed(String),
}

impl Rejection {
    fn protocol(code: ParamsError, message: impl Into<String>) -> Self {
        Rejection::Protocol { code, message: message.into() }
    }
}

/// The accumulated state of one zwp_linux_buffer_params_v1.
#[derive(Debug, Default)]
pub struct Params {
    planes: [Option<PlaneParams>; MAX_PLANES],
    used: bool,
}

/// What `create`/`create_immed` asked for.
#[derive(Debug, Clone, Copy)]
pub struct CreateRequest {
    /// Width in pixels.
    pub width: i32,
    /// Height in pixels.
    pub height: i32,
    /// DRM fourcc.
    pub format: u32,
    /// zwp_linux_buffer_params_v1 flags.
    pub flags: u32,
}

const FLAG_Y_INVERT: u32 = 1;
const FLAG_INTERLACED: u32 = 2;
const FLAG_BOTTOM_FIRST: u32 = 4;

impl Params {
    /// Handles `add`. The fd is kept even on error so it is closed when the params go away.
    pub fn add(&mut self, plane: PlaneParams, plane_idx: u32) -> Result<(), Rejection> {
        if self.used {
            return Err(Rejection::protocol(ParamsError::AlreadyUsed, "params already used to create a buffer"));
        }
        let idx = plane_idx as usize;
        if idx >= MAX_PLANES {
            return Err(Rejection::protocol(ParamsError::PlaneIdx, format!("plane index {plane_idx} is not below {MAX_PLANES}")));
        }
        if self.planes[idx].is_some() {
            return Err(Rejection::protocol(ParamsError::PlaneSet, format!("plane {plane_idx} was already added")));
        }
        // One modifier for the whole buffer, at every protocol version.
        if let Some(other) = self.planes.iter().flatten().find(|p| p.modifier != plane.modifier) {
            return Err(Rejection::protocol(
                ParamsError::InvalidFormat,
                format!("plane {plane_idx} has modifier {:#x}, another plane has {:#x}", plane.modifier, other.modifier),
            ));
        }
        self.planes[idx] = Some(plane);
        Ok(())
    }

    /// Handles `create`/`create_immed`: validates everything and builds the smithay `Dmabuf`
    /// with its planes in plane_idx order. `advertised` is the (format, modifier) table; an
    /// advertised implicit modifier is validated and built as LINEAR when `implicit` says so.
    ///
    /// The `y_invert` flag is returned beside the `Dmabuf`, not in its flags: it is a vertical
    /// flip of the buffer, which [`super::ImportState::orient`] folds into the surface's buffer
    /// transform at commit. smithay 0.7's GLES renderer negates V for a `Y_INVERT` texture
    /// without the `1 - v` offset, so such a buffer renders as its first row stretched down the
    /// window (smithay issue #2150). Through the transform, GLES, Pixman and the CPU copy flip
    /// it the way they flip any transformed buffer (planes don't get it: see
    /// `ScanoutFilter::keeping_off`).
    pub fn create(&mut self, req: CreateRequest, advertised: &[Format], implicit: ImplicitModifier) -> Result<Created, Rejection> {
        if self.used {
            return Err(Rejection::protocol(ParamsError::AlreadyUsed, "params already used to create a buffer"));
        }
        self.used = true;
        let planes = std::mem::take(&mut self.planes);

        let count = planes.iter().take_while(|p| p.is_some()).count();
        if count == 0 {
            return Err(Rejection::protocol(ParamsError::Incomplete, "no planes were added"));
        }
        if let Some(gap) = planes.iter().skip(count).position(Option::is_some) {
            return Err(Rejection::protocol(
                ParamsError::Incomplete,
                format!("plane {count} is missing but plane {} was added", count + gap + 1),
            ));
        }
        let planes: Vec<PlaneParams> = planes.into_iter().flatten().collect();

        let fourcc = Fourcc::try_from(req.format)
            .map_err(|_| Rejection::protocol(ParamsError::InvalidFormat, format!("unknown format {:#010x}", req.format)))?;
        let layout =
            layout(fourcc).ok_or_else(|| Rejection::protocol(ParamsError::InvalidFormat, format!("format {fourcc} is not supported")))?;
        let modifier = Modifier::from(planes[0].modifier);
        let opaque_layout = !matches!(modifier, Modifier::Linear | Modifier::Invalid);
        // Vendor modifiers may add auxiliary (compression) planes after the format's own.
        let plane_count_ok = if opaque_layout { count >= layout.planes } else { count == layout.planes };
        if !plane_count_ok {
            return Err(Rejection::protocol(
                ParamsError::Incomplete,
                format!("{fourcc} with modifier {:#x} needs {} planes, got {count}", planes[0].modifier, layout.planes),
            ));
        }
        if !advertised.contains(&Format { code: fourcc, modifier }) {
            return Err(Rejection::protocol(
                ParamsError::InvalidFormat,
                format!("{fourcc} with modifier {:#x} was not advertised", planes[0].modifier),
            ));
        }
        if req.width < 1 || req.height < 1 {
            return Err(Rejection::protocol(ParamsError::InvalidDimensions, format!("size {}x{}", req.width, req.height)));
        }
        let (width, height) = (req.width as u32, req.height as u32);

        for (idx, plane) in planes.iter().enumerate() {
            check_plane_bounds(idx, plane, (width, height), (layout, opaque_layout))?;
        }

        if req.flags & !(FLAG_Y_INVERT | FLAG_INTERLACED | FLAG_BOTTOM_FIRST) != 0 {
            return Err(Rejection::Failed(format!("unknown flags {:#x}", req.flags)));
        }
        if req.flags & (FLAG_INTERLACED | FLAG_BOTTOM_FIRST) != 0 {
            return Err(Rejection::Failed("interlaced buffers are not supported".into()));
        }
        if let Some(idx) = planes.iter().position(|plane| !DmabufFdInfo::is_dmabuf(plane.fd.as_fd())) {
            return Err(Rejection::Failed(format!("plane {idx}: the fd is not a dma-buf")));
        }

        let y_inverted = req.flags & FLAG_Y_INVERT != 0;
        let modifier = match (modifier, implicit) {
            (Modifier::Invalid, ImplicitModifier::AsLinear) => Modifier::Linear,
            (m, _) => m,
        };
        let mut builder = Dmabuf::builder((req.width, req.height), fourcc, modifier, DmabufFlags::empty());
        for (idx, plane) in planes.into_iter().enumerate() {
            builder.add_plane(plane.fd, idx as u32, plane.offset, plane.stride);
        }
        let dmabuf = builder.build().ok_or_else(|| Rejection::Failed("no planes".into()))?;
        Ok(Created { dmabuf, y_inverted })
    }
}

/// A buffer `create`/`create_immed` accepted.
#[derive(Debug)]
pub struct Created {
    /// The buffer, without `Y_INVERT` in its flags (see [`Params::create`]).
    pub dmabuf: Dmabuf,
    /// The client set `y_invert`: the buffer's rows are stored bottom to top.
    pub y_inverted: bool,
}

/// OUT_OF_BOUNDS checks for one plane against the size of its fd (`lseek(SEEK_END)`).
fn check_plane_bounds(
    idx: usize,
    plane: &PlaneParams,
    (width, height): (u32, u32),
    (layout, opaque_layout): (super::format::Layout, bool),
) -> Result<(), Rejection> {
    let oob = |msg: String| Rejection::protocol(ParamsError::OutOfBounds, format!("plane {idx}: {msg}"));
    let (offset, stride) = (u64::from(plane.offset), u64::from(plane.stride));
    if offset + stride > u64::from(u32::MAX) {
        return Err(oob(format!("offset {offset} + stride {stride} overflows 32 bits")));
    }
    if stride == 0 {
        return Err(oob("stride is 0".into()));
    }
    // A pipe or socket can't seek: it cannot be a dma-buf.
    let size = rustix::fs::seek(&plane.fd, rustix::fs::SeekFrom::End(0))
        .map_err(|e| Rejection::Failed(format!("plane {idx}: fd is not a dma-buf (lseek: {e})")))?;
    // Seeking changes the shared file offset; put it back for any other user of the fd.
    let _ = rustix::fs::seek(&plane.fd, rustix::fs::SeekFrom::Start(0));
    if offset >= size {
        return Err(oob(format!("offset {offset} is not below the buffer size {size}")));
    }
    if offset + stride > size {
        return Err(oob(format!("offset {offset} + stride {stride} exceeds the buffer size {size}")));
    }
    if opaque_layout || idx >= layout.planes {
        // Tiled and compressed layouts are the driver's business beyond these checks.
        return Ok(());
    }
    let (plane_w, plane_h) = layout.plane_size(idx, width, height);
    let row = u64::from(plane_w) * u64::from(layout.cpp[idx]);
    if stride < row {
        return Err(oob(format!("stride {stride} is below the row size {row} ({plane_w} px)")));
    }
    let end = offset + stride * u64::from(plane_h);
    if end > size {
        return Err(oob(format!("{plane_h} rows of {stride} bytes from offset {offset} end at {end}, past the buffer size {size}")));
    }
    Ok(())
}
