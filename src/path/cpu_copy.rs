//! CpuCopy: the plan says the renderer must not read a client buffer itself (a CPU renderer and
//! GPU, write-combined or uncached memory; or a renderer that can't import it), so cohere copies
//! it. On each commit the damaged rectangles, and only those, are read through a mapping
//! bracketed by `DMA_BUF_IOCTL_SYNC` (START|READ … END|READ) into a per-surface shadow in
//! ordinary cached memory, which the renderer then composites. Between commits nothing touches
//! the client's buffer.
//!
//! The shadow persists across commits and buffers: wl_surface damage is relative to the
//! surface's previous content, whichever buffer held it, so copying only the damage is exact.
//! A new size or format starts a new shadow with a full copy.
//!
//! The surface still scans out directly where the plan allows it (a `drm` buffer on vkms):
//! [`CopiedSurfaceElement`] draws from the shadow but offers the client buffer to the plane
//! assignment, and [`super::direct::PlanExporter`] takes it only when marked for that device.

use std::sync::Mutex;

use smithay::backend::allocator::dmabuf::{Dmabuf, DmabufSyncFlags};
use smithay::backend::allocator::{Buffer as _, Fourcc};
use smithay::backend::renderer::element::memory::{MemoryRenderBuffer, MemoryRenderBufferRenderElement};
use smithay::backend::renderer::element::{Element, Id, Kind, RenderElement, UnderlyingStorage};
use smithay::backend::renderer::utils::{Buffer, CommitCounter, DamageSet, OpaqueRegions, RendererSurfaceStateUserData};
use smithay::backend::renderer::{ImportMem, Renderer};
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::utils::{Buffer as BufferCoords, Physical, Point, Rectangle, Scale, Size, Transform};
use smithay::wayland::compositor::{with_states, SurfaceData};

/// Why a copy could not be made. The surface shows what its shadow held before (nothing, for a
/// new shadow); a format that can't be copied isn't drawn from a shadow at all.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0} has no single-plane layout cohere can copy")]
    Format(Fourcc),
    #[error("the buffer's plane 0 is smaller than its rows ({need} > {have} bytes)")]
    Size { need: u64, have: u64 },
    #[error("mmap: {0}")]
    Map(rustix::io::Errno),
    #[error("DMA_BUF_IOCTL_SYNC: {0}")]
    Sync(String),
    #[error("a device is writing the buffer again after its commit (a new write fence)")]
    Fenced,
}

/// What one commit's copy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub bytes: u64,
    pub rects: usize,
}

/// A surface's copy of its CpuCopy buffer.
#[derive(Debug)]
struct Shadow {
    buffer: MemoryRenderBuffer,
    format: Fourcc,
    size: Size<i32, BufferCoords>,
    scale: i32,
    transform: Transform,
    /// The renderer-state commit the shadow holds; damage since it is what must be copied.
    commit: CommitCounter,
    /// The surface's current buffer is the copied one (false once a buffer with another plan
    /// is attached: that one is drawn the usual way).
    active: bool,
}

type ShadowData = Mutex<Option<Shadow>>;

/// Stops using the shadow for `surface`: its new buffer isn't a CpuCopy one.
pub fn deactivate(surface: &WlSurface) {
    with_states(surface, |states| {
        if let Some(data) = states.data_map.get::<ShadowData>() {
            if let Some(shadow) = data.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                shadow.active = false;
            }
        }
    });
}

/// Copies the damage of `surface`'s newly committed `dmabuf` into the surface's shadow. Call
/// after smithay's `on_commit_buffer_handler`, which has recorded the commit's damage.
pub fn copy_commit(surface: &WlSurface, dmabuf: &Dmabuf) -> Result<Copied, CopyError> {
    let format = dmabuf.format().code;
    let cpp = match crate::import::format::layout(format) {
        Some(l) if l.planes == 1 && dmabuf.num_planes() == 1 => usize::from(l.cpp[0]),
        _ => {
            deactivate(surface);
            return Err(CopyError::Format(format));
        }
    };
    let size = dmabuf.size();
    with_states(surface, |states| {
        let (commit, scale, transform) = {
            let Some(rs) = states.data_map.get::<RendererSurfaceStateUserData>() else { return Ok(Copied { bytes: 0, rects: 0 }) };
            let rs = rs.lock().unwrap_or_else(|e| e.into_inner());
            (rs.current_commit(), rs.buffer_scale(), rs.buffer_transform())
        };
        let data = states.data_map.get_or_insert_threadsafe(ShadowData::default);
        let mut guard = data.lock().unwrap_or_else(|e| e.into_inner());
        let reuse = guard.as_ref().is_some_and(|s| s.size == size && s.format == format && s.scale == scale && s.transform == transform);
        let since = guard.as_ref().filter(|_| reuse).map(|s| s.commit);
        let full = Rectangle::from_size(size);
        let rects = match since {
            // Damage of the commits since the shadow's: smithay keeps a few; older means all.
            Some(prev) => damage_since(states, prev).unwrap_or_else(|| vec![full]),
            None => vec![full],
        };
        let rects = disjoint(rects, full);
        if !reuse {
            *guard = Some(Shadow {
                buffer: MemoryRenderBuffer::new(format, size, scale, transform, None),
                format,
                size,
                scale,
                transform,
                commit,
                active: true,
            });
        }
        let Some(shadow) = guard.as_mut() else { return Ok(Copied { bytes: 0, rects: 0 }) };
        let bytes = copy_rects(dmabuf, &mut shadow.buffer, &rects, cpp)?;
        shadow.commit = commit;
        shadow.active = true;
        Ok(Copied { bytes, rects: rects.len() })
    })
}

