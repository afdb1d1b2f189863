//! linux-drm-syncobj-v1 (explicit sync), owned by cohere: timelines are imported as
//! [`Timeline`]s that destroy their handle, every commit is validated as the protocol says
//! (including a buffer without points, which smithay 0.7 accepts), and the points of an applied
//! commit are handed to the compositor ([`take_committed_points`]) to wait on and to signal when
//! the buffer is no longer read.
//!
//! # How to use
//!
//! ```no_run
//! use cohere::sync::explicit::{SyncobjHandler, SyncobjState};
//! use cohere::sync::syncobj::SyncobjDevice;
//! # use smithay::reexports::wayland_server::Display;
//! # struct MyState { syncobj: SyncobjState }
//! impl SyncobjHandler for MyState {
//!     fn syncobj_state(&mut self) -> Option<&mut SyncobjState> {
//!         Some(&mut self.syncobj)
//!     }
//! }
//! cohere::delegate_syncobj!(MyState);
//!
//! # let display = Display::<MyState>::new().unwrap();
//! let device = SyncobjDevice::open("/dev/dri/renderD128".as_ref())?;
//! // Offer the global only where it works (timelines and syncobj eventfd).
//! let syncobj = SyncobjState::new::<MyState>(&display.handle(), device)?;
//! // In the compositor's pre-commit hook: `cohere::sync::explicit::validate_commit(surface)`;
//! // in its commit handler: `take_committed_points(surface)` for the applied buffer.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Mutex;

use smithay::reexports::wayland_protocols::wp::linux_drm_syncobj::v1::server::{
    wp_linux_drm_syncobj_manager_v1::{self, WpLinuxDrmSyncobjManagerV1},
    wp_linux_drm_syncobj_surface_v1::{self, WpLinuxDrmSyncobjSurfaceV1},
    wp_linux_drm_syncobj_timeline_v1::{self, WpLinuxDrmSyncobjTimelineV1},
};
use smithay::reexports::wayland_server::backend::GlobalId;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::reexports::wayland_server::{Client, DataInit, Dispatch, DisplayHandle, GlobalDispatch, New, Resource, Weak};
use smithay::wayland::compositor::{with_states, BufferAssignment, Cacheable, SurfaceAttributes};

use super::syncobj::{SyncPoint, SyncobjDevice, SyncobjSupport, Timeline};

/// The linux-drm-syncobj-v1 global and the device its timelines are imported on.
#[derive(Debug)]
pub struct SyncobjState {
    global: GlobalId,
    device: SyncobjDevice,
    /// Timelines imported and points set, for statistics.
    pub timelines_imported: u64,
}

/// Why the global isn't offered.
#[derive(Debug, thiserror::Error)]
#[error("linux-drm-syncobj-v1 not offered: {0}")]
pub struct Unsupported(pub SyncobjSupport);

/// The embedder's side: where the state lives (`None` where the global isn't offered, so no
/// client can reach it).
pub trait SyncobjHandler {
    /// Where the state lives (`None` where the global isn't offered).
    fn syncobj_state(&mut self) -> Option<&mut SyncobjState>;
}

/// User data of the global.
#[derive(Debug)]
pub struct SyncobjGlobalData {
    _private: (),
}

/// User data of a wp_linux_drm_syncobj_surface_v1: its wl_surface.
#[derive(Debug)]
pub struct SyncobjSurfaceData {
    surface: Weak<WlSurface>,
}

/// User data of a wp_linux_drm_syncobj_timeline_v1 (`None` after a failed import, whose
/// client is disconnected).
#[derive(Debug)]
pub struct TimelineData {
    timeline: Option<Timeline>,
}

/// The surface's syncobj object, in the surface's data: one per surface at a time.
#[derive(Debug, Default)]
struct SurfaceSyncobj(Mutex<Option<Weak<WpLinuxDrmSyncobjSurfaceV1>>>);

impl SurfaceSyncobj {
    fn object(&self) -> Option<WpLinuxDrmSyncobjSurfaceV1> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|w| w.upgrade().ok()).filter(|o| o.is_alive())
    }
}

/// The points of one commit (double-buffered with the surface's state).
#[derive(Debug, Default)]
pub struct SyncobjCachedState {
    /// The acquire point, if one was set.
    pub acquire: Option<SyncPoint>,
    /// The release point, if one was set.
    pub release: Option<SyncPoint>,
}

impl Cacheable for SyncobjCachedState {
    fn commit(&mut self, _dh: &DisplayHandle) -> Self {
        Self { acquire: self.acquire.take(), release: self.release.take() }
    }

