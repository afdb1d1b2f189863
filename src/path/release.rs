//! When a client buffer stops being read, per path, and telling the client.
//!
//! Every applied commit of a dma-buf is an *attach*. It stays in use while something may still
//! read it:
//! - it is the surface's current buffer and the renderer reads the buffer itself (Composite),
//!   or it may go on a plane (Direct, DirectWithMaintenance: a copied buffer can too);
//! - it is on a plane of a frame queued to a display, or of the frame a display shows now.
//!
//! A CpuCopy attach that can't go on a plane is done as soon as its copy landed (before the
//! commit even applies). When nothing uses an attach any more it is released: a syncobj client's
//! release point is signalled; an implicit-sync client gets `wl_buffer.release` from smithay when
//! its own references go (the same moments for Composite and scanout), except after a CPU copy,
//! where cohere sends it at once (see [`Releases::applied`]). Releases are counted per path with
//! how long each buffer was held.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use smithay::backend::renderer::utils::Buffer;
use smithay::output::Output;
use smithay::reexports::wayland_server::backend::ObjectId;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::reexports::wayland_server::{Resource, Weak};

use smithay::backend::renderer::sync::SyncPoint as RenderFence;

use crate::sync::syncobj::SyncPoint;

/// How a released buffer was consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum ReleasePath {
    /// Only its CPU copy was read.
    CpuCopy,
    /// The renderer read it.
    Composite,
    /// A display scanned it out.
    Direct,
    /// A display scanned it out after cache maintenance.
    DirectWithMaintenance,
}

/// Releases on one path and how long their buffers were held (applied → released).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReleaseCounter {
    /// Buffers released.
    pub releases: u64,
    /// Buffers released through their syncobj release point (the rest got wl_buffer.release).
    pub release_points: u64,
    /// Microseconds they were held, summed.
    pub held_total_us: u64,
    /// The longest hold.
    pub held_max_us: u64,
}

/// What an attach's buffer goes through, decided at apply time from its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachKind {
    /// The renderer reads a CPU copy, never the buffer.
    pub copied: bool,
    /// The plan lets a display read it directly: with maintenance or without.
    pub scanout: Option<ReleasePath>,
}

#[derive(Debug)]
struct Attach {
    surface: Option<Weak<WlSurface>>,
    /// The buffer, to write a pending render's read fence into (implicit sync).
    dmabuf: Option<smithay::backend::allocator::dmabuf::Dmabuf>,
    /// The client's release point (syncobj clients).
    release: Option<SyncPoint>,
    /// The client uses explicit sync: it learns of the release only from its release point.
    explicit: bool,
    kind: AttachKind,
    /// It is its surface's current buffer.
    current: bool,
    /// Frames, queued or on screen, that have it on a plane.
    planes: u32,
    was_on_plane: bool,
    applied: Instant,
}

impl Attach {
    fn in_use(&self) -> bool {
        // A copied buffer is read again only if it can go on a plane.
        let current_reads = self.current && (!self.kind.copied || self.kind.scanout.is_some());
        current_reads || self.planes > 0
    }

    fn path(&self) -> ReleasePath {
        match (self.was_on_plane, self.kind.scanout, self.kind.copied) {
            (true, Some(path), _) => path,
            (true, None, _) => ReleasePath::Direct,
            (false, _, true) => ReleasePath::CpuCopy,
            (false, _, false) => ReleasePath::Composite,
        }
    }
}

/// The attaches of every surface and the frames that show them.
#[derive(Debug, Default)]
pub struct Releases {
    attaches: HashMap<u64, Attach>,
    next: u64,
    /// Each surface's current attach.
    current: HashMap<ObjectId, u64>,
    /// Per output: attaches on planes of the queued frame, and of the frame on screen.
    queued: HashMap<Output, Vec<u64>>,
    on_screen: HashMap<Output, Vec<u64>>,
    /// smithay buffers of attaches cohere released early (implicit sync, after a CPU copy), by
    /// wl_buffer: holding one keeps smithay from sending a second, late release for that
    /// attach. The next early release of the same wl_buffer replaces it.
    retained: HashMap<ObjectId, Buffer>,
    /// The newest composition's fence, while the renderer may still be reading (a GPU whose
    /// fence went to the display as IN_FENCE_FD instead of being waited for).
    render_fence: Option<RenderFence>,
    /// Syncobj releases held back until the render fence they wait for has signalled.
    deferred: Vec<(Attach, RenderFence)>,
    /// Releases per path.
    pub counters: BTreeMap<ReleasePath, ReleaseCounter>,
}