fn damage_since(states: &SurfaceData, commit: CommitCounter) -> Option<Vec<Rectangle<i32, BufferCoords>>> {
    let rs = states.data_map.get::<RendererSurfaceStateUserData>()?;
    let rs = rs.lock().unwrap_or_else(|e| e.into_inner());
    // smithay answers a too-old commit with the whole buffer, which is what we want anyway.
    Some(rs.damage_since(Some(commit)).iter().copied().collect())
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

/// Maps plane 0 from offset 0 (an unaligned plane offset can't be mmapped), brackets the reads
/// with SYNC, copies `rects` row by row and returns the bytes copied.
fn copy_rects(dmabuf: &Dmabuf, shadow: &mut MemoryRenderBuffer, rects: &[Rectangle<i32, BufferCoords>], cpp: usize) -> Result<u64, CopyError> {
    let (Some(fd), Some(offset), Some(stride)) = (dmabuf.handles().next(), dmabuf.offsets().next(), dmabuf.strides().next()) else {
        return Err(CopyError::Format(dmabuf.format().code));
    };
    let (offset, stride) = (offset as usize, stride as usize);
    let height = dmabuf.height() as usize;
    let need = offset as u64 + stride as u64 * height as u64;
    let have = rustix::fs::seek(fd, rustix::fs::SeekFrom::End(0)).map_err(CopyError::Map)?;
    let _ = rustix::fs::seek(fd, rustix::fs::SeekFrom::Start(0));
    if need > have {
        return Err(CopyError::Size { need, have });
    }
    // The commit waited for the buffer's acquire fence. A write fence added since would make
    // SYNC(START) wait for it, on the event loop: refuse instead.
    if matches!(crate::sync::acquire(dmabuf), crate::sync::Acquire::Wait(_)) {
        return Err(CopyError::Fenced);
    }
    let len = need as usize;
    // SAFETY: a fresh shared read-only mapping of `len` bytes, which the fd's size covers; it
    // is only read through the slice below and unmapped before returning.
    let ptr = unsafe {
        rustix::mm::mmap(std::ptr::null_mut(), len, rustix::mm::ProtFlags::READ, rustix::mm::MapFlags::SHARED, fd, 0)
    }
    .map_err(CopyError::Map)?;
    // SAFETY: the mapping above is `len` readable bytes and lives until munmap below.
    let src = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
    let result = (|| {
        dmabuf.sync_plane(0, DmabufSyncFlags::START | DmabufSyncFlags::READ).map_err(|e| CopyError::Sync(e.to_string()))?;
        let dst_stride = shadow_stride(dmabuf.width() as usize, cpp);
        let mut bytes = 0u64;
        let mut ctx = shadow.render();
        let _ = ctx.draw(|dst: &mut [u8]| -> Result<Vec<Rectangle<i32, BufferCoords>>, std::convert::Infallible> {
            let src = Plane { bytes: src, offset, stride };
            let dst = Plane { bytes: dst, offset: 0, stride: dst_stride };
            bytes = copy_damage(&src, dst, rects, cpp);
            Ok(rects.to_vec())
        });
        drop(ctx);
        dmabuf.sync_plane(0, DmabufSyncFlags::END | DmabufSyncFlags::READ).map_err(|e| CopyError::Sync(e.to_string()))?;
        Ok(bytes)
    })();
    // SAFETY: unmaps exactly the mapping made above; `src` is not used after this.
    let _ = unsafe { rustix::mm::munmap(ptr, len) };
    result
}

/// One plane's bytes and row layout.
#[derive(Debug)]
pub struct Plane<B> {
    pub bytes: B,
    pub offset: usize,
    pub stride: usize,
}

/// Copies `rects` (pixels, `cpp` bytes each) row by row from `src` to `dst`, which share
/// coordinates; rows that fall outside either buffer are skipped. Returns the bytes copied.
pub fn copy_damage(src: &Plane<&[u8]>, dst: Plane<&mut [u8]>, rects: &[Rectangle<i32, BufferCoords>], cpp: usize) -> u64 {
    let mut bytes = 0u64;
    for r in rects {
        let (x, w) = (r.loc.x.max(0) as usize * cpp, r.size.w.max(0) as usize * cpp);
        for y in r.loc.y.max(0) as usize..(r.loc.y + r.size.h).max(0) as usize {
            let s = src.offset + y * src.stride + x;
            let d = dst.offset + y * dst.stride + x;
            if let (Some(from), Some(to)) = (src.bytes.get(s..s + w), dst.bytes.get_mut(d..d + w)) {
                to.copy_from_slice(from);
                bytes += w as u64;
            }
        }
    }
    bytes
}

/// A MemoryRenderBuffer's rows are packed (width × bytes per pixel).
fn shadow_stride(width: usize, cpp: usize) -> usize {
    width * cpp
}

/// Draws a CpuCopy surface from its shadow; offers the client's buffer for direct scanout.
#[derive(Debug)]
pub struct CopiedSurfaceElement<R: Renderer> {
    /// The surface's own id, so frame callbacks, presentation feedback and scanout-output
    /// tracking (all keyed by the surface) see this element as the surface.
    id: Id,
    copy: MemoryRenderBufferRenderElement<R>,
    buffer: Option<Buffer>,
}

/// The element for a surface whose current buffer is copied, or `None` to draw it the usual way.
pub fn element<R>(renderer: &mut R, surface: &WlSurface, states: &SurfaceData, location: Point<f64, Physical>) -> Option<CopiedSurfaceElement<R>>
where
    R: Renderer + ImportMem,
    R::TextureId: Send + Clone + 'static,
{
    let data = states.data_map.get::<ShadowData>()?;
    let guard = data.lock().unwrap_or_else(|e| e.into_inner());
    let shadow = guard.as_ref().filter(|s| s.active)?;
    let rs = states.data_map.get::<RendererSurfaceStateUserData>()?;
    let rs = rs.lock().unwrap_or_else(|e| e.into_inner());
    let view = rs.view()?;
    let buffer = rs.buffer().cloned();
    let copy = MemoryRenderBufferRenderElement::from_buffer(renderer, location, &shadow.buffer, None, Some(view.src), Some(view.dst), Kind::Unspecified)
        .map_err(|err| tracing::warn!(%err, "copied surface: texture import failed"))
        .ok()?;
    Some(CopiedSurfaceElement { id: Id::from_wayland_resource(surface), copy, buffer })
}

impl<R: Renderer> Element for CopiedSurfaceElement<R> {
    fn id(&self) -> &Id {
        &self.id
    }
    fn current_commit(&self) -> CommitCounter {
        self.copy.current_commit()
    }
    fn src(&self) -> Rectangle<f64, BufferCoords> {
        self.copy.src()
    }
    fn transform(&self) -> Transform {
        self.copy.transform()
    }
    fn geometry(&self, scale: Scale<f64>) -> Rectangle<i32, Physical> {
        self.copy.geometry(scale)
    }
    fn damage_since(&self, scale: Scale<f64>, commit: Option<CommitCounter>) -> DamageSet<i32, Physical> {
        self.copy.damage_since(scale, commit)
    }
    fn opaque_regions(&self, scale: Scale<f64>) -> OpaqueRegions<i32, Physical> {
        self.copy.opaque_regions(scale)
    }
    fn alpha(&self) -> f32 {
        self.copy.alpha()
    }
    fn kind(&self) -> Kind {
        self.copy.kind()
    }
}

impl<R> RenderElement<R> for CopiedSurfaceElement<R>
where
    R: Renderer,
    MemoryRenderBufferRenderElement<R>: RenderElement<R>,
{
    fn draw(
        &self,
        frame: &mut R::Frame<'_, '_>,
        src: Rectangle<f64, BufferCoords>,
        dst: Rectangle<i32, Physical>,
        damage: &[Rectangle<i32, Physical>],
        opaque_regions: &[Rectangle<i32, Physical>],
    ) -> Result<(), R::Error> {
        self.copy.draw(frame, src, dst, damage, opaque_regions)
    }

    fn underlying_storage(&self, _renderer: &mut R) -> Option<UnderlyingStorage<'_>> {
        // Only the plane exporter looks at this, and it takes the buffer only where the plan
        // allows direct scanout; everywhere else the element is drawn from the copy.
        self.buffer.as_ref().map(UnderlyingStorage::Wayland)
    }
}
