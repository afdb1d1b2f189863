//! Memory layout of the pixel formats cohere accepts: planes, bytes per pixel, subsampling.
//!
//! drm-fourcc only names formats; the plane geometry needed to check that every plane fits in
//! its buffer is the kernel's `drm_format_info` table, of which this is the subset cohere
//! advertises. A format missing here is never advertised, so every format a client can use has
//! its extent checked.

use smithay::backend::allocator::Fourcc;

/// The layout of one format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Planes for a LINEAR buffer (modifiers may add auxiliary planes).
    pub planes: usize,
    /// Bytes per pixel of each plane.
    pub cpp: [u8; 4],
    /// Horizontal and vertical subsampling of the planes after the first.
    pub hsub: u32,
    /// Vertical subsampling of planes after the first.
    pub vsub: u32,
}

const fn packed(cpp: u8) -> Layout {
    Layout { planes: 1, cpp: [cpp, 0, 0, 0], hsub: 1, vsub: 1 }
}

const fn yuv(planes: usize, cpp: [u8; 4], hsub: u32, vsub: u32) -> Layout {
    Layout { planes, cpp, hsub, vsub }
}

/// The layout of `fourcc`, or `None` for a format cohere doesn't know.
pub fn layout(fourcc: Fourcc) -> Option<Layout> {
    use Fourcc::*;
    Some(match fourcc {
        Argb8888 | Xrgb8888 | Abgr8888 | Xbgr8888 | Rgba8888 | Rgbx8888 | Bgra8888 | Bgrx8888 | Argb2101010 | Xrgb2101010 | Abgr2101010
        | Xbgr2101010 | Rgba1010102 | Rgbx1010102 | Bgra1010102 | Bgrx1010102 => packed(4),
        Rgb888 | Bgr888 => packed(3),
        Rgb565 | Bgr565 | Argb1555 | Xrgb1555 | Argb4444 | Xrgb4444 | Abgr4444 | Xbgr4444 => packed(2),
        Abgr16161616f | Xbgr16161616f | Argb16161616f | Xrgb16161616f => packed(8),
        // Packed 4:2:2: two pixels share four bytes.
        Yuyv | Yvyu | Uyvy | Vyuy => packed(2),
        Nv12 | Nv21 => yuv(2, [1, 2, 0, 0], 2, 2),
        Nv16 | Nv61 => yuv(2, [1, 2, 0, 0], 2, 1),
        Nv24 | Nv42 => yuv(2, [1, 2, 0, 0], 1, 1),
        P010 | P012 | P016 => yuv(2, [2, 4, 0, 0], 2, 2),
        Yuv420 | Yvu420 => yuv(3, [1, 1, 1, 0], 2, 2),
        Yuv422 | Yvu422 => yuv(3, [1, 1, 1, 0], 2, 1),
        Yuv444 | Yvu444 => yuv(3, [1, 1, 1, 0], 1, 1),
        _ => return None,
    })
}

impl Layout {
    /// Width and height in pixels of plane `index` for a `width` x `height` buffer.
    pub fn plane_size(&self, index: usize, width: u32, height: u32) -> (u32, u32) {
        if index == 0 {
            (width, height)
        } else {
            (width.div_ceil(self.hsub), height.div_ceil(self.vsub))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nv12_chroma_plane_is_half_size_rounded_up() {
        let l = layout(Fourcc::Nv12).unwrap();
        assert_eq!(l.planes, 2);
        assert_eq!(l.plane_size(0, 33, 17), (33, 17));
        assert_eq!(l.plane_size(1, 33, 17), (17, 9));
    }

    #[test]
    fn yuv420_has_three_planes() {
        assert_eq!(layout(Fourcc::Yuv420).map(|l| l.planes), Some(3));
    }

    #[test]
    fn unknown_format_has_no_layout() {
        assert_eq!(layout(Fourcc::C8), None);
    }
}
