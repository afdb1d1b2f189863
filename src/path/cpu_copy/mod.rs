//! CpuCopy: the plan says the renderer must not read a client buffer itself (a CPU renderer and
//! GPU, write-combined or uncached memory; or a renderer that can't import it), so cohere copies
//! it. Each commit's damaged rectangles, and only those, are copied on the copy thread
//! ([`worker`]) through a mapping bracketed by `DMA_BUF_IOCTL_SYNC`, straight into the surface's
//! shadow in ordinary cached memory, which the renderer composites: each damaged byte crosses
//! memory once ([`rows`]). The commit waits (a commit blocker) until its copy is in the shadow,
//! so frame callbacks and presentation feedback follow the pixels. Between commits nothing
//! touches the client's buffer.
//!
//! The shadow persists across commits and buffers: wl_surface damage is relative to the
//! surface's previous content, whichever buffer held it, so copying only the damage is exact
//! as long as copies run in commit order. They do: a surface's copies go to the one copy
//! thread in commit order ([`ready`] holds back a copy whose fence signalled before an earlier
//! one's), and the thread runs them first in, first out. A new size, format, scale or
//! transform copies all into a new shadow, which is drawn from once that copy is done; a
//! surface that showed a non-copied buffer in between copies all too.
//!
//! A copy writes the shadow while the surface's previous commit is still current. The shadow's
//! layout is the same (a new layout gets a new shadow), so a frame drawn meanwhile shows the
//! newer pixels a little early, never a mix: the copy holds the shadow's lock until it is done,
//! and a frame that draws the surface meanwhile waits for it.
//!
//! The surface still scans out directly where the plan allows it (a `drm` buffer on vkms):
//! [`CopiedSurfaceElement`] draws from the shadow but offers the client buffer to the plane
//! assignment, and [`super::direct::ScanoutFilter`] lets it through only where the plan allows.

mod element;
pub mod rows;
pub mod shadow;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::Mutex;

use smithay::backend::allocator::dmabuf::Dmabuf;
use smithay::backend::allocator::{Buffer as _, Fourcc};
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::utils::{Buffer as BufferCoords, Rectangle, Size, Transform};
use smithay::wayland::compositor::with_states;

pub use element::{element, CopiedSurfaceElement};
pub use rows::{copy_rects, Plane, Reads};
pub use shadow::ShadowBuffer;
pub use worker::{CopyDone, CopyJob, CopyWorker, Done, Job};

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

/// A shadow: cached memory the renderer draws a copied surface from.
#[derive(Debug, Clone)]
struct Shadow {
    /// Shared with the copy thread while it writes a copy.
    buffer: ShadowBuffer,
    geometry: Geometry,
    /// Which shadow of the surface this is (a new layout makes a new one).
    generation: u64,
}