impl Releases {
    /// A commit of `surface` with a dma-buf was applied. `buffer` is smithay's handle of it
    /// (from the surface's renderer state); `release` the syncobj client's release point.
    pub fn applied(
        &mut self,
        surface: &WlSurface,
        buffer: Option<&Buffer>,
        dmabuf: Option<smithay::backend::allocator::dmabuf::Dmabuf>,
        release: Option<SyncPoint>,
        kind: AttachKind,
    ) {
        self.not_current(&surface.id());
        self.next += 1;
        let id = self.next;
        let attach = Attach {
            surface: Some(surface.downgrade()),
            dmabuf,
            explicit: release.is_some(),
            release,
            kind,
            current: true,
            planes: 0,
            was_on_plane: false,
            applied: Instant::now(),
        };
        let early = !attach.in_use();
        self.attaches.insert(id, attach);
        self.current.insert(surface.id(), id);
        if early {
            // Its copy landed before the commit applied: the client may have it back now.
            let implicit = self.attaches.get(&id).is_some_and(|a| a.release.is_none());
            if let (true, Some(buffer)) = (implicit, buffer) {
                buffer.release();
                if let Some(previous) = self.retained.insert(buffer.id(), buffer.clone()) {
                    // Its drop may send the release of an earlier attach: the buffer is free
                    // now, so that is correct too.
                    drop(previous);
                }
            }
            self.release(id);
        }
    }

    /// `surface` committed something other than a dma-buf (or was destroyed).
    pub fn not_current(&mut self, surface: &ObjectId) {
        if let Some(id) = self.current.remove(surface) {
            if let Some(a) = self.attaches.get_mut(&id) {
                a.current = false;
            }
            self.release_if_done(id);
        }
    }

    /// The current attach of `surface`, if it has one.
    pub fn current_of(&self, surface: &WlSurface) -> Option<u64> {
        self.current.get(&surface.id()).copied()
    }

    /// A frame with `attaches` on planes was queued to `output`.
    pub fn frame_queued(&mut self, output: &Output, attaches: Vec<u64>) {
        for id in &attaches {
            if let Some(a) = self.attaches.get_mut(id) {
                a.planes += 1;
                a.was_on_plane = true;
            }
        }
        if let Some(previous) = self.queued.insert(output.clone(), attaches) {
            // A queued frame replaced before it flipped never reached the screen.
            self.unref(previous);
        }
    }

    /// `output`'s queued frame is on screen now: the previous one's planes are free.
    pub fn frame_shown(&mut self, output: &Output) {
        let shown = self.queued.remove(output).unwrap_or_default();
        if let Some(previous) = self.on_screen.insert(output.clone(), shown) {
            self.unref(previous);
        }
    }

    /// `output` went away (hotplug, session end).
    pub fn output_gone(&mut self, output: &Output) {
        for frame in [self.queued.remove(output), self.on_screen.remove(output)].into_iter().flatten() {
            self.unref(frame);
        }
    }

    /// Surfaces that are gone stop holding their attaches; wl_buffers that are gone drop their
    /// retained handle.
    pub fn prune(&mut self) {
        let dead: Vec<ObjectId> = self
            .current
            .iter()
            .filter(|(_, id)| {
                let alive = |a: &Attach| a.surface.as_ref().and_then(|w| w.upgrade().ok()).is_some_and(|s| s.is_alive());
                !self.attaches.get(id).is_some_and(alive)
            })
            .map(|(s, _)| s.clone())
            .collect();
        for surface in dead {
            self.not_current(&surface);
        }
        self.retained.retain(|_, b| b.is_alive());
    }

    fn unref(&mut self, frame: Vec<u64>) {
        for id in frame {
            if let Some(a) = self.attaches.get_mut(&id) {
                a.planes = a.planes.saturating_sub(1);
            }
            self.release_if_done(id);
        }
    }

    fn release_if_done(&mut self, id: u64) {
        if self.attaches.get(&id).is_some_and(|a| !a.in_use()) {
            self.release(id);
        }
    }

    /// A composition was submitted; `fence` signals when the renderer has read everything it
    /// needed (`None`: it already has).
    pub fn rendered(&mut self, fence: Option<RenderFence>) {
        self.render_fence = fence.filter(|f| !f.is_reached());
        self.poll_deferred();
    }

    /// Releases whose render fence has signalled since.
    pub fn poll_deferred(&mut self) {
        if self.render_fence.as_ref().is_some_and(|f| f.is_reached()) {
            self.render_fence = None;
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred).into_iter().partition(|(_, f)| f.is_reached());
        self.deferred = waiting;
        for (attach, _) in done {
            self.finish(attach);
        }
    }

    fn release(&mut self, id: u64) {
        if let Some(attach) = self.attaches.remove(&id) {
            self.release_attach(attach);
        }
    }

