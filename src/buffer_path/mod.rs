//! cohere-buffer-path-v1 (`protocols/cohere-buffer-path-v1.xml`): tells a client which path its
//! surface's buffers take to the screen and why, and what it could change to reach a cheaper
//! one. No other protocol says that a buffer is being copied, or why: linux-dmabuf feedback
//! names devices and formats, presentation-time only whether a frame was zero-copy.
//!
//! The compositor works out each surface's [`PathReport`] ([`report::report`], from the buffer's
//! plan and hints and what its last frame did) and calls [`BufferPathState::publish`] when
//! something may have changed (a commit, a frame, new machine facts); a batch goes to the
//! client only when the report differs from the last one sent.
//!
//! # How to use
//!
//! ```no_run
//! use cohere::buffer_path::{BufferPathHandler, BufferPathState, PathReport};
//! use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
//! # use smithay::reexports::wayland_server::Display;
//! # struct MyState { buffer_path: BufferPathState }
//! impl BufferPathHandler for MyState {
//!     fn buffer_path_state(&mut self) -> Option<&mut BufferPathState> {
//!         Some(&mut self.buffer_path)
//!     }
//!     fn surface_path(&mut self, surface: &WlSurface) -> PathReport {
//!         // The surface's buffer's plan and its last frame (see `cohere::buffer_path::report`).
//!         PathReport::default()
//!     }
//! }
//! cohere::delegate_buffer_path!(MyState);
//!
//! # let display = Display::<MyState>::new().unwrap();
//! let buffer_path = BufferPathState::new::<MyState>(&display.handle());
//! // After a commit or a frame, for each surface a client observes:
//! // `if BufferPathState::observed(surface) { state.buffer_path.publish(surface, &report) }`.
//! ```

#[cfg(feature = "client")]
pub mod observe;
pub mod protocol;
pub mod report;

use std::sync::Mutex;

use smithay::reexports::wayland_server::backend::GlobalId;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::reexports::wayland_server::{Client, DataInit, Dispatch, DisplayHandle, GlobalDispatch, New, Resource, Weak};
use smithay::wayland::compositor::with_states;

use crate::coherency::{Hint, Path};
use protocol::server::cohere_buffer_path_manager_v1::{self, CohereBufferPathManagerV1};
use protocol::server::cohere_surface_buffer_path_v1::{self as wire, CohereSurfaceBufferPathV1};
pub use report::{Consumer, Observation, Outcome, PathReport, Presented, Reason};

/// The version of cohere-buffer-path-v1 cohere implements.
pub const VERSION: u32 = 1;

/// The global, and how many batches it sent.
#[derive(Debug)]
pub struct BufferPathState {
    global: GlobalId,
    /// Batches sent to clients (each closed by `done`), for statistics.
    pub batches_sent: u64,
}

/// The embedder's side.
pub trait BufferPathHandler {
    /// Where the state lives (`None` where the global isn't offered, so no client reaches it).
    fn buffer_path_state(&mut self) -> Option<&mut BufferPathState>;
    /// The surface's report now: sent in full to a new observer and on `update`.
    fn surface_path(&mut self, surface: &WlSurface) -> PathReport;
}

/// Per-object data: the observed surface.
#[derive(Debug)]
pub struct SurfacePathData {
    surface: Weak<WlSurface>,
}

/// A surface's observer: the object, and the last report it was sent.
#[derive(Debug)]
struct Observer {
    resource: CohereSurfaceBufferPathV1,
    last: Option<PathReport>,
}

/// Kept in the surface's data, so it goes with the surface.
#[derive(Debug, Default)]
struct Observed(Mutex<Option<Observer>>);

impl BufferPathState {
    /// Creates the global.
    pub fn new<D>(dh: &DisplayHandle) -> Self
    where
        D: GlobalDispatch<CohereBufferPathManagerV1, ()>
            + Dispatch<CohereBufferPathManagerV1, ()>
            + Dispatch<CohereSurfaceBufferPathV1, SurfacePathData>
            + BufferPathHandler
            + 'static,
    {
        let global = dh.create_global::<D, CohereBufferPathManagerV1, ()>(VERSION, ());
        Self { global, batches_sent: 0 }
    }

    /// The global, to remove it.
    pub fn global(&self) -> GlobalId {
        self.global.clone()
    }

    /// Whether a client observes `surface`: only then is a report worth working out.
    pub fn observed(surface: &WlSurface) -> bool {
        with_states(surface, |states| {
            states.data_map.get::<Observed>().is_some_and(|o| o.0.lock().unwrap_or_else(|e| e.into_inner()).is_some())
        })
    }

