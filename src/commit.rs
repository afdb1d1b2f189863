//! What happens between a client's `wl_surface.commit` and the commit taking effect.
//!
//! A commit that brings a dma-buf may have to wait (a smithay commit blocker) for two things,
//! in this order:
//! 1. the buffer's acquire fence, when a device is still writing it ([`crate::sync::acquire`]);
//! 2. its CPU copy, when the plan says CpuCopy ([`crate::path::cpu_copy`]): the copy thread
//!    reads the damage, and the event loop writes it into the surface's shadow.
//!
//! Only then is the commit applied, so every path reads finished pixels, and what is drawn
//! matches the frame callbacks and presentation feedback of that commit. The waits run on the
//! event loop (calloop sources) and on the copy thread, never blocking either: a fence that
//! never signals stalls only its own surface, and a surface that goes takes its waits along.

use smithay::reexports::calloop::generic::Generic;
use smithay::reexports::calloop::{Interest, Mode, PostAction, RegistrationToken};
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::reexports::wayland_server::{Client, Resource, Weak};
use smithay::utils::Rectangle;
use smithay::wayland::compositor::{add_blocker, with_states, BufferAssignment, CompositorHandler, Damage, SurfaceAttributes};
use smithay::wayland::viewporter::ViewportCachedState;

use crate::backend::Backend;
use crate::coherency::Path;
use crate::path::cpu_copy::{self, CopyDone, CopyError, CopyJob, PendingDamage};
use crate::sync::{Acquire, FenceBlocker, FenceFd};
use crate::State;

/// A commit held by cohere.
#[derive(Debug)]
pub(crate) struct CommitWait {
    surface: Weak<WlSurface>,
    blocker: FenceBlocker,
    client: Client,
    /// The surface's copy sequence number, when the commit waits for a CPU copy.
    copy_seq: Option<u64>,
    /// The acquire fence's event source while the commit waits for the fence.
    pub(crate) fence_source: Option<RegistrationToken>,
}

impl CommitWait {
    pub(crate) fn surface_alive(&self) -> bool {
        self.surface.upgrade().is_ok_and(|s| s.is_alive())
    }
}

/// The pending state's new dma-buf, its damage in buffer coordinates when that is exact, and
/// the buffer scale and transform.
struct Pending {
    dmabuf: Option<smithay::backend::allocator::dmabuf::Dmabuf>,
    damage: PendingDamage,
    scale: i32,
    transform: smithay::utils::Transform,
}

fn pending(surface: &WlSurface) -> Option<Pending> {
    with_states(surface, |states| {
        let viewport = {
            let mut vp = states.cached_state.get::<ViewportCachedState>();
            let vp = vp.pending();
            vp.src.is_some() || vp.dst.is_some()
        };
        let mut attrs = states.cached_state.get::<SurfaceAttributes>();
        let attrs = attrs.pending();
        let buffer = match attrs.buffer.as_ref() {
            Some(BufferAssignment::NewBuffer(buffer)) => buffer,
            _ => return None,
        };
        let identity = attrs.buffer_scale == 1 && attrs.buffer_transform == smithay::utils::Transform::Normal.into() && !viewport;
        let mut rects = Vec::new();
        let mut exact = true;
        for d in &attrs.damage {
            match d {
                Damage::Buffer(r) => rects.push(*r),
                // Surface and buffer coordinates coincide without scale, transform or viewport.
                Damage::Surface(r) if identity => rects.push(Rectangle::new((r.loc.x, r.loc.y).into(), (r.size.w, r.size.h).into())),
                Damage::Surface(_) => exact = false,
            }
        }
        Some(Pending {
            dmabuf: smithay::wayland::dmabuf::get_dmabuf(buffer).ok().cloned(),
            damage: if exact { PendingDamage::Rects(rects) } else { PendingDamage::Whole },
            scale: attrs.buffer_scale,
            transform: attrs.buffer_transform.into(),
        })
    })
}