    fn release_attach(&mut self, attach: Attach) {
        // The renderer read it and may still be reading: the release waits for its fence.
        let read_by_renderer = attach.path() == ReleasePath::Composite;
        if let Some(fence) = self.render_fence.clone().filter(|f| read_by_renderer && !f.is_reached()) {
            match (attach.explicit, &attach.dmabuf) {
                (true, _) => {
                    self.deferred.push((attach, fence));
                    return;
                }
                // Implicit sync: smithay's wl_buffer.release goes now, so the read goes into
                // the buffer as a fence the client's next write waits for.
                (false, Some(dmabuf)) => write_read_fence(dmabuf, &fence),
                (false, None) => {}
            }
        }
        self.finish(attach);
    }

    fn finish(&mut self, attach: Attach) {
        let held = attach.applied.elapsed();
        let c = self.counters.entry(attach.path()).or_default();
        c.releases += 1;
        let us = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
        c.held_total_us = c.held_total_us.saturating_add(us);
        c.held_max_us = c.held_max_us.max(us);
        if let Some(point) = &attach.release {
            c.release_points += 1;
            if let Err(err) = point.signal() {
                tracing::warn!(%err, "signalling a release point");
            }
        }
        tracing::trace!(path = ?attach.path(), held_us = us, "buffer released");
    }

    /// Attaches not released yet.
    pub fn pending(&self) -> usize {
        self.attaches.len() + self.deferred.len()
    }

    /// The mean time buffers on `path` were held.
    pub fn mean_hold(&self, path: ReleasePath) -> Option<Duration> {
        let c = self.counters.get(&path)?;
        (c.releases > 0).then(|| Duration::from_micros(c.held_total_us / c.releases))
    }
}

/// DMA_BUF_IOCTL_IMPORT_SYNC_FILE of a render's fence (as a read) into every plane's dma-buf.
fn write_read_fence(dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf, fence: &RenderFence) {
    let Some(fd) = fence.export() else {
        tracing::debug!("the render fence can't be exported; waiting for it instead");
        let _ = fence.wait();
        return;
    };
    let sync_file = crate::sync::SyncFile::from_fd(fd);
    for plane in dmabuf.handles() {
        if let Err(err) = crate::sync::import_sync_file(plane, &sync_file, crate::sync::DmabufAccess::Read) {
            tracing::warn!(%err, "writing the render's read fence into a released buffer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A render fence the test signals.
    #[derive(Debug, Default)]
    struct TestFence(Arc<AtomicBool>);

    impl smithay::backend::renderer::sync::Fence for TestFence {
        fn is_signaled(&self) -> bool {
            self.0.load(Ordering::Acquire)
        }
        fn wait(&self) -> Result<(), smithay::backend::renderer::sync::Interrupted> {
            Ok(())
        }
        fn is_exportable(&self) -> bool {
            false
        }
        fn export(&self) -> Option<std::os::fd::OwnedFd> {
            None
        }
    }

    fn attach(path: ReleasePath) -> Attach {
        let kind = match path {
            ReleasePath::CpuCopy => AttachKind { copied: true, scanout: None },
            _ => AttachKind { copied: false, scanout: None },
        };
        // An explicit-sync client's attach, without a real release point (no device here).
        Attach {
            surface: None,
            dmabuf: None,
            release: None,
            explicit: true,
            kind,
            current: false,
            planes: 0,
            was_on_plane: false,
            applied: Instant::now(),
        }
    }

    /// A composited buffer of a syncobj client is released only when the render that read it
    /// has finished; a copied one at once; with no render in flight, at once too.
    #[test]
    fn a_composited_release_waits_for_the_render_fence() {
        let mut releases = Releases::default();
        let signalled = Arc::new(AtomicBool::new(false));
        releases.rendered(Some(RenderFence::from(TestFence(signalled.clone()))));
        // A deferred attach isn't counted until its fence signals.
        releases.release_attach(attach(ReleasePath::Composite));
        releases.release_attach(attach(ReleasePath::CpuCopy));
        let count = |r: &Releases, p| r.counters.get(&p).map_or(0, |c| c.releases);
        assert_eq!((count(&releases, ReleasePath::Composite), count(&releases, ReleasePath::CpuCopy)), (0, 1));
        assert_eq!(releases.pending(), 1);
        releases.poll_deferred();
        assert_eq!(count(&releases, ReleasePath::Composite), 0, "the fence hasn't signalled");
        signalled.store(true, Ordering::Release);
        releases.poll_deferred();
        assert_eq!((count(&releases, ReleasePath::Composite), releases.pending()), (1, 0));
        // No render in flight: released at once.
        releases.rendered(None);
        releases.release_attach(attach(ReleasePath::Composite));
        assert_eq!(count(&releases, ReleasePath::Composite), 2);
    }
}
