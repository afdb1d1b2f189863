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
use crate::path::cpu_copy::{self, CopyDone, CopyError, Done, Job, PendingDamage};
use crate::path::maintenance::{MaintainDone, MaintainJob};
use crate::path::release::{AttachKind, ReleasePath};
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

/// Whether the commit being applied to `surface` attached a buffer (call before smithay's
/// buffer handler takes it).
pub(crate) fn attached(surface: &WlSurface) -> bool {
    with_states(surface, |states| {
        matches!(states.cached_state.get::<SurfaceAttributes>().current().buffer, Some(BufferAssignment::NewBuffer(_)))
    })
}

impl<B: Backend> State<B> {
    /// The pre-commit hook: decides what the commit waits for and starts the waits.
    pub(crate) fn pre_commit(&mut self, surface: &WlSurface) {
        // A syncobj client's commit must have exactly the points the protocol asks for.
        if let Err(error) = crate::sync::explicit::validate_commit(surface) {
            crate::sync::explicit::post(error);
            return;
        }
        let Some(pending) = pending(surface) else { return };
        let Some(dmabuf) = pending.dmabuf else {
            cpu_copy::not_copied(surface);
            return;
        };
        let copied = self.copied(&dmabuf);
        if !copied {
            cpu_copy::not_copied(surface);
        }
        // A copy brackets its reads with SYNC, which is the maintenance too.
        let maintained = !copied && self.maintained(&dmabuf);
        // A syncobj client's acquire point replaces the buffer's implicit fence.
        let fence = match crate::sync::explicit::pending_acquire(surface) {
            Some(point) => crate::sync::acquire_point(&point),
            None => crate::sync::acquire(&dmabuf),
        };
        if !copied && !maintained && matches!(fence, Acquire::Ready) {
            return;
        }
        let Some(client) = surface.client() else { return };
        let id = self.core.next_wait_id();
        let (job, copy_seq) = if copied {
            match cpu_copy::plan(surface, &dmabuf, pending.damage, (pending.scale, pending.transform), id) {
                Ok(planned) => (Some(Job::Copy(planned.job)), Some(planned.seq)),
                Err(err) => {
                    tracing::warn!(%err, "no cpu copy; the surface is drawn the usual way");
                    cpu_copy::not_copied(surface);
                    (None, None)
                }
            }
        } else if maintained {
            (Some(Job::Maintain(MaintainJob { id, dmabuf: dmabuf.clone() })), None)
        } else {
            (None, None)
        };
        if job.is_none() && matches!(fence, Acquire::Ready) {
            return;
        }
        let blocker = FenceBlocker::default();
        let wait = CommitWait { surface: surface.downgrade(), blocker: blocker.clone(), client, copy_seq, fence_source: None };
        self.core.commit_waits.insert(id, wait);
        match fence {
            Acquire::Ready => {
                if let Some(job) = job {
                    self.submit(job);
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
                        Some(job) => state.submit(job),
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

    fn submit(&mut self, job: Job) {
        let rejected = match &self.core.copy_worker {
            Some(worker) => worker.submit(job).err(),
            None => Some(job),
        };
        match rejected {
            Some(Job::Copy(job)) => self.copy_done(CopyDone { id: job.id, result: Err(CopyError::NoWorker) }),
            Some(Job::Maintain(job)) => self.maintained_done(MaintainDone { id: job.id, result: Err("the copy thread is gone".into()) }),
            None => {}
        }
    }

    /// The copy thread finished a job.
    pub(crate) fn job_done(&mut self, done: Done) {
        match done {
            Done::Copy(done) => self.copy_done(done),
            Done::Maintained(done) => self.maintained_done(done),
        }
    }

    /// A DirectWithMaintenance buffer's caches were written back: its commit may apply.
    fn maintained_done(&mut self, done: MaintainDone) {
        match done.result {
            Ok(()) => {
                self.core.counters.maintenances += 1;
                tracing::trace!("cache maintenance done");
            }
            // The buffer still goes through; what the display shows may be stale, as without
            // cohere. Say so.
            Err(err) => tracing::warn!(%err, "cache maintenance before scanout failed"),
        }
        self.release_wait(done.id);
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
    /// its shadow, any other the usual way; the buffer's release is tracked from now on.
    /// `attached`: the applied commit attached a buffer (see [`attached`]).
    pub(crate) fn committed(&mut self, surface: &WlSurface, attached: bool) {
        let points = crate::sync::explicit::take_committed_points(surface);
        let buffer = smithay::backend::renderer::utils::with_renderer_surface_state(surface, |s| s.buffer().cloned()).flatten();
        let dmabuf = buffer.as_ref().and_then(|b| smithay::wayland::dmabuf::get_dmabuf(b).ok().cloned());
        let copied = dmabuf.as_ref().is_some_and(|d| self.copied(d));
        cpu_copy::set_active(surface, copied);
        match (&dmabuf, attached) {
            (Some(d), true) => {
                let kind = AttachKind { copied, scanout: self.scanout_path(d) };
                self.core.releases.applied(surface, buffer.as_ref(), dmabuf.clone(), points.release, kind);
            }
            (Some(_), false) => {}
            (None, _) => self.core.releases.not_current(&surface.id()),
        }
    }

    /// The plan has the renderer read `dmabuf` through a CPU copy.
    fn copied(&self, dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf) -> bool {
        self.backend.coherency().plans.render_path(dmabuf) == Some(Path::CpuCopy)
    }

    /// The plan puts `dmabuf` on a plane of a display this backend drives after cache
    /// maintenance.
    fn maintained(&self, dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf) -> bool {
        self.scanout_path(dmabuf) == Some(ReleasePath::DirectWithMaintenance)
    }

    /// How a display this backend drives may read `dmabuf` directly, if one may.
    fn scanout_path(&self, dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf) -> Option<ReleasePath> {
        let plan = self.backend.coherency().plans.get(dmabuf)?;
        let devices = self.backend.scanout_devices();
        let paths = devices.iter().filter_map(|d| plan.scanout_path(*d));
        let mut best = None;
        for path in paths {
            match path {
                Path::Direct => return Some(ReleasePath::Direct),
                Path::DirectWithMaintenance => best = Some(ReleasePath::DirectWithMaintenance),
                _ => {}
            }
        }
        best
    }
}