    fn merge_into(self, into: &mut Self, _dh: &DisplayHandle) {
        if self.acquire.is_none() && self.release.is_none() {
            return;
        }
        // The compositor takes an applied commit's points at once (take_committed_points), so
        // points still here belong to a cached commit whose buffer is replaced before it was
        // ever used: its release point can be signalled now.
        if let Some(unused) = into.release.take() {
            if let Err(err) = unused.signal() {
                tracing::warn!(%err, "signalling the release point of a buffer never shown");
            }
        }
        *into = self;
    }
}

impl SyncobjState {
    /// Creates the global if `device` has timeline syncobjs and syncobj eventfd.
    pub fn new<D>(display: &DisplayHandle, device: SyncobjDevice) -> Result<Self, Unsupported>
    where
        D: GlobalDispatch<WpLinuxDrmSyncobjManagerV1, SyncobjGlobalData> + SyncobjHandler + 'static,
    {
        match device.support() {
            SyncobjSupport::Supported => {}
            other => return Err(Unsupported(other)),
        }
        let global = display.create_global::<D, WpLinuxDrmSyncobjManagerV1, _>(1, SyncobjGlobalData { _private: () });
        Ok(Self { global, device, timelines_imported: 0 })
    }

    /// The global.
    pub fn global(&self) -> &GlobalId {
        &self.global
    }

    /// The device timelines are imported on.
    pub fn device(&self) -> &SyncobjDevice {
        &self.device
    }
}

/// A protocol error to post on a surface's syncobj object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitError {
    /// The object the error is posted on.
    pub object: WpLinuxDrmSyncobjSurfaceV1,
    /// The error.
    pub code: wp_linux_drm_syncobj_surface_v1::Error,
    /// Its message.
    pub message: String,
}

/// Checks the pending commit of `surface` as the protocol says. Points are required exactly
/// when a buffer is attached (a buffer without points, points without a buffer: errors), the
/// buffer must be a dma-buf, and on one timeline the acquire point must come before the release
/// point. Surfaces without a syncobj object pass. Call it from the pre-commit hook and post the
/// error (see [`post`]).
pub fn validate_commit(surface: &WlSurface) -> Result<(), CommitError> {
    with_states(surface, |states| {
        let Some(object) = states.data_map.get::<SurfaceSyncobj>().and_then(SurfaceSyncobj::object) else { return Ok(()) };
        let fail = |code, message: &str| Err(CommitError { object: object.clone(), code, message: message.to_owned() });
        let mut attrs = states.cached_state.get::<SurfaceAttributes>();
        let buffer = match attrs.pending().buffer.as_ref() {
            Some(BufferAssignment::NewBuffer(buffer)) => Some(buffer.clone()),
            _ => None,
        };
        let mut points = states.cached_state.get::<SyncobjCachedState>();
        let points = points.pending();
        use wp_linux_drm_syncobj_surface_v1::Error;
        let Some(buffer) = buffer else {
            if points.acquire.is_some() || points.release.is_some() {
                return fail(Error::NoBuffer, "timeline points set but no buffer attached");
            }
            return Ok(());
        };
        let (Some(acquire), Some(release)) = (&points.acquire, &points.release) else {
            return match points.acquire {
                None => fail(Error::NoAcquirePoint, "a buffer attached without an acquire point"),
                Some(_) => fail(Error::NoReleasePoint, "a buffer attached without a release point"),
            };
        };
        if acquire.timeline() == release.timeline() && acquire.value() >= release.value() {
            return fail(
                Error::ConflictingPoints,
                &format!("acquire point {} is not before release point {} on the same timeline", acquire.value(), release.value()),
            );
        }
        if smithay::wayland::dmabuf::get_dmabuf(&buffer).is_err() {
            return fail(Error::UnsupportedBuffer, "explicit sync needs a linux-dmabuf buffer");
        }
        Ok(())
    })
}

/// Posts a commit's protocol error.
pub fn post(error: CommitError) {
    tracing::info!(code = ?error.code, message = %error.message, "linux-drm-syncobj-v1 protocol error");
    error.object.post_error(error.code, error.message);
}

/// The acquire point of `surface`'s pending commit, if it has one.
pub fn pending_acquire(surface: &WlSurface) -> Option<SyncPoint> {
    with_states(surface, |states| states.cached_state.get::<SyncobjCachedState>().pending().acquire.clone())
}

/// Takes the points of the commit just applied to `surface` (from the commit handler): the
/// compositor now owns the release point and signals it when it has stopped reading the buffer.
pub fn take_committed_points(surface: &WlSurface) -> SyncobjCachedState {
    with_states(surface, |states| std::mem::take(states.cached_state.get::<SyncobjCachedState>().current()))
}

/// Whether `surface` has a live syncobj object.
pub fn has_syncobj(surface: &WlSurface) -> bool {
    with_states(surface, |states| states.data_map.get::<SurfaceSyncobj>().and_then(SurfaceSyncobj::object).is_some())
}

