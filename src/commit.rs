//! The commit pipeline: what happens between a client's `wl_surface.commit` and the commit
//! taking effect, for any smithay compositor.
//!
//! A commit that brings a dma-buf may have to wait (a smithay commit blocker) for two things,
//! in this order:
//! 1. the buffer's acquire fence, when a device is still writing it ([`crate::sync::acquire`](mod@crate::sync::acquire)),
//!    or its linux-drm-syncobj-v1 acquire point;
//! 2. its CPU copy, when the plan says CpuCopy ([`crate::path::cpu_copy`]): the copy thread
//!    reads the damage, and the event loop writes it into the surface's shadow; or its cache
//!    maintenance, when a display reads it after DMA_BUF_IOCTL_SYNC
//!    ([`crate::path::maintenance`]).
//!
//! Only then is the commit applied, so every path reads finished pixels, and what is drawn
//! matches the frame callbacks and presentation feedback of that commit. The waits run on the
//! event loop (calloop sources) and on the copy thread, never blocking either: a fence that
//! never signals stalls only its own surface, and a surface that goes takes its waits along.
//! Once applied, each dma-buf commit is tracked until nothing reads it and then released
//! ([`crate::path::release`], in [`CommitState::releases`]).
//!
//! # How to use
//!
//! The compositor owns a [`CommitState`] and implements [`CommitHandler`]; its compositor
//! handler calls the three hooks:
//!
//! ```no_run
//! use cohere::coherency::CoherencyState;
//! use cohere::commit::{CommitHandler, CommitState};
//! use smithay::reexports::calloop::LoopHandle;
//! use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
//! use smithay::reexports::wayland_server::{Client, DisplayHandle};
//! use smithay::wayland::compositor::{add_pre_commit_hook, CompositorClientState, CompositorHandler, CompositorState};
//! # use smithay::wayland::buffer::BufferHandler;
//!
//! struct MyState {
//!     handle: LoopHandle<'static, MyState>,
//!     display: DisplayHandle,
//!     compositor: CompositorState,
//!     coherency: CoherencyState,
//!     commits: CommitState,
//! }
//! # struct ClientData(CompositorClientState);
//! # impl smithay::reexports::wayland_server::backend::ClientData for ClientData {}
//! # impl BufferHandler for MyState { fn buffer_destroyed(&mut self, _: &smithay::reexports::wayland_server::protocol::wl_buffer::WlBuffer) {} }
//!
//! impl CommitHandler for MyState {
//!     fn commit_state(&mut self) -> &mut CommitState {
//!         &mut self.commits
//!     }
//!     fn coherency(&self) -> &CoherencyState {
//!         &self.coherency
//!     }
//!     fn loop_handle(&self) -> LoopHandle<'static, Self> {
//!         self.handle.clone()
//!     }
//!     fn display_handle(&self) -> DisplayHandle {
//!         self.display.clone()
//!     }
//!     fn y_inverted(&self, dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf) -> bool {
//!         // With cohere's linux-dmabuf: `import_state.is_y_inverted(dmabuf)`.
//!         let _ = dmabuf;
//!         false
//!     }
//! }
//!
//! impl CompositorHandler for MyState {
//!     fn compositor_state(&mut self) -> &mut CompositorState {
//!         &mut self.compositor
//!     }
//!     fn client_compositor_state<'a>(&self, client: &'a Client) -> &'a CompositorClientState {
//!         &client.get_data::<ClientData>().unwrap().0
//!     }
//!     fn new_surface(&mut self, surface: &WlSurface) {
//!         // Waits (fences, copies, maintenance) are decided before a commit applies.
//!         add_pre_commit_hook::<Self, _>(surface, |state, _, surface| cohere::commit::pre_commit(state, surface));
//!     }
//!     fn commit(&mut self, surface: &WlSurface) {
//!         let attached = cohere::commit::attached(surface);
//!         smithay::backend::renderer::utils::on_commit_buffer_handler::<Self>(surface);
//!         cohere::commit::committed(self, surface, attached);
//!     }
//! }
//! # smithay::delegate_compositor!(MyState);
//! // At start-up, with the event loop's handle:
//! // let commits = CommitState::new::<MyState>(&handle);
//! ```

use std::collections::HashMap;

use smithay::reexports::calloop::generic::Generic;
use smithay::reexports::calloop::{Interest, LoopHandle, Mode, PostAction, RegistrationToken};
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::reexports::wayland_server::{Client, DisplayHandle, Resource, Weak};
use smithay::utils::Rectangle;
use smithay::wayland::compositor::{add_blocker, with_states, BufferAssignment, CompositorHandler, Damage, SurfaceAttributes};
use smithay::wayland::viewporter::ViewportCachedState;

