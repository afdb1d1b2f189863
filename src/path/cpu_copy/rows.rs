//! Copying the damaged rectangles of one plane into another, row by row, in one pass: each
//! damaged byte is read from the client's buffer once and written into the shadow once.
//!
//! Reading write-combined or uncached memory with ordinary loads is slow (each load is an
//! uncached bus transaction). On x86_64 with SSE4.1, `MOVNTDQA` streaming loads fetch such
//! memory a whole line at a time; on ordinary cached memory they behave like plain loads. They
//! are used only where the plan says the source isn't cached ([`Reads::Streaming`]), and the
//! plain copy everywhere else.

use smithay::utils::{Buffer as BufferCoords, Rectangle};

/// One plane's bytes and row layout.
#[derive(Debug)]
pub struct Plane<B> {
    /// The plane's bytes.
    pub bytes: B,
    /// Where the image starts.
    pub offset: usize,
    /// Bytes per row.
    pub stride: usize,
}

/// How to read the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reads {
    /// Cached memory: plain loads.
    #[default]
    Cached,
    /// Write-combined or uncached memory: streaming loads where the CPU has them.
    Streaming,
}

impl Reads {
    /// How to read memory of `memory` type. Device memory is mapped write-combined; DMA-coherent
    /// memory not yet resolved against the machine may be uncached, and streaming loads cost
    /// nothing on cached memory.
    pub fn of(memory: crate::coherency::MemoryType) -> Self {
        use crate::coherency::MemoryType::*;
        match memory {
            Cached => Reads::Cached,
            WriteCombined | Uncached | Device | DmaCoherent => Reads::Streaming,
        }
    }
}

/// Rows of `r` as (byte offset of the row's first pixel in a plane, row length in bytes).
fn rows(r: &Rectangle<i32, BufferCoords>, offset: usize, stride: usize, cpp: usize) -> impl Iterator<Item = (usize, usize)> {
    let (x, w) = (r.loc.x.max(0) as usize * cpp, r.size.w.max(0) as usize * cpp);
    let ys = r.loc.y.max(0) as usize..(r.loc.y.max(0) + r.size.h.max(0)) as usize;
    ys.map(move |y| (offset + y * stride + x, w))
}

/// Copies the rows of `rects` (pixels of `cpp` bytes) from `src` into the same rectangles of
/// `dst`; returns the bytes copied. Rows outside either plane are left out.
pub fn copy_rects(src: &Plane<&[u8]>, dst: &mut Plane<&mut [u8]>, rects: &[Rectangle<i32, BufferCoords>], cpp: usize, reads: Reads) -> u64 {
    let copy_row = row_copier(reads);
    let mut copied = 0u64;
    for r in rects {
        // Whole rows of two planes without padding are one run of bytes: one copy, which
        // memcpy does faster than row after row (it streams the stores of large copies).
        let (row, h) = (r.size.w.max(0) as usize * cpp, r.size.h.max(0) as usize);
        if r.loc.x <= 0 && row == src.stride && row == dst.stride {
            let (from, to) = (src.offset + r.loc.y.max(0) as usize * row, dst.offset + r.loc.y.max(0) as usize * row);
            if let (Some(from), Some(to)) = (src.bytes.get(from..from + row * h), dst.bytes.get_mut(to..to + row * h)) {
                block_copier(reads)(from, to);
                copied += (row * h) as u64;
                continue;
            }
        }
        for ((from, len), (to, _)) in rows(r, src.offset, src.stride, cpp).zip(rows(r, dst.offset, dst.stride, cpp)) {
            let (Some(from), Some(to)) = (src.bytes.get(from..from + len), dst.bytes.get_mut(to..to + len)) else { continue };
            copy_row(from, to);
            copied += len as u64;
        }
    }
    copied
}

/// The copy of a large run of bytes for `reads` on this CPU: memcpy from cached memory (it
/// streams the stores of large copies).
fn block_copier(reads: Reads) -> fn(&[u8], &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if reads == Reads::Streaming && std::arch::is_x86_feature_detected!("sse4.1") {
        return sse::copy_row::<true>;
    }
    let _ = reads;
    |from, to| to.copy_from_slice(from)
}

/// The row copy for `reads` on this CPU. Rows of a few KiB copy faster with a plain unrolled
/// SSE2 loop than with the library memcpy (measured by `benches/cpu_copy.rs`).
fn row_copier(reads: Reads) -> fn(&[u8], &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        if reads == Reads::Streaming && std::arch::is_x86_feature_detected!("sse4.1") {
            return sse::copy_row::<true>;
        }
        sse::copy_row::<false>
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = reads;
        |from, to| to.copy_from_slice(from)
    }
}

