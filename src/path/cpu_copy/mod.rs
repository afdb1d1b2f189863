//! CpuCopy: the plan says the renderer must not read a client buffer itself (a CPU renderer and
//! GPU, write-combined or uncached memory; or a renderer that can't import it), so cohere copies
//! it. Each commit's damaged rectangles, and only those, are read on the copy thread
//! ([`worker`]) through a mapping bracketed by `DMA_BUF_IOCTL_SYNC`, then written on the event
//! loop into the surface's shadow in ordinary cached memory, which the renderer composites.
//! The commit waits (a commit blocker) until its copy is in the shadow, so frame callbacks and
//! presentation feedback follow the pixels. Between commits nothing touches the client's buffer.
//!
//! The shadow persists across commits and buffers: wl_surface damage is relative to the
//! surface's previous content, whichever buffer held it, so copying only the damage is exact
//! as long as copies land in commit order, which [`job_done`] enforces. A new size, format,
//! scale or transform, or a surface that showed a non-copied buffer in between, copies all.
//!
//! The surface still scans out directly where the plan allows it (a `drm` buffer on vkms):
//! [`CopiedSurfaceElement`] draws from the shadow but offers the client buffer to the plane
//! assignment, and [`super::direct::ScanoutFilter`] lets it through only where the plan allows.

mod element;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::Mutex;

use smithay::backend::allocator::dmabuf::Dmabuf;
use smithay::backend::allocator::{Buffer as _, Fourcc};
use smithay::backend::renderer::element::memory::MemoryRenderBuffer;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::utils::{Buffer as BufferCoords, Rectangle, Size, Transform};
use smithay::wayland::compositor::with_states;

pub use element::{element, CopiedSurfaceElement};
pub use worker::{CopyDone, CopyJob, CopyWorker, Done, Job, Readout};

/// Why a copy could not be made. The surface shows what its shadow held before (nothing, for a
/// new shadow); a format that can't be copied isn't drawn from a shadow at all.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0} has no single-plane layout cohere can copy")]
    /// The format has no single-plane layout cohere copies.
    Format(Fourcc),
    #[error("the buffer's plane 0 is smaller than its rows ({need} > {have} bytes)")]
    /// The buffer is smaller than its rows.
    Size {
        /// Bytes the rows need.
        need: u64,
        /// Bytes the plane has.
        have: u64,
    },
    #[error("mmap: {0}")]
    /// mmap failed.
    Map(rustix::io::Errno),
    #[error("DMA_BUF_IOCTL_SYNC: {0}")]
    /// DMA_BUF_IOCTL_SYNC failed.
    Sync(String),
    #[error("a device is writing the buffer again after its commit (a new write fence)")]
    /// A device is writing the buffer again.
    Fenced,
    #[error("the copy thread is gone")]
    /// The copy thread is gone.
    NoWorker,
}

/// Everything that decides a shadow's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    size: Size<i32, BufferCoords>,
    format: Fourcc,
    scale: i32,
    transform: Transform,
}

#[derive(Debug)]
struct Shadow {
    buffer: MemoryRenderBuffer,
    geometry: Geometry,
}

/// A surface's CPU-copy state.
#[derive(Debug, Default)]
struct CopyState {
    shadow: Option<Shadow>,
    /// The surface's current buffer is a copied one: draw it from the shadow.
    active: bool,
    /// Layout of the newest planned copy: the next copy's damage is relative to it. `None`
    /// after a buffer that wasn't copied, which makes the next copy a full one.
    planned: Option<Geometry>,
    /// Copies in commit order: the next to plan, the next to land, and those that came back
    /// early (a later commit without a fence can finish before an earlier fenced one).
    next_seq: u64,
    next_apply: u64,
    arrived: BTreeMap<u64, (Geometry, Result<Readout, CopyError>)>,
    /// Sequence number → the geometry it was planned with, for copies not back yet.
    in_flight: BTreeMap<u64, Geometry>,
}

type CopyData = Mutex<CopyState>;

/// What the pre-commit hook knows of a commit's damage, in buffer coordinates.
#[derive(Debug, Clone)]
pub enum PendingDamage {
    /// These rectangles.
    Rects(Vec<Rectangle<i32, BufferCoords>>),
    /// Surface damage that can't be mapped to the buffer exactly (scale, transform, viewport).
    Whole,
}

/// A planned copy: the job for the worker, and its place in the surface's order.
#[derive(Debug)]
pub struct Planned {
    /// The job for the copy thread.
    pub job: CopyJob,
    /// Its place in the surface's order.
    pub seq: u64,
}