impl<B: Backend> State<B> {
    /// The pre-commit hook: decides what the commit waits for and starts the waits.
    pub(crate) fn pre_commit(&mut self, surface: &WlSurface) {
        let Some(pending) = pending(surface) else { return };
        let Some(dmabuf) = pending.dmabuf else {
            cpu_copy::not_copied(surface);
            return;
        };
        let copied = self.copied(&dmabuf);
        if !copied {
            cpu_copy::not_copied(surface);
        }
        let fence = crate::sync::acquire(&dmabuf);
        if !copied && matches!(fence, Acquire::Ready) {
            return;
        }
        let Some(client) = surface.client() else { return };
        let id = self.core.next_wait_id();
        let job = if copied {
            match cpu_copy::plan(surface, &dmabuf, pending.damage, (pending.scale, pending.transform), id) {
                Ok(planned) => Some((planned.job, planned.seq)),
                Err(err) => {
                    tracing::warn!(%err, "no cpu copy; the surface is drawn the usual way");
                    cpu_copy::not_copied(surface);
                    None
                }
            }
        } else {
            None
        };
        if job.is_none() && matches!(fence, Acquire::Ready) {
            return;
        }
        let blocker = FenceBlocker::default();
        let copy_seq = job.as_ref().map(|(_, seq)| *seq);
        let wait = CommitWait { surface: surface.downgrade(), blocker: blocker.clone(), client, copy_seq, fence_source: None };
        self.core.commit_waits.insert(id, wait);
        let job = job.map(|(job, _)| job);
        match fence {
            Acquire::Ready => {
                if let Some(job) = job {
                    self.submit_copy(job);
                }
            }
            Acquire::Wait(fd) => {
                let source = Generic::new(FenceFd(fd), Interest::READ, Mode::Level);
                let mut job = job;
                let inserted = self.core.loop_handle.insert_source(source, move |_, _, state: &mut State<B>| {
                    if let Some(wait) = state.core.commit_waits.get_mut(&id) {
                        wait.fence_source = None;
                    }
                    match job.take() {
                        Some(job) => state.submit_copy(job),
                        None => state.release_wait(id),
                    }
                    Ok(PostAction::Remove)
                });
                match inserted {
                    Ok(token) => {
                        self.core.counters.fence_waits += 1;
                        if let Some(wait) = self.core.commit_waits.get_mut(&id) {
                            wait.fence_source = Some(token);
                        }
                        tracing::debug!(surface = %surface.id(), "commit held until its buffer's acquire fence signals");
                    }
                    Err(err) => {
                        tracing::warn!(%err, "cannot watch an acquire fence; the commit goes ahead");
                        self.core.commit_waits.remove(&id);
                        return;
                    }
                }
            }
        }
        add_blocker(surface, blocker);
    }

    fn submit_copy(&mut self, job: CopyJob) {
        let rejected = match &self.core.copy_worker {
            Some(worker) => worker.submit(job).err(),
            None => Some(job),
        };
        if let Some(job) = rejected {
            self.copy_done(CopyDone { id: job.id, result: Err(CopyError::NoWorker) });
        }
    }

    /// A copy came back from the copy thread: land it (and any later ones of the same surface
    /// that were waiting for it) and let those commits through.
    pub(crate) fn copy_done(&mut self, done: CopyDone) {
        let Some(wait) = self.core.commit_waits.get(&done.id) else { return };
        let (Some(seq), Ok(surface)) = (wait.copy_seq, wait.surface.upgrade()) else {
            self.release_wait(done.id);
            return;
        };
        for (seq, bytes) in cpu_copy::job_done(&surface, seq, done.result) {
            if bytes > 0 {
                self.core.surface_copied(&surface, bytes);
                tracing::trace!(bytes, "cpu copy landed");
            }
            let id =
                self.core.commit_waits.iter().find(|(_, w)| w.copy_seq == Some(seq) && w.surface == surface.downgrade()).map(|(id, _)| *id);
            if let Some(id) = id {
                self.release_wait(id);
            }
        }
    }

    /// Lets commit `id` through.
    fn release_wait(&mut self, id: u64) {
        let Some(wait) = self.core.commit_waits.remove(&id) else { return };
        wait.blocker.release();
        let dh = self.core.display_handle.clone();
        self.client_compositor_state(&wait.client).blocker_cleared(self, &dh);
    }

    /// The executors' part of an applied commit: a surface whose buffer is copied is drawn from
    /// its shadow, any other the usual way.
    pub(crate) fn committed(&mut self, surface: &WlSurface) {
        let copied = crate::import::surface_dmabuf(surface).is_some_and(|d| self.copied(&d));
        cpu_copy::set_active(surface, copied);
    }

    /// The plan has the renderer read `dmabuf` through a CPU copy.
    fn copied(&self, dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf) -> bool {
        self.backend.coherency().plans.render_path(dmabuf) == Some(Path::CpuCopy)
    }
}