#[cfg(target_arch = "x86_64")]
mod sse {
    /// Copies `from` into `to` (same length) 64 bytes (a cache line) at a time, the
    /// 16-byte-aligned part of `from` with `MOVNTDQA` streaming loads when `STREAM` (SSE4.1)
    /// or plain `MOVDQA` loads (SSE2, always there on x86_64), and the ends with plain copies.
    pub(super) fn copy_row<const STREAM: bool>(from: &[u8], to: &mut [u8]) {
        let len = from.len().min(to.len());
        if !STREAM && len < 1024 {
            // Short rows of cached memory (tiles): the alignment work isn't worth it.
            to[..len].copy_from_slice(&from[..len]);
            return;
        }
        let head = from.as_ptr().align_offset(16).min(len);
        let body = (len - head) / 64 * 64;
        to[..head].copy_from_slice(&from[..head]);
        let mut at = head;
        while at < head + body {
            // SAFETY: with STREAM, only called after is_x86_feature_detected!("sse4.1"); SSE2 is
            // part of x86_64. `from[at..at + 64]`
            // and `to[at..at + 64]` are in bounds (at + 64 <= head + body <= len), `from + at`
            // is 16-byte aligned (head aligned it, and `at` moves in steps of 64), and the
            // stores are unaligned (`movdqu`). The xmm registers are declared clobbered.
            unsafe {
                let (s, t) = (from.as_ptr().add(at), to.as_mut_ptr().add(at));
                // 64 bytes with `$load` (streaming or ordinary aligned loads), stored unaligned.
                macro_rules! copy64 {
                    ($load:literal) => {
                        std::arch::asm!(
                            concat!($load, " {a}, [{s}]"),
                            concat!($load, " {b}, [{s} + 16]"),
                            concat!($load, " {c}, [{s} + 32]"),
                            concat!($load, " {d}, [{s} + 48]"),
                            "movdqu [{t}], {a}",
                            "movdqu [{t} + 16], {b}",
                            "movdqu [{t} + 32], {c}",
                            "movdqu [{t} + 48], {d}",
                            s = in(reg) s, t = in(reg) t,
                            a = out(xmm_reg) _, b = out(xmm_reg) _, c = out(xmm_reg) _, d = out(xmm_reg) _,
                            options(nostack, preserves_flags),
                        )
                    };
                }
                if STREAM {
                    copy64!("movntdqa");
                } else {
                    copy64!("movdqa");
                }
            }
            at += 64;
        }
        to[at..len].copy_from_slice(&from[at..len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(reads: Reads) {
        let (w, h, cpp) = (40usize, 9usize, 4usize);
        // An odd offset, so the streaming copy has unaligned ends to handle.
        let offset = 3;
        let src: Vec<u8> = (0..offset + w * h * cpp).map(|i| (i % 251) as u8).collect();
        let rects = super::super::disjoint(
            vec![
                Rectangle::new((2, 1).into(), (33, 3).into()),
                Rectangle::new((4, 2).into(), (6, 4).into()),
                Rectangle::new((38, 6).into(), (9, 9).into()),
            ],
            Rectangle::from_size((w as i32, h as i32).into()),
        );
        let mut dst = vec![0u8; w * h * cpp];
        let src_plane = Plane { bytes: &src[..], offset, stride: w * cpp };
        let copied = copy_rects(&src_plane, &mut Plane { bytes: &mut dst[..], offset: 0, stride: w * cpp }, &rects, cpp, reads);
        // 33x3 + (6x4 minus its 6x2 overlap) + the 2x3 left after clipping to the buffer.
        assert_eq!(copied, ((99 + 24 - 12 + 6) * cpp) as u64);
        for y in 0..h {
            for x in 0..w {
                let inside = rects.iter().any(|r| r.contains((x as i32, y as i32)));
                let i = (y * w + x) * cpp;
                let want = if inside { &src[offset + i..offset + i + cpp] } else { &[0u8; 4][..] };
                assert_eq!(&dst[i..i + cpp], want, "{reads:?}: pixel ({x},{y})");
            }
        }
    }

    #[test]
    fn copies_exactly_the_rectangles() {
        check(Reads::Cached);
    }

    #[test]
    fn streaming_loads_copy_the_same_bytes() {
        check(Reads::Streaming);
    }
}