use crate::coherency::{CoherencyState, DeviceId, Path};
use crate::path::cpu_copy::{self, CopyDone, CopyError, CopyWorker, Done, Job, PendingDamage, Reads};
use crate::path::maintenance::{MaintainDone, MaintainJob};
use crate::path::release::{AttachKind, ReleasePath, Releases};
use crate::sync::{Acquire, FenceBlocker, FenceFd};

/// What the pipeline counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitCounters {
    /// Commits held until their buffer's acquire fence (or point) signalled.
    pub fence_waits: u64,
    /// Commits whose damage the CPU copy copied, and the bytes it copied.
    pub cpu_copies: u64,
    /// Bytes the CPU copy read.
    pub bytes_copied: u64,
    /// Commits of DirectWithMaintenance buffers whose caches were written back before scanout.
    pub maintenances: u64,
    /// Microseconds the copy thread spent on the copies that landed (map, SYNC, copy).
    pub copy_thread_us: u64,
    /// Microseconds the commits whose copies landed were held, from the commit to the copy
    /// in the shadow (fence wait, queueing and the copy): what a copy adds to a frame.
    pub copy_held_us: u64,
}

/// The pipeline's state, owned by the compositor.
#[derive(Debug)]
pub struct CommitState {
    /// Commits held, by wait id. An entry goes when its commit is let through, or with its
    /// surface ([`CommitState::prune`]).
    waits: HashMap<u64, CommitWait>,
    next_id: u64,
    /// The copy thread (`None` if it couldn't start: copies then fail, visibly).
    worker: Option<CopyWorker>,
    /// When each applied dma-buf commit stops being read, and its release.
    pub releases: Releases,
    /// What the pipeline counted.
    pub counters: CommitCounters,
}

/// The compositor's side of the pipeline.
pub trait CommitHandler: CompositorHandler + Sized + 'static {
    /// Where the pipeline's state lives.
    fn commit_state(&mut self) -> &mut CommitState;
    /// The plans the pipeline follows.
    fn coherency(&self) -> &CoherencyState;
    /// The displays this compositor drives: their plans decide cache maintenance and when a
    /// buffer on a plane is released. Headless: none.
    fn scanout_devices(&self) -> Vec<DeviceId> {
        Vec::new()
    }
    /// The event loop, to watch fences on.
    fn loop_handle(&self) -> LoopHandle<'static, Self>;
    /// The display, to let blocked commits through.
    fn display_handle(&self) -> DisplayHandle;
    /// A CPU copy of `surface` landed, having read `bytes` (for statistics).
    fn surface_copied(&mut self, _surface: &WlSurface, _bytes: u64) {}
    /// Whether `dmabuf` was created with y_invert: [`crate::import::ImportState::is_y_inverted`].
    fn y_inverted(&self, dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf) -> bool;
}

impl CommitState {
    /// Starts the copy thread, whose results come back through a channel `handle`'s loop
    /// watches.
    pub fn new<D: CommitHandler>(handle: &LoopHandle<'static, D>) -> Self {
        let (tx, rx) = smithay::reexports::calloop::channel::channel();
        let watched = handle.insert_source(rx, |event, _, state: &mut D| {
            if let smithay::reexports::calloop::channel::Event::Msg(done) = event {
                job_done(state, done);
            }
        });
        let worker = match watched {
            Ok(_) => CopyWorker::spawn(tx).map_err(|err| tracing::error!(%err, "cannot start the cpu copy thread")).ok(),
            Err(err) => {
                tracing::error!(%err, "cannot watch the cpu copy channel; CPU copies will fail");
                None
            }
        };
        Self { waits: HashMap::new(), next_id: 0, worker, releases: Releases::default(), counters: CommitCounters::default() }
    }

    /// Commits held now (fences, copies, maintenance).
    pub fn waiting(&self) -> usize {
        self.waits.len()
    }

    /// Drops the waits of surfaces that are gone (their client disconnected or destroyed
    /// them), with their fence sources, and the release tracking of buffers that are gone.
    pub fn prune<D>(&mut self, handle: &LoopHandle<'static, D>) {
        self.releases.prune();
        self.waits.retain(|_, wait| {
            let alive = wait.surface.upgrade().is_ok_and(|s| s.is_alive());
            if !alive {
                if let Some(token) = wait.fence_source.take() {
                    handle.remove(token);
                }
            }
            alive
        });
    }
}

