//! DRM timeline syncobjs, owned: a timeline imported from a client is a handle on one DRM device
//! that is destroyed with its last reference (smithay 0.7's `DrmTimeline` never destroys it), and
//! exporting a point as a sync_file destroys its temporary handle on every path (smithay's leaks
//! one per call). Points can be waited on without blocking (an eventfd the event loop watches),
//! signalled, and queried.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use smithay::reexports::drm;
use smithay::reexports::drm::control::{syncobj, Device as _};
use smithay::reexports::drm::Device as _;

/// A DRM device used for syncobjs (a render node is enough). Clones share the descriptor.
#[derive(Debug, Clone)]
pub struct SyncobjDevice {
    fd: Arc<OwnedFd>,
    /// Timelines imported or created on it and not destroyed yet.
    alive: Arc<std::sync::atomic::AtomicU64>,
}

impl AsFd for SyncobjDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl drm::Device for SyncobjDevice {}
impl drm::control::Device for SyncobjDevice {}

/// Whether a device can serve linux-drm-syncobj-v1, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncobjSupport {
    /// Timeline syncobjs and syncobj eventfd work.
    Supported,
    /// `DRM_CAP_SYNCOBJ_TIMELINE` is 0 or can't be read.
    NoTimelines(String),
    /// `DRM_IOCTL_SYNCOBJ_EVENTFD` (kernel 6.6) failed on a real syncobj.
    NoEventfd(String),
}

impl std::fmt::Display for SyncobjSupport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncobjSupport::Supported => f.write_str("timeline syncobjs and syncobj eventfd work"),
            SyncobjSupport::NoTimelines(why) => write!(f, "no timeline syncobjs (DRM_CAP_SYNCOBJ_TIMELINE: {why})"),
            SyncobjSupport::NoEventfd(why) => write!(f, "no syncobj eventfd (DRM_IOCTL_SYNCOBJ_EVENTFD: {why})"),
        }
    }
}

impl SyncobjDevice {
    /// Opens a DRM node (read-write, close-on-exec).
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(path, rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty())?;
        Ok(Self::from_fd(fd))
    }

    /// Uses a descriptor the embedder opened (through its session, say).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd: Arc::new(fd), alive: Default::default() }
    }

    /// Timelines on this device (imported or created) whose handle still exists.
    pub fn timelines_alive(&self) -> u64 {
        self.alive.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn timeline(&self, handle: syncobj::Handle) -> Timeline {
        self.alive.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Timeline(Arc::new(TimelineInner { device: self.clone(), handle }))
    }

    /// Checks, as wlroots does, both the capability and that an eventfd can be attached to a
    /// timeline point (the latter on a real syncobj, which is destroyed again).
    pub fn support(&self) -> SyncobjSupport {
        match self.get_driver_capability(drm::DriverCapability::TimelineSyncObj) {
            Ok(0) => return SyncobjSupport::NoTimelines("0".into()),
            Ok(_) => {}
            Err(e) => return SyncobjSupport::NoTimelines(e.to_string()),
        }
        let probe = || -> io::Result<()> {
            let handle = self.create_syncobj(false)?;
            let eventfd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK);
            let result = eventfd.map_err(io::Error::from).and_then(|fd| self.syncobj_eventfd(handle, 1, fd.as_fd(), false));
            let _ = self.destroy_syncobj(handle);
            result
        };
        match probe() {
            Ok(()) => SyncobjSupport::Supported,
            Err(e) => SyncobjSupport::NoEventfd(e.to_string()),
        }
    }

    /// Imports a client's timeline (a syncobj fd). The fd can be closed afterwards: the handle
    /// refers to the syncobj itself.
    pub fn import_timeline(&self, fd: BorrowedFd<'_>) -> io::Result<Timeline> {
        let handle = self.fd_to_syncobj(fd, false)?;
        Ok(self.timeline(handle))
    }

    /// A new timeline on this device (tests, and clients of the test kit).
    pub fn create_timeline(&self) -> io::Result<Timeline> {
        let handle = self.create_syncobj(false)?;
        Ok(self.timeline(handle))
    }
}

#[derive(Debug)]
struct TimelineInner {
    device: SyncobjDevice,
    handle: syncobj::Handle,
}

impl Drop for TimelineInner {
    fn drop(&mut self) {
        self.device.alive.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(err) = self.device.destroy_syncobj(self.handle) {
            tracing::warn!(%err, "destroying a syncobj handle");
        }
    }
}

/// A timeline syncobj on one device. The handle is destroyed with the last clone.
#[derive(Debug, Clone)]
pub struct Timeline(Arc<TimelineInner>);

impl PartialEq for Timeline {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Timeline {
    /// The handle on its device (tests check that it is gone after the last clone).
    pub fn handle(&self) -> u32 {
        self.0.handle.into()
    }

    /// Whether `handle` names a syncobj on `device` (a query; ENOENT once it was destroyed).
    pub fn handle_exists(device: &SyncobjDevice, handle: u32) -> io::Result<bool> {
        let Some(handle) = std::num::NonZeroU32::new(handle).map(syncobj::Handle::from) else { return Ok(false) };
        let mut points = [0];
        match device.syncobj_timeline_query(&[handle], &mut points, false) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The device the timeline is on.
    pub fn device(&self) -> &SyncobjDevice {
        &self.0.device
    }

    /// The highest point signalled so far.
    pub fn signalled_point(&self) -> io::Result<u64> {
        let mut points = [0];
        self.0.device.syncobj_timeline_query(&[self.0.handle], &mut points, false)?;
        Ok(points[0])
    }

    /// The point `point` on this timeline.
    pub fn point(&self, point: u64) -> SyncPoint {
        SyncPoint { timeline: self.clone(), point }
    }

    /// Exports the timeline itself as a syncobj fd (what a client sends in import_timeline).
    pub fn export(&self) -> io::Result<OwnedFd> {
        self.0.device.syncobj_to_fd(self.0.handle, false)
    }
}

/// One point on a timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncPoint {
    timeline: Timeline,
    point: u64,
}

impl SyncPoint {
    /// The point's timeline.
    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// The point's value.
    pub fn value(&self) -> u64 {
        self.point
    }

    /// Whether the point has signalled.
    pub fn is_signalled(&self) -> io::Result<bool> {
        Ok(self.timeline.signalled_point()? >= self.point)
    }

    /// Signals the point (and every earlier one on the timeline).
    pub fn signal(&self) -> io::Result<()> {
        let t = &self.timeline.0;
        t.device.syncobj_timeline_signal(&[t.handle], &[self.point])
    }

    /// An eventfd that becomes readable once the point has signalled: for the event loop.
    pub fn eventfd(&self) -> io::Result<OwnedFd> {
        let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK)?;
        let t = &self.timeline.0;
        t.device.syncobj_eventfd(t.handle, self.point, fd.as_fd(), false)?;
        Ok(fd)
    }

    /// The point's fence as a sync_file. The temporary binary syncobj it goes through is
    /// destroyed whatever happens.
    pub fn export_sync_file(&self) -> io::Result<super::SyncFile> {
        let t = &self.timeline.0;
        let temporary = t.device.create_syncobj(false)?;
        let exported =
            t.device.syncobj_timeline_transfer(t.handle, temporary, self.point, 0).and_then(|()| t.device.syncobj_to_fd(temporary, true));
        let _ = t.device.destroy_syncobj(temporary);
        exported.map(super::SyncFile::from_fd)
    }
}