impl<D> GlobalDispatch<WpLinuxDrmSyncobjManagerV1, SyncobjGlobalData, D> for SyncobjState
where
    D: GlobalDispatch<WpLinuxDrmSyncobjManagerV1, SyncobjGlobalData> + Dispatch<WpLinuxDrmSyncobjManagerV1, ()> + SyncobjHandler + 'static,
{
    fn bind(
        _state: &mut D,
        _dh: &DisplayHandle,
        _client: &Client,
        resource: New<WpLinuxDrmSyncobjManagerV1>,
        _global_data: &SyncobjGlobalData,
        data_init: &mut DataInit<'_, D>,
    ) {
        data_init.init(resource, ());
    }
}

impl<D> Dispatch<WpLinuxDrmSyncobjManagerV1, (), D> for SyncobjState
where
    D: Dispatch<WpLinuxDrmSyncobjManagerV1, ()>
        + Dispatch<WpLinuxDrmSyncobjSurfaceV1, SyncobjSurfaceData>
        + Dispatch<WpLinuxDrmSyncobjTimelineV1, TimelineData>
        + SyncobjHandler
        + 'static,
{
    fn request(
        state: &mut D,
        _client: &Client,
        manager: &WpLinuxDrmSyncobjManagerV1,
        request: wp_linux_drm_syncobj_manager_v1::Request,
        _data: &(),
        _dh: &DisplayHandle,
        data_init: &mut DataInit<'_, D>,
    ) {
        match request {
            wp_linux_drm_syncobj_manager_v1::Request::GetSurface { id, surface } => {
                let exists =
                    with_states(&surface, |states| states.data_map.get_or_insert_threadsafe(SurfaceSyncobj::default).object().is_some());
                if exists {
                    manager.post_error(
                        wp_linux_drm_syncobj_manager_v1::Error::SurfaceExists,
                        "the surface already has a wp_linux_drm_syncobj_surface_v1",
                    );
                    // The new id must still be initialised; the client is disconnected anyway.
                    data_init.init(id, SyncobjSurfaceData { surface: surface.downgrade() });
                    return;
                }
                let object = data_init.init(id, SyncobjSurfaceData { surface: surface.downgrade() });
                with_states(&surface, |states| {
                    if let Some(slot) = states.data_map.get::<SurfaceSyncobj>() {
                        *slot.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(object.downgrade());
                    }
                });
            }
            wp_linux_drm_syncobj_manager_v1::Request::ImportTimeline { id, fd } => {
                let imported = match state.syncobj_state() {
                    Some(s) => s.device.import_timeline(std::os::fd::AsFd::as_fd(&fd)),
                    None => Err(std::io::Error::other("no syncobj device")),
                };
                match imported {
                    Ok(timeline) => {
                        if let Some(s) = state.syncobj_state() {
                            s.timelines_imported += 1;
                        }
                        data_init.init(id, TimelineData { timeline: Some(timeline) });
                    }
                    Err(err) => {
                        manager
                            .post_error(wp_linux_drm_syncobj_manager_v1::Error::InvalidTimeline, format!("importing the timeline: {err}"));
                        // The id must be initialised; the client is disconnected anyway.
                        data_init.init(id, TimelineData { timeline: None });
                    }
                }
            }
            wp_linux_drm_syncobj_manager_v1::Request::Destroy => {}
            _ => {}
        }
    }
}

impl<D> Dispatch<WpLinuxDrmSyncobjTimelineV1, TimelineData, D> for SyncobjState
where
    D: Dispatch<WpLinuxDrmSyncobjTimelineV1, TimelineData> + SyncobjHandler,
{
    fn request(
        _state: &mut D,
        _client: &Client,
        _resource: &WpLinuxDrmSyncobjTimelineV1,
        _request: wp_linux_drm_syncobj_timeline_v1::Request,
        _data: &TimelineData,
        _dh: &DisplayHandle,
        _data_init: &mut DataInit<'_, D>,
    ) {
        // Only destroy: points already set keep their own reference to the timeline.
    }
}