/// Plans the copy of a commit bringing CpuCopy buffer `dmabuf` (pre-commit, in commit order).
/// `id` names the commit's wait. `Err` when the format can't be copied (the surface is then
/// drawn the usual way, and the renderer refuses what it can't read).
pub fn plan(
    surface: &WlSurface,
    dmabuf: &Dmabuf,
    damage: PendingDamage,
    (scale, transform): (i32, Transform),
    id: u64,
) -> Result<Planned, CopyError> {
    let format = dmabuf.format().code;
    let cpp = match crate::import::format::layout(format) {
        Some(l) if l.planes == 1 && dmabuf.num_planes() == 1 => usize::from(l.cpp[0]),
        _ => return Err(CopyError::Format(format)),
    };
    let geometry = Geometry { size: dmabuf.size(), format, scale, transform };
    let full = Rectangle::from_size(geometry.size);
    with_states(surface, |states| {
        let data = states.data_map.get_or_insert_threadsafe(CopyData::default);
        let mut state = data.lock().unwrap_or_else(|e| e.into_inner());
        let rects = match damage {
            PendingDamage::Rects(rects) if state.planned == Some(geometry) => disjoint(rects, full),
            _ => vec![full],
        };
        state.planned = Some(geometry);
        let seq = state.next_seq;
        state.next_seq += 1;
        state.in_flight.insert(seq, geometry);
        Ok(Planned { job: CopyJob { id, dmabuf: dmabuf.clone(), rects, cpp }, seq })
    })
}

/// Whether the CPU copy handles `dmabuf`'s layout (one plane of a known format).
pub fn copyable(dmabuf: &Dmabuf) -> bool {
    crate::import::format::layout(dmabuf.format().code).is_some_and(|l| l.planes == 1) && dmabuf.num_planes() == 1
}

/// A commit of `surface` brought a buffer that isn't copied: the shadow no longer follows the
/// surface's content, so the next copy must be a full one.
pub fn not_copied(surface: &WlSurface) {
    with_states(surface, |states| {
        if let Some(data) = states.data_map.get::<CopyData>() {
            data.lock().unwrap_or_else(|e| e.into_inner()).planned = None;
        }
    });
}

/// Copy `seq` of `surface` came back. Lands it and every later one already back, in order;
/// returns the sequence numbers that landed with the bytes each wrote (errors land as 0).
pub fn job_done(surface: &WlSurface, seq: u64, result: Result<Readout, CopyError>) -> Vec<(u64, u64)> {
    with_states(surface, |states| {
        let Some(data) = states.data_map.get::<CopyData>() else { return Vec::new() };
        let mut state = data.lock().unwrap_or_else(|e| e.into_inner());
        let Some(geometry) = state.in_flight.remove(&seq) else { return Vec::new() };
        state.arrived.insert(seq, (geometry, result));
        let mut landed = Vec::new();
        loop {
            let next = state.next_apply;
            let Some((geometry, result)) = state.arrived.remove(&next) else { break };
            state.next_apply += 1;
            let bytes = match result {
                Ok(readout) => land(&mut state, geometry, &readout),
                Err(err) => {
                    tracing::warn!(%err, "cpu copy failed; the surface keeps its previous content");
                    0
                }
            };
            landed.push((next, bytes));
        }
        landed
    })
}

/// Writes a readout into the shadow (a new one when the layout changed).
fn land(state: &mut CopyState, geometry: Geometry, readout: &Readout) -> u64 {
    if state.shadow.as_ref().map(|s| s.geometry) != Some(geometry) {
        let buffer = MemoryRenderBuffer::new(geometry.format, geometry.size, geometry.scale, geometry.transform, None);
        state.shadow = Some(Shadow { buffer, geometry });
    }
    let Some(shadow) = state.shadow.as_mut() else { return 0 };
    let cpp = match crate::import::format::layout(geometry.format) {
        Some(l) => usize::from(l.cpp[0]),
        None => return 0,
    };
    let stride = geometry.size.w.max(0) as usize * cpp;
    let mut bytes = 0;
    let mut ctx = shadow.buffer.render();
    let _ = ctx.draw(|dst: &mut [u8]| -> Result<Vec<Rectangle<i32, BufferCoords>>, std::convert::Infallible> {
        bytes = scatter(&readout.data, Plane { bytes: dst, offset: 0, stride }, &readout.rects, cpp);
        Ok(readout.rects.clone())
    });
    bytes
}

