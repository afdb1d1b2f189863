//! linux-dmabuf (zwp_linux_dmabuf_v1, versions 3 to 5), owned by cohere.
//!
//! smithay 0.7's own params handling can panic on crafted sizes and accepts fds that aren't
//! dma-bufs, so cohere implements the protocol itself: [`params`] validates every request, and
//! a buffer that passes becomes a smithay [`Dmabuf`] (planes in plane_idx order) stored as the
//! `wl_buffer`'s user data, so smithay's renderers and `get_dmabuf()` keep working. Between
//! validation and the answer, [`ImportHandler::import_buffer`] decides (renderer test import,
//! coherency plan). A buffer created with `y_invert` is flipped through the surface's buffer
//! transform: call [`ImportState::orient`] in `CompositorHandler::commit`, before smithay's
//! `on_commit_buffer_handler`.
//!
//! # How to use
//!
//! ```
//! use cohere::import::{ImportConfig, ImportHandler, ImportRejected, ImportState};
//! use smithay::backend::allocator::{dmabuf::Dmabuf, Format, Fourcc, Modifier};
//! use smithay::reexports::wayland_server::{protocol::wl_buffer::WlBuffer, Display};
//! use smithay::wayland::buffer::BufferHandler;
//!
//! struct MyState {
//!     import: ImportState,
//! }
//!
//! impl BufferHandler for MyState {
//!     fn buffer_destroyed(&mut self, _buffer: &WlBuffer) {}
//! }
//!
//! impl ImportHandler for MyState {
//!     fn import_state(&mut self) -> &mut ImportState {
//!         &mut self.import
//!     }
//!     fn import_buffer(&mut self, dmabuf: &Dmabuf) -> Result<(), ImportRejected> {
//!         // Test-import into your renderer here; an Err becomes `failed` for the client.
//!         let _ = dmabuf;
//!         Ok(())
//!     }
//! }
//!
//! cohere::delegate_import!(MyState);
//!
//! let display = Display::<MyState>::new().unwrap();
//! let config = ImportConfig {
//!     formats: vec![Format { code: Fourcc::Xrgb8888, modifier: Modifier::Linear }],
//!     // The render node's dev_t enables versions 4 and 5 (feedback).
//!     main_device: None,
//!     implicit_modifier: Default::default(),
//! };
//! let import = ImportState::new::<MyState>(&display.handle(), config).unwrap();
//! let _state = MyState { import };
//! ```

mod accept;
mod dispatch;
pub mod feedback;
pub mod format;
pub mod params;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use smithay::backend::allocator::dmabuf::{Dmabuf, WeakDmabuf};
use smithay::backend::allocator::{Format, Modifier};
use smithay::reexports::wayland_protocols::wp::linux_dmabuf::zv1::server::zwp_linux_dmabuf_feedback_v1::ZwpLinuxDmabufFeedbackV1;
use smithay::reexports::wayland_protocols::wp::linux_dmabuf::zv1::server::zwp_linux_dmabuf_v1::ZwpLinuxDmabufV1;
use smithay::reexports::wayland_server::backend::GlobalId;
use smithay::reexports::wayland_server::protocol::wl_output::Transform;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::reexports::wayland_server::{DisplayHandle, GlobalDispatch, Weak};
use smithay::wayland::buffer::BufferHandler;
use smithay::wayland::compositor::{with_states, BufferAssignment, SurfaceAttributes};

pub use accept::{plan_and_test_import, wants_test_import};
pub use dispatch::{FeedbackData, ImportGlobalData, ParamsData};
pub use feedback::{Feedback, FormatTable, FormatTableError, Tranche};

/// What the linux-dmabuf global advertises.
#[derive(Debug, Clone, Default)]
pub struct ImportConfig {
    /// (format, modifier) pairs the compositor can import. Formats cohere has no layout for
    /// (see [`format::layout`]) are dropped, so every advertised format gets full bounds checks.
    pub formats: Vec<Format>,
    /// dev_t of the main (render) device. With one, versions 4 and 5 (feedback) are offered;
    /// without, version 3 (format and modifier events).
    pub main_device: Option<u64>,
    /// What a buffer with the implicit modifier (DRM_FORMAT_MOD_INVALID) means here.
    pub implicit_modifier: ImplicitModifier,
}

/// The implicit modifier says "the layout the allocating driver uses by default". Only the
/// machine facts can say what that is, so the embedder decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ImplicitModifier {
    /// Not advertised; a buffer with it is an INVALID_FORMAT error.
    #[default]
    Refuse,
    /// Every device here allocates it linearly (see
    /// [`MachineFacts::implicit_modifier_linear`](crate::coherency::MachineFacts::implicit_modifier_linear)):
    /// it is advertised next to each LINEAR format, validated as linear, and the buffer is
    /// handed on as LINEAR, so renderers that only read linear memory (pixman) can import it.
    /// Clients on drivers without modifier support (Mesa's kms_swrast) need this.
    AsLinear,
}