/// A surface's CPU-copy state.
#[derive(Debug, Default)]
struct CopyState {
    /// The shadow drawn from: the one the newest finished copy wrote.
    shadow: Option<Shadow>,
    /// The shadow the newest planned copy writes (a new one when the layout changed).
    target: Option<Shadow>,
    /// The surface's current buffer is a copied one: draw it from the shadow.
    active: bool,
    /// Layout of the newest planned copy: the next copy's damage is relative to it. `None`
    /// after a buffer that wasn't copied, which makes the next copy a full one.
    planned: Option<Geometry>,
    /// Copies in commit order: the next to plan, and the next to hand to the copy thread.
    next_seq: u64,
    next_submit: u64,
    /// Copies whose fence signalled before an earlier copy's (`None`: given up, skipped).
    ready: BTreeMap<u64, Option<CopyJob>>,
    /// Copies planned and not done, with the shadow each writes.
    in_flight: BTreeMap<u64, Shadow>,
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

/// Bytes per pixel of `dmabuf`, if the CPU copy handles its layout: one plane of a format whose
/// pixel size smithay's memory buffers know as well.
fn copy_cpp(dmabuf: &Dmabuf) -> Option<usize> {
    let format = dmabuf.format().code;
    let cpp = match crate::import::format::layout(format) {
        Some(l) if l.planes == 1 && dmabuf.num_planes() == 1 => usize::from(l.cpp[0]),
        _ => return None,
    };
    // Renderers that upload the shadow (`ImportMem`) panic on a format of unknown pixel size.
    (smithay::backend::allocator::format::get_bpp(format) == Some(cpp * 8)).then_some(cpp)
}

/// Plans the copy of a commit bringing CpuCopy buffer `dmabuf` (pre-commit, in commit order).
/// `id` names the commit's wait; `reads` says how to read the buffer's memory. `Err` when the
/// format can't be copied (the surface is then drawn the usual way, and the renderer refuses
/// what it can't read).
pub fn plan(
    surface: &WlSurface,
    dmabuf: &Dmabuf,
    damage: PendingDamage,
    (scale, transform): (i32, Transform),
    id: u64,
    reads: Reads,
) -> Result<Planned, CopyError> {
    let format = dmabuf.format().code;
    let cpp = copy_cpp(dmabuf).ok_or(CopyError::Format(format))?;
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
        let target = match &state.target {
            Some(target) if target.geometry == geometry => target.clone(),
            previous => {
                let generation = previous.as_ref().map_or(0, |t| t.generation + 1);
                let buffer = ShadowBuffer::new(format, geometry.size, cpp, scale, transform);
                let target = Shadow { buffer, geometry, generation };
                state.target = Some(target.clone());
                target
            }
        };
        let seq = state.next_seq;
        state.next_seq += 1;
        let job = CopyJob { id, seq, dmabuf: dmabuf.clone(), rects, cpp, reads, target: target.buffer.clone() };
        state.in_flight.insert(seq, target);
        Ok(Planned { job, seq })
    })
}

/// Whether the CPU copy handles `dmabuf`'s layout (one plane of a known format).
pub fn copyable(dmabuf: &Dmabuf) -> bool {
    copy_cpp(dmabuf).is_some()
}

/// Copy `seq` of `surface` may run (its commit's fence signalled), or, given `None`, won't run
/// at all. Returns the copies that may go to the copy thread now, in commit order: this one
/// and later ones that were ready already, once every earlier copy has gone.
pub fn ready(surface: &WlSurface, seq: u64, job: Option<CopyJob>) -> Vec<CopyJob> {
    with_states(surface, |states| {
        let Some(data) = states.data_map.get::<CopyData>() else { return Vec::new() };
        let mut state = data.lock().unwrap_or_else(|e| e.into_inner());
        if job.is_none() {
            state.in_flight.remove(&seq);
        }
        state.ready.insert(seq, job);
        let mut go = Vec::new();
        loop {
            let next = state.next_submit;
            let Some(job) = state.ready.remove(&next) else { break };
            state.next_submit += 1;
            go.extend(job);
        }
        go
    })
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

/// Copy `seq` of `surface` is done, having copied `result` bytes: the shadow it wrote is the
/// one to draw from. Returns the bytes copied (0 after an error).
pub fn job_done(surface: &WlSurface, seq: u64, result: Result<u64, CopyError>) -> u64 {
    with_states(surface, |states| {
        let Some(data) = states.data_map.get::<CopyData>() else { return 0 };
        let mut state = data.lock().unwrap_or_else(|e| e.into_inner());
        let Some(written) = state.in_flight.remove(&seq) else { return 0 };
        match result {
            Ok(bytes) => {
                if state.shadow.as_ref().map(|s| s.generation) != Some(written.generation) {
                    state.shadow = Some(written);
                }
                bytes
            }
            Err(err) => {
                tracing::warn!(%err, "cpu copy failed; the surface keeps its previous content");
                // The shadow missed this damage: the next copy must be a full one.
                state.planned = None;
                0
            }
        }
    })
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