impl<D> Dispatch<WpLinuxDrmSyncobjSurfaceV1, SyncobjSurfaceData, D> for SyncobjState
where
    D: Dispatch<WpLinuxDrmSyncobjSurfaceV1, SyncobjSurfaceData> + SyncobjHandler,
{
    fn request(
        _state: &mut D,
        _client: &Client,
        object: &WpLinuxDrmSyncobjSurfaceV1,
        request: wp_linux_drm_syncobj_surface_v1::Request,
        data: &SyncobjSurfaceData,
        _dh: &DisplayHandle,
        _data_init: &mut DataInit<'_, D>,
    ) {
        use wp_linux_drm_syncobj_surface_v1::Request;
        let (timeline, hi, lo, acquire) = match request {
            Request::SetAcquirePoint { timeline, point_hi, point_lo } => (timeline, point_hi, point_lo, true),
            Request::SetReleasePoint { timeline, point_hi, point_lo } => (timeline, point_hi, point_lo, false),
            Request::Destroy => {
                if let Ok(surface) = data.surface.upgrade() {
                    forget(&surface, object);
                }
                return;
            }
            _ => return,
        };
        let Ok(surface) = data.surface.upgrade().map_err(|_| ()).and_then(|s| if s.is_alive() { Ok(s) } else { Err(()) }) else {
            object.post_error(wp_linux_drm_syncobj_surface_v1::Error::NoSurface, "the wl_surface was destroyed");
            return;
        };
        let Some(timeline) = timeline.data::<TimelineData>().and_then(|d| d.timeline.clone()) else { return };
        let point = timeline.point((u64::from(hi) << 32) | u64::from(lo));
        with_states(&surface, |states| {
            let mut cached = states.cached_state.get::<SyncobjCachedState>();
            let pending = cached.pending();
            if acquire {
                pending.acquire = Some(point);
            } else {
                pending.release = Some(point);
            }
        });
    }

    fn destroyed(
        _state: &mut D,
        _client: smithay::reexports::wayland_server::backend::ClientId,
        object: &WpLinuxDrmSyncobjSurfaceV1,
        data: &SyncobjSurfaceData,
    ) {
        if let Ok(surface) = data.surface.upgrade() {
            forget(&surface, object);
        }
    }
}

/// The surface's syncobj object went: points set since the last commit are dropped, and the
/// surface may get a new one.
fn forget(surface: &WlSurface, object: &WpLinuxDrmSyncobjSurfaceV1) {
    if !surface.is_alive() {
        return;
    }
    with_states(surface, |states| {
        if let Some(slot) = states.data_map.get::<SurfaceSyncobj>() {
            let mut slot = slot.0.lock().unwrap_or_else(|e| e.into_inner());
            if slot.as_ref().is_some_and(|w| w.id() == object.id()) {
                *slot = None;
            }
        }
        let mut cached = states.cached_state.get::<SyncobjCachedState>();
        *cached.pending() = SyncobjCachedState::default();
    });
}

/// Delegates linux-drm-syncobj-v1 of `$ty` to [`SyncobjState`]. `$ty` must implement
/// [`SyncobjHandler`].
#[macro_export]
macro_rules! delegate_syncobj {
    ($(@<$( $lt:tt $( : $clt:tt $(+ $dlt:tt )* )? ),+>)? $ty: ty) => {
        $crate::reexports::smithay::reexports::wayland_server::delegate_global_dispatch!($(@< $( $lt $( : $clt $(+ $dlt )* )? ),+ >)? $ty: [
            $crate::reexports::smithay::reexports::wayland_protocols::wp::linux_drm_syncobj::v1::server::wp_linux_drm_syncobj_manager_v1::WpLinuxDrmSyncobjManagerV1: $crate::sync::explicit::SyncobjGlobalData
        ] => $crate::sync::explicit::SyncobjState);
        $crate::reexports::smithay::reexports::wayland_server::delegate_dispatch!($(@< $( $lt $( : $clt $(+ $dlt )* )? ),+ >)? $ty: [
            $crate::reexports::smithay::reexports::wayland_protocols::wp::linux_drm_syncobj::v1::server::wp_linux_drm_syncobj_manager_v1::WpLinuxDrmSyncobjManagerV1: ()
        ] => $crate::sync::explicit::SyncobjState);
        $crate::reexports::smithay::reexports::wayland_server::delegate_dispatch!($(@< $( $lt $( : $clt $(+ $dlt )* )? ),+ >)? $ty: [
            $crate::reexports::smithay::reexports::wayland_protocols::wp::linux_drm_syncobj::v1::server::wp_linux_drm_syncobj_surface_v1::WpLinuxDrmSyncobjSurfaceV1: $crate::sync::explicit::SyncobjSurfaceData
        ] => $crate::sync::explicit::SyncobjState);
        $crate::reexports::smithay::reexports::wayland_server::delegate_dispatch!($(@< $( $lt $( : $clt $(+ $dlt )* )? ),+ >)? $ty: [
            $crate::reexports::smithay::reexports::wayland_protocols::wp::linux_drm_syncobj::v1::server::wp_linux_drm_syncobj_timeline_v1::WpLinuxDrmSyncobjTimelineV1: $crate::sync::explicit::TimelineData
        ] => $crate::sync::explicit::SyncobjState);
    };
}