/// Why the import hook refused a validated buffer; the client gets `failed` (create) or
/// INVALID_WL_BUFFER (create_immed), and the reason goes to the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ImportRejected(pub String);

#[derive(Debug, thiserror::Error)]
/// Why linux-dmabuf couldn't be offered.
pub enum ImportError {
    #[error(transparent)]
    /// The format table couldn't be made.
    FormatTable(#[from] FormatTableError),
}

/// Counters of what clients did with linux-dmabuf.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImportCounters {
    /// Buffers created.
    pub imported: u64,
    /// `failed` answers.
    pub failed: u64,
    /// Protocol errors sent.
    pub protocol_errors: u64,
}

/// State of the linux-dmabuf global.
#[derive(Debug)]
pub struct ImportState {
    global: GlobalId,
    version: u32,
    table: FormatTable,
    implicit_modifier: ImplicitModifier,
    default_feedback: Option<Feedback>,
    surface_feedbacks: Vec<(Weak<ZwpLinuxDmabufFeedbackV1>, Weak<WlSurface>, Option<Feedback>)>,
    /// Live buffers created with `y_invert` (which their `Dmabuf` doesn't carry, see
    /// [`params::Params::create`]).
    y_inverted: YInverted,
    /// What was imported or refused.
    pub counters: ImportCounters,
}

/// The embedder's side of linux-dmabuf.
pub trait ImportHandler: BufferHandler {
    /// Where the state lives.
    fn import_state(&mut self) -> &mut ImportState;

    /// Accepts or refuses a buffer that passed validation (test import, coherency plan).
    fn import_buffer(&mut self, dmabuf: &Dmabuf) -> Result<(), ImportRejected>;

    /// Per-surface feedback; `None` sends the default feedback.
    fn surface_feedback(&mut self, _surface: &WlSurface) -> Option<Feedback> {
        None
    }
}

impl ImportState {
    /// Creates the zwp_linux_dmabuf_v1 global.
    pub fn new<D>(display: &DisplayHandle, config: ImportConfig) -> Result<Self, ImportError>
    where
        D: GlobalDispatch<ZwpLinuxDmabufV1, ImportGlobalData> + ImportHandler + 'static,
    {
        let (mut formats, unknown): (Vec<Format>, Vec<Format>) = config.formats.into_iter().partition(|f| format::layout(f.code).is_some());
        let mut unknown_codes: Vec<String> = unknown.iter().map(|f| f.code.to_string()).collect();
        unknown_codes.dedup();
        if !unknown_codes.is_empty() {
            // Without a plane layout, validation couldn't bounds-check such a buffer.
            tracing::info!(formats = %unknown_codes.join(" "), "not advertised: no plane layout to check buffers against");
        }
        if config.implicit_modifier == ImplicitModifier::AsLinear {
            let implicit = formats
                .iter()
                .filter(|f| f.modifier == Modifier::Linear)
                .map(|f| Format { code: f.code, modifier: Modifier::Invalid })
                .collect::<Vec<_>>();
            formats.extend(implicit);
        }
        let table = FormatTable::new(&formats)?;
        // Every import reads fdinfo through one kept descriptor: open it now, with the
        // global, rather than in the middle of the first client's import.
        crate::coherency::keep_fdinfo_dir();
        let version = if config.main_device.is_some() { 5 } else { 3 };
        let default_feedback = config.main_device.map(|dev| Feedback::render_only(dev, table.formats()));
        let global = display.create_global::<D, ZwpLinuxDmabufV1, _>(version, ImportGlobalData { _private: () });
        tracing::info!(version, formats = table.formats().len(), main_device = ?config.main_device, "linux-dmabuf global");
        Ok(Self {
            global,
            version,
            table,
            implicit_modifier: config.implicit_modifier,
            default_feedback,
            surface_feedbacks: Vec::new(),
            y_inverted: YInverted::default(),
            counters: ImportCounters::default(),
        })
    }

    /// The advertised (format, modifier) pairs, in format-table order.
    pub fn formats(&self) -> &[Format] {
        self.table.formats()
    }

    /// What the implicit modifier means here.
    pub fn implicit_modifier(&self) -> ImplicitModifier {
        self.implicit_modifier
    }

    /// The version the global is offered at.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The global.
    pub fn global(&self) -> &GlobalId {
        &self.global
    }

    /// The default feedback (v4 and later), if there is a main device.
    pub fn default_feedback(&self) -> Option<&Feedback> {
        self.default_feedback.as_ref()
    }