/// A commit held by the pipeline.
#[derive(Debug)]
struct CommitWait {
    surface: Weak<WlSurface>,
    blocker: FenceBlocker,
    client: Client,
    /// The acquire fence's event source while the commit waits for the fence.
    fence_source: Option<RegistrationToken>,
    /// When the commit arrived.
    since: std::time::Instant,
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

/// Whether the commit being applied to `surface` attached a buffer. Call it first in
/// `CompositorHandler::commit`, before smithay's `on_commit_buffer_handler` takes the buffer.
pub fn attached(surface: &WlSurface) -> bool {
    with_states(surface, |states| {
        matches!(states.cached_state.get::<SurfaceAttributes>().current().buffer, Some(BufferAssignment::NewBuffer(_)))
    })
}

/// The pre-commit hook: decides what the commit waits for and starts the waits. Call it from
/// the surface's pre-commit hook (`add_pre_commit_hook`).
pub fn pre_commit<D: CommitHandler>(state: &mut D, surface: &WlSurface) {
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
    let copied = copied(state, &dmabuf);
    if !copied {
        cpu_copy::not_copied(surface);
    }
    // A copy brackets its reads with SYNC, which is the maintenance too.
    let maintained = !copied && scanout_path(state, &dmabuf) == Some(ReleasePath::DirectWithMaintenance);
    // A syncobj client's acquire point replaces the buffer's implicit fence.
    let fence = match crate::sync::explicit::pending_acquire(surface) {
        Some(point) => crate::sync::acquire_point(&point),
        None => crate::sync::acquire(&dmabuf),
    };
    if !copied && !maintained && matches!(fence, Acquire::Ready) {
        return;
    }
    let Some(client) = surface.client() else { return };
    let commits = state.commit_state();
    commits.next_id += 1;
    let id = commits.next_id;
    let (job, copy_seq) = if copied {
        let reads = state.coherency().plans.get(&dmabuf).map_or(Reads::Cached, |plan| Reads::of(plan.memory));
        // A y_invert buffer is drawn through a flipped transform (ImportState::orient), and
        // its damage, in which rows the protocol leaves open, is copied whole.
        let (damage, transform) = if state.y_inverted(&dmabuf) {
            (PendingDamage::Whole, crate::import::flip_rows(pending.transform.into()).into())
        } else {
            (pending.damage, pending.transform)
        };
        match cpu_copy::plan(surface, &dmabuf, damage, (pending.scale, transform), id, reads) {
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
    let wait =
        CommitWait { surface: surface.downgrade(), blocker: blocker.clone(), client, fence_source: None, since: std::time::Instant::now() };
    state.commit_state().waits.insert(id, wait);
    match fence {
        Acquire::Ready => {
            if let Some(job) = job {
                submit(state, job);
            }
        }
        Acquire::Wait(fd) => {
            let source = Generic::new(FenceFd(fd), Interest::READ, Mode::Level);
            let mut job = job;
            let inserted = state.loop_handle().insert_source(source, move |_, _, state: &mut D| {
                if let Some(wait) = state.commit_state().waits.get_mut(&id) {
                    wait.fence_source = None;
                }
                match job.take() {
                    Some(job) => submit(state, job),
                    None => release_wait(state, id),
                }
                Ok(PostAction::Remove)
            });
            let commits = state.commit_state();
            match inserted {
                Ok(token) => {
                    commits.counters.fence_waits += 1;
                    if let Some(wait) = commits.waits.get_mut(&id) {
                        wait.fence_source = Some(token);
                    }
                    tracing::debug!(surface = %surface.id(), "commit held until its buffer's acquire fence signals");
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot watch an acquire fence; the commit goes ahead");
                    commits.waits.remove(&id);
                    // Its copy won't run: later copies of the surface must not wait for it.
                    // `ready` has already put the released copies in order: straight to the thread.
                    if let Some(seq) = copy_seq {
                        for job in cpu_copy::ready(surface, seq, None) {
                            to_worker(state, Job::Copy(job));
                        }
                    }
                    return;
                }
            }
        }
    }
    add_blocker(surface, blocker);
}

/// Hands `job` to the copy thread; a copy goes in its surface's commit order
/// ([`cpu_copy::ready`]), so it may wait for an earlier copy's fence.
fn submit<D: CommitHandler>(state: &mut D, job: Job) {
    let jobs = match job {
        Job::Copy(job) => {
            let surface = state.commit_state().waits.get(&job.id).and_then(|w| w.surface.upgrade().ok());
            match surface {
                Some(surface) => cpu_copy::ready(&surface, job.seq, Some(job)).into_iter().map(Job::Copy).collect(),
                None => Vec::new(),
            }
        }
        job => vec![job],
    };
    for job in jobs {
        to_worker(state, job);
    }
}

fn to_worker<D: CommitHandler>(state: &mut D, job: Job) {
    let rejected = match &state.commit_state().worker {
        Some(worker) => worker.submit(job).err(),
        None => Some(job),
    };
    match rejected {
        Some(Job::Copy(job)) => {
            copy_done(state, CopyDone { id: job.id, seq: job.seq, result: Err(CopyError::NoWorker), took: std::time::Duration::ZERO })
        }
        Some(Job::Maintain(job)) => maintained_done(state, MaintainDone { id: job.id, result: Err("the copy thread is gone".into()) }),
        None => {}
    }
}

/// The copy thread finished a job.
fn job_done<D: CommitHandler>(state: &mut D, done: Done) {
    match done {
        Done::Copy(done) => copy_done(state, done),
        Done::Maintained(done) => maintained_done(state, done),
    }
}

/// A DirectWithMaintenance buffer's caches were written back: its commit may apply.
fn maintained_done<D: CommitHandler>(state: &mut D, done: MaintainDone) {
    match done.result {
        Ok(()) => {
            state.commit_state().counters.maintenances += 1;
            tracing::trace!("cache maintenance done");
        }
        // The buffer still goes through; what the display shows may be stale, as without
        // cohere. Say so.
        Err(err) => tracing::warn!(%err, "cache maintenance before scanout failed"),
    }
    release_wait(state, done.id);
}

/// A copy came back from the copy thread: the shadow holds it, so its commit may apply.
fn copy_done<D: CommitHandler>(state: &mut D, done: CopyDone) {
    let wait = state.commit_state().waits.get(&done.id).map(|w| (w.surface.upgrade().ok(), w.since));
    if let Some((Some(surface), since)) = wait {
        let bytes = cpu_copy::job_done(&surface, done.seq, done.result);
        if bytes > 0 {
            let counters = &mut state.commit_state().counters;
            counters.cpu_copies += 1;
            counters.bytes_copied += bytes;
            counters.copy_thread_us += done.took.as_micros() as u64;
            counters.copy_held_us += since.elapsed().as_micros() as u64;
            state.surface_copied(&surface, bytes);
            tracing::trace!(bytes, "cpu copy landed");
        }
    }
    release_wait(state, done.id);
}

/// Lets commit `id` through.
fn release_wait<D: CommitHandler>(state: &mut D, id: u64) {
    let Some(wait) = state.commit_state().waits.remove(&id) else { return };
    wait.blocker.release();
    let dh = state.display_handle();
    state.client_compositor_state(&wait.client).blocker_cleared(state, &dh);
}

/// The executors' part of an applied commit: a surface whose buffer is copied is drawn from
/// its shadow, any other the usual way; the buffer's release is tracked from now on. Call it
/// in `CompositorHandler::commit` after smithay's `on_commit_buffer_handler`; `attached` is
/// what [`attached`] said before it.
pub fn committed<D: CommitHandler>(state: &mut D, surface: &WlSurface, attached: bool) {
    let points = crate::sync::explicit::take_committed_points(surface);
    let buffer = smithay::backend::renderer::utils::with_renderer_surface_state(surface, |s| s.buffer().cloned()).flatten();
    let dmabuf = buffer.as_ref().and_then(|b| smithay::wayland::dmabuf::get_dmabuf(b).ok().cloned());
    let copied = dmabuf.as_ref().is_some_and(|d| copied(state, d));
    cpu_copy::set_active(surface, copied);
    match (&dmabuf, attached) {
        (Some(d), true) => {
            let kind = AttachKind { copied, scanout: scanout_path(state, d) };
            state.commit_state().releases.applied(surface, buffer.as_ref(), dmabuf.clone(), points.release, kind);
        }
        (Some(_), false) => {}
        (None, _) => state.commit_state().releases.not_current(&surface.id()),
    }
}

/// The plan has the renderer read `dmabuf` through a CPU copy.
fn copied<D: CommitHandler>(state: &D, dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf) -> bool {
    state.coherency().plans.render_path(dmabuf) == Some(Path::CpuCopy)
}

/// How a display this compositor drives may read `dmabuf` directly, if one may.
fn scanout_path<D: CommitHandler>(state: &D, dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf) -> Option<ReleasePath> {
    let plan = state.coherency().plans.get(dmabuf)?;
    let devices = state.scanout_devices();
    let mut best = None;
    for path in devices.iter().filter_map(|d| plan.scanout_path(*d)) {
        match path {
            Path::Direct => return Some(ReleasePath::Direct),
            Path::DirectWithMaintenance => best = Some(ReleasePath::DirectWithMaintenance),
            _ => {}
        }
    }
    best
}