/// The surface's committed buffer is (`true`) or isn't a copied one: draw it from the shadow
/// or the usual way.
pub fn set_active(surface: &WlSurface, active: bool) {
    with_states(surface, |states| {
        if let Some(data) = states.data_map.get::<CopyData>() {
            data.lock().unwrap_or_else(|e| e.into_inner()).active = active;
        }
    });
}

/// Whether the surface is drawn from its shadow (its current buffer is a copied one).
pub fn is_active(states: &smithay::wayland::compositor::SurfaceData) -> bool {
    states.data_map.get::<CopyData>().is_some_and(|data| {
        let guard = data.lock().unwrap_or_else(|e| e.into_inner());
        guard.active && guard.shadow.is_some()
    })
}

/// Clips `rects` to the buffer and removes overlaps, so no byte is copied (or counted) twice.
fn disjoint(rects: Vec<Rectangle<i32, BufferCoords>>, full: Rectangle<i32, BufferCoords>) -> Vec<Rectangle<i32, BufferCoords>> {
    let mut out: Vec<Rectangle<i32, BufferCoords>> = Vec::new();
    for r in rects.into_iter().filter_map(|r| r.intersection(full)) {
        let new = r.subtract_rects(out.iter().copied());
        out.extend(new.into_iter().filter(|r| !r.is_empty()));
    }
    out
}

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

/// Rows of `r` as (byte offset of the row's first pixel in a plane, row length in bytes).
fn rows(r: &Rectangle<i32, BufferCoords>, offset: usize, stride: usize, cpp: usize) -> impl Iterator<Item = (usize, usize)> {
    let (x, w) = (r.loc.x.max(0) as usize * cpp, r.size.w.max(0) as usize * cpp);
    let ys = r.loc.y.max(0) as usize..(r.loc.y.max(0) + r.size.h.max(0)) as usize;
    ys.map(move |y| (offset + y * stride + x, w))
}

/// Reads the rows of `rects` (pixels of `cpp` bytes) out of `src`, rectangle after rectangle.
/// Rows outside the plane are left out.
pub fn gather(src: &Plane<&[u8]>, rects: &[Rectangle<i32, BufferCoords>], cpp: usize) -> Vec<u8> {
    let total: usize = rects.iter().map(|r| r.size.w.max(0) as usize * cpp * r.size.h.max(0) as usize).sum();
    let mut out = Vec::with_capacity(total);
    for r in rects {
        for (at, len) in rows(r, src.offset, src.stride, cpp) {
            if let Some(row) = src.bytes.get(at..at + len) {
                out.extend_from_slice(row);
            }
        }
    }
    out
}

/// Writes what [`gather`] read into `dst` at the same rectangles; returns the bytes written.
pub fn scatter(data: &[u8], dst: Plane<&mut [u8]>, rects: &[Rectangle<i32, BufferCoords>], cpp: usize) -> u64 {
    let mut read = 0;
    let mut written = 0u64;
    for r in rects {
        for (at, len) in rows(r, dst.offset, dst.stride, cpp) {
            let (Some(from), Some(to)) = (data.get(read..read + len), dst.bytes.get_mut(at..at + len)) else { continue };
            to.copy_from_slice(from);
            read += len;
            written += len as u64;
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_then_scatter_copies_exactly_the_rectangles() {
        let (w, h, cpp) = (16usize, 8usize, 4usize);
        let src: Vec<u8> = (0..w * h * cpp).map(|i| (i % 251) as u8).collect();
        let rects = disjoint(
            vec![
                Rectangle::new((2, 1).into(), (5, 3).into()),
                Rectangle::new((4, 2).into(), (6, 4).into()),
                Rectangle::new((14, 6).into(), (9, 9).into()),
            ],
            Rectangle::from_size((w as i32, h as i32).into()),
        );
        let data = gather(&Plane { bytes: &src[..], offset: 0, stride: w * cpp }, &rects, cpp);
        let mut dst = vec![0u8; w * h * cpp];
        let written = scatter(&data, Plane { bytes: &mut dst[..], offset: 0, stride: w * cpp }, &rects, cpp);
        // 5x3 + (6x4 minus its 3x2 overlap) + the 2x2 left after clipping to the buffer.
        assert_eq!(written, ((15 + 24 - 6 + 4) * cpp) as u64);
        for y in 0..h {
            for x in 0..w {
                let inside = rects.iter().any(|r| r.contains((x as i32, y as i32)));
                let i = (y * w + x) * cpp;
                let want = if inside { &src[i..i + cpp] } else { &[0u8; 4][..] };
                assert_eq!(&dst[i..i + cpp], want, "pixel ({x},{y})");
            }
        }
    }
}