    /// Whether `dmabuf` (a live buffer of this global) was created with `y_invert`.
    pub fn is_y_inverted(&self, dmabuf: &Dmabuf) -> bool {
        self.y_inverted.contains(dmabuf)
    }

    /// The set of y_invert buffers, shared (for a scanout filter: see
    /// [`crate::path::direct::ScanoutFilter::keeping_off`]).
    pub fn y_inverted(&self) -> YInverted {
        self.y_inverted.clone()
    }

    /// Folds a `y_invert` buffer's vertical flip into the buffer transform of the commit being
    /// applied to `surface`. Call it in `CompositorHandler::commit` before smithay's
    /// `on_commit_buffer_handler`, which takes the transform with the buffer. Only the applied
    /// (current) state changes: the client's own transform stays pending for its next commit.
    pub fn orient(&self, surface: &WlSurface) {
        if self.y_inverted.is_empty() {
            return;
        }
        with_states(surface, |states| {
            let mut guard = states.cached_state.get::<SurfaceAttributes>();
            let attrs = guard.current();
            let Some(BufferAssignment::NewBuffer(buffer)) = &attrs.buffer else { return };
            let Ok(dmabuf) = smithay::wayland::dmabuf::get_dmabuf(buffer) else { return };
            if self.is_y_inverted(dmabuf) {
                attrs.buffer_transform = flip_rows(attrs.buffer_transform);
            }
        });
    }

    /// Whether a client asked for `surface`'s feedback (and the object still lives).
    pub fn has_surface_feedback(&self, surface: &WlSurface) -> bool {
        self.surface_feedbacks.iter().any(|(f, s, _)| f.upgrade().is_ok() && s.upgrade().is_ok_and(|s| &s == surface))
    }

    /// Sends `feedback` (or the default) to `surface`'s feedback objects whose last feedback
    /// differs: called when the surface's buffer, and so its plan, changed.
    pub fn update_surface_feedback(&mut self, surface: &WlSurface, feedback: Option<Feedback>) {
        let feedback = feedback.or_else(|| self.default_feedback.clone());
        self.surface_feedbacks.retain(|(f, s, _)| f.upgrade().is_ok() && s.upgrade().is_ok());
        for (resource, s, last) in &mut self.surface_feedbacks {
            let (Ok(resource), Ok(s)) = (resource.upgrade(), s.upgrade()) else { continue };
            if &s != surface || *last == feedback {
                continue;
            }
            if let Some(f) = &feedback {
                f.send(&resource, &self.table);
            }
            *last = feedback.clone();
        }
    }
}

/// The dma-buf of `surface`'s current buffer, if it is one (cohere's `wl_buffer`s carry their
/// `Dmabuf` as user data). It locks the surface's state: inside a `with_states` or
/// `with_surface_tree_*` callback, which holds that lock already, use [`states_dmabuf`].
pub fn surface_dmabuf(surface: &WlSurface) -> Option<Dmabuf> {
    smithay::wayland::compositor::with_states(surface, states_dmabuf)
}

/// The dma-buf of the current buffer of the surface whose `states` these are: the lookup for
/// code that already holds them (a `with_states` or `with_surface_tree_*` callback).
pub fn states_dmabuf(states: &smithay::wayland::compositor::SurfaceData) -> Option<Dmabuf> {
    let data = states.data_map.get::<smithay::backend::renderer::utils::RendererSurfaceStateUserData>()?;
    let data = data.lock().unwrap_or_else(|e| e.into_inner());
    data.buffer().and_then(|b| smithay::wayland::dmabuf::get_dmabuf(b).ok().cloned())
}