    /// Sends `report` to the surface's observer if it differs from the last batch sent.
    /// Returns whether a batch went out.
    pub fn publish(&mut self, surface: &WlSurface, report: &PathReport) -> bool {
        self.send(surface, report, Send::IfChanged)
    }

    fn send(&mut self, surface: &WlSurface, report: &PathReport, when: Send) -> bool {
        let sent = with_states(surface, |states| {
            let Some(observed) = states.data_map.get::<Observed>() else { return false };
            let mut guard = observed.0.lock().unwrap_or_else(|e| e.into_inner());
            let Some(observer) = guard.as_mut() else { return false };
            if when == Send::IfChanged && observer.last.as_ref().is_some_and(|last| !last.differs(report)) {
                return false;
            }
            send_batch(&observer.resource, report);
            observer.last = Some(report.clone());
            true
        });
        self.batches_sent += u64::from(sent);
        sent
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Send {
    IfChanged,
    Always,
}

fn dev_t(device: Option<crate::coherency::DeviceId>) -> Vec<u8> {
    device.map(|d| d.0.to_ne_bytes().to_vec()).unwrap_or_default()
}

fn send_batch(resource: &CohereSurfaceBufferPathV1, report: &PathReport) {
    for c in &report.consumers {
        let (consumer, device) = match c.consumer {
            Consumer::Render => (wire::Consumer::Render, None),
            Consumer::Display(d) => (wire::Consumer::Display, Some(d)),
            Consumer::Cpu => (wire::Consumer::Cpu, None),
        };
        resource.consumer(consumer, dev_t(device), wire_path(c.path), wire_reason(c.reason), c.detail.clone());
    }
    if let Some(p) = report.presented {
        let outcome = match p.outcome {
            Outcome::ZeroCopy => wire::Outcome::ZeroCopy,
            Outcome::Composited => wire::Outcome::Composited,
            Outcome::Copied => wire::Outcome::Copied,
            Outcome::Withheld => wire::Outcome::Withheld,
        };
        resource.presented(outcome, wire_reason(p.reason), (p.bytes_copied >> 32) as u32, p.bytes_copied as u32);
    }
    for a in &report.hints {
        let hint = match a.hint {
            Hint::AllocateFromScanoutDevice(_) => wire::Hint::AllocateFromScanoutDevice,
            Hint::AllocateWriteCombined => wire::Hint::AllocateWriteCombined,
            Hint::AllocateCached => wire::Hint::AllocateCached,
            Hint::UseScanoutTranche(_) => wire::Hint::UseScanoutTranche,
            Hint::UseDifferentFormat(_) => wire::Hint::UseDifferentFormat,
        };
        resource.hint(hint, dev_t(a.hint.device()), a.detail.clone());
    }
    resource.done();
}

fn wire_path(path: Path) -> wire::Path {
    match path {
        Path::Direct => wire::Path::Direct,
        Path::DirectWithMaintenance => wire::Path::DirectWithMaintenance,
        Path::Composite => wire::Path::Composite,
        Path::CpuCopy => wire::Path::CpuCopy,
        Path::Reject => wire::Path::Reject,
    }
}

fn wire_reason(reason: Reason) -> wire::Reason {
    match reason {
        Reason::Coherent => wire::Reason::Coherent,
        Reason::NotDmaBuf => wire::Reason::NotDmaBuf,
        Reason::CannotImport => wire::Reason::CannotImport,
        Reason::NotCoherentWithSync => wire::Reason::NotCoherentWithSync,
        Reason::NotCoherentNoSync => wire::Reason::NotCoherentNoSync,
        Reason::CpuRendererUncached => wire::Reason::CpuRendererUncached,
        Reason::NotMappable => wire::Reason::NotMappable,
        Reason::FormatOrModifier => wire::Reason::FormatOrModifier,
        Reason::PlaneUnavailable => wire::Reason::PlaneUnavailable,
        Reason::FencePending => wire::Reason::FencePending,
    }
}

/// Sends the surface's report now, whatever was sent before.
fn send_now<D: BufferPathHandler>(state: &mut D, surface: &WlSurface) {
    let report = state.surface_path(surface);
    if let Some(paths) = state.buffer_path_state() {
        paths.send(surface, &report, Send::Always);
    }
}

/// Forgets `resource` as its surface's observer (it was destroyed).
fn forget(data: &SurfacePathData, resource: &CohereSurfaceBufferPathV1) {
    let Ok(surface) = data.surface.upgrade() else { return };
    if !surface.is_alive() {
        return;
    }
    with_states(&surface, |states| {
        if let Some(observed) = states.data_map.get::<Observed>() {
            let mut guard = observed.0.lock().unwrap_or_else(|e| e.into_inner());
            if guard.as_ref().is_some_and(|o| &o.resource == resource) {
                *guard = None;
            }
        }
    });
}

impl<D> GlobalDispatch<CohereBufferPathManagerV1, (), D> for BufferPathState
where
    D: GlobalDispatch<CohereBufferPathManagerV1, ()>
        + Dispatch<CohereBufferPathManagerV1, ()>
        + Dispatch<CohereSurfaceBufferPathV1, SurfacePathData>
        + BufferPathHandler
        + 'static,
{
    fn bind(
        _state: &mut D,
        _dh: &DisplayHandle,
        _client: &Client,
        resource: New<CohereBufferPathManagerV1>,
        _data: &(),
        init: &mut DataInit<'_, D>,
    ) {
        init.init(resource, ());
    }
}

impl<D> Dispatch<CohereBufferPathManagerV1, (), D> for BufferPathState
where
    D: Dispatch<CohereBufferPathManagerV1, ()> + Dispatch<CohereSurfaceBufferPathV1, SurfacePathData> + BufferPathHandler + 'static,
{
    fn request(
        state: &mut D,
        _client: &Client,
        manager: &CohereBufferPathManagerV1,
        request: cohere_buffer_path_manager_v1::Request,
        _data: &(),
        _dh: &DisplayHandle,
        init: &mut DataInit<'_, D>,
    ) {
        match request {
            cohere_buffer_path_manager_v1::Request::GetSurfacePath { id, surface } => {
                let resource = init.init(id, SurfacePathData { surface: surface.downgrade() });
                let taken = with_states(&surface, |states| {
                    let observed = states.data_map.get_or_insert_threadsafe(Observed::default);
                    let mut guard = observed.0.lock().unwrap_or_else(|e| e.into_inner());
                    if guard.is_some() {
                        return true;
                    }
                    *guard = Some(Observer { resource, last: None });
                    false
                });
                if taken {
                    manager.post_error(
                        cohere_buffer_path_manager_v1::Error::SurfaceExists,
                        format!("{} already has a cohere_surface_buffer_path_v1", surface.id()),
                    );
                    return;
                }
                send_now(state, &surface);
            }
            cohere_buffer_path_manager_v1::Request::Destroy => {}
        }
    }
}

impl<D> Dispatch<CohereSurfaceBufferPathV1, SurfacePathData, D> for BufferPathState
where
    D: Dispatch<CohereSurfaceBufferPathV1, SurfacePathData> + BufferPathHandler + 'static,
{
    fn request(
        state: &mut D,
        _client: &Client,
        resource: &CohereSurfaceBufferPathV1,
        request: wire::Request,
        data: &SurfacePathData,
        _dh: &DisplayHandle,
        _init: &mut DataInit<'_, D>,
    ) {
        match request {
            wire::Request::Destroy => forget(data, resource),
            wire::Request::Update => match data.surface.upgrade() {
                Ok(surface) if surface.is_alive() => send_now(state, &surface),
                _ => resource.post_error(wire::Error::NoSurface, "the wl_surface was destroyed"),
            },
        }
    }

    fn destroyed(
        _state: &mut D,
        _client: smithay::reexports::wayland_server::backend::ClientId,
        resource: &CohereSurfaceBufferPathV1,
        data: &SurfacePathData,
    ) {
        forget(data, resource);
    }
}

/// Implements the cohere-buffer-path-v1 dispatch for a state type that implements
/// [`BufferPathHandler`].
#[macro_export]
macro_rules! delegate_buffer_path {
    ($(@<$( $lt:tt $( : $clt:tt $(+ $dlt:tt )* )? ),+>)? $ty: ty) => {
        $crate::reexports::smithay::reexports::wayland_server::delegate_global_dispatch!($(@< $( $lt $( : $clt $(+ $dlt )* )? ),+ >)? $ty: [
            $crate::buffer_path::protocol::server::cohere_buffer_path_manager_v1::CohereBufferPathManagerV1: ()
        ] => $crate::buffer_path::BufferPathState);
        $crate::reexports::smithay::reexports::wayland_server::delegate_dispatch!($(@< $( $lt $( : $clt $(+ $dlt )* )? ),+ >)? $ty: [
            $crate::buffer_path::protocol::server::cohere_buffer_path_manager_v1::CohereBufferPathManagerV1: ()
        ] => $crate::buffer_path::BufferPathState);
        $crate::reexports::smithay::reexports::wayland_server::delegate_dispatch!($(@< $( $lt $( : $clt $(+ $dlt )* )? ),+ >)? $ty: [
            $crate::buffer_path::protocol::server::cohere_surface_buffer_path_v1::CohereSurfaceBufferPathV1: $crate::buffer_path::SurfacePathData
        ] => $crate::buffer_path::BufferPathState);
    };
}