/// Delegates linux-dmabuf and dma-buf `wl_buffer`s of `$ty` to [`ImportState`]. `$ty` must
/// implement [`ImportHandler`].
#[macro_export]
macro_rules! delegate_import {
    ($(@<$( $lt:tt $( : $clt:tt $(+ $dlt:tt )* )? ),+>)? $ty: ty) => {
        $crate::reexports::smithay::reexports::wayland_server::delegate_global_dispatch!($(@< $( $lt $( : $clt $(+ $dlt )* )? ),+ >)? $ty: [
            $crate::reexports::smithay::reexports::wayland_protocols::wp::linux_dmabuf::zv1::server::zwp_linux_dmabuf_v1::ZwpLinuxDmabufV1: $crate::import::ImportGlobalData
        ] => $crate::import::ImportState);
        $crate::reexports::smithay::reexports::wayland_server::delegate_dispatch!($(@< $( $lt $( : $clt $(+ $dlt )* )? ),+ >)? $ty: [
            $crate::reexports::smithay::reexports::wayland_protocols::wp::linux_dmabuf::zv1::server::zwp_linux_dmabuf_v1::ZwpLinuxDmabufV1: ()
        ] => $crate::import::ImportState);
        $crate::reexports::smithay::reexports::wayland_server::delegate_dispatch!($(@< $( $lt $( : $clt $(+ $dlt )* )? ),+ >)? $ty: [
            $crate::reexports::smithay::reexports::wayland_protocols::wp::linux_dmabuf::zv1::server::zwp_linux_buffer_params_v1::ZwpLinuxBufferParamsV1: $crate::import::ParamsData
        ] => $crate::import::ImportState);
        $crate::reexports::smithay::reexports::wayland_server::delegate_dispatch!($(@< $( $lt $( : $clt $(+ $dlt )* )? ),+ >)? $ty: [
            $crate::reexports::smithay::reexports::wayland_protocols::wp::linux_dmabuf::zv1::server::zwp_linux_dmabuf_feedback_v1::ZwpLinuxDmabufFeedbackV1: $crate::import::FeedbackData
        ] => $crate::import::ImportState);
        $crate::reexports::smithay::reexports::wayland_server::delegate_dispatch!($(@< $( $lt $( : $clt $(+ $dlt )* )? ),+ >)? $ty: [
            $crate::reexports::smithay::reexports::wayland_server::protocol::wl_buffer::WlBuffer: $crate::reexports::smithay::backend::allocator::dmabuf::Dmabuf
        ] => $crate::import::ImportState);
    };
}

/// The live buffers created with `y_invert`, shared between the linux-dmabuf global (which
/// adds and removes them) and whoever must treat them apart.
#[derive(Debug, Clone, Default)]
pub struct YInverted(Arc<Mutex<HashSet<WeakDmabuf>>>);

impl YInverted {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<WeakDmabuf>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `dmabuf` is one of them.
    pub fn contains(&self, dmabuf: &Dmabuf) -> bool {
        self.set().contains(&dmabuf.weak())
    }

    fn is_empty(&self) -> bool {
        self.set().is_empty()
    }

    pub(crate) fn insert(&self, dmabuf: &Dmabuf) {
        let mut set = self.set();
        // A buffer whose client left before its wl_buffer existed never sees `destroyed`.
        set.retain(|weak| weak.upgrade().is_some());
        set.insert(dmabuf.weak());
    }

    pub(crate) fn remove(&self, dmabuf: &Dmabuf) {
        self.set().remove(&dmabuf.weak());
    }
}

/// The transform of a buffer whose rows are stored bottom to top, when the client declared
/// `transform` for it. smithay maps a surface point to the buffer with the transform
/// (`transform_point_in`); in the stored buffer that point is on the mirrored row, so the
/// result is the declared map followed by a row mirror (`Flipped180`). The unit test below
/// checks every case point by point.
pub fn flip_rows(transform: Transform) -> Transform {
    match transform {
        Transform::Normal => Transform::Flipped180,
        Transform::_90 => Transform::Flipped270,
        Transform::_180 => Transform::Flipped,
        Transform::_270 => Transform::Flipped90,
        Transform::Flipped => Transform::_180,
        Transform::Flipped90 => Transform::_270,
        Transform::Flipped180 => Transform::Normal,
        Transform::Flipped270 => Transform::_90,
        // The enum is non-exhaustive; no other transform exists in the protocol.
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use smithay::reexports::wayland_server::protocol::wl_output::Transform as Wl;
    use smithay::utils::{Logical, Point, Size, Transform};

    const ALL: [Wl; 8] = [Wl::Normal, Wl::_90, Wl::_180, Wl::_270, Wl::Flipped, Wl::Flipped90, Wl::Flipped180, Wl::Flipped270];

    /// smithay maps a surface point to the buffer with `transform_point_in`; a buffer stored
    /// bottom to top puts that point on the mirrored row. So the folded transform must map
    /// every point where the declared one does, then flip rows.
    #[test]
    fn flip_rows_maps_each_point_to_the_mirrored_row() {
        let area: Size<i32, Logical> = (4, 4).into();
        for declared in ALL {
            let folded: Transform = super::flip_rows(declared).into();
            let declared_t: Transform = declared.into();
            for x in 0..=4 {
                for y in 0..=4 {
                    let p: Point<i32, Logical> = (x, y).into();
                    let want = Transform::Flipped180.transform_point_in(declared_t.transform_point_in(p, &area), &area);
                    assert_eq!(folded.transform_point_in(p, &area), want, "{declared:?} at {p:?}");
                }
            }
            assert_eq!(super::flip_rows(super::flip_rows(declared)), declared, "flipping twice");
        }
    }
}
