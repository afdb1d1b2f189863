//! linux-dmabuf (zwp_linux_dmabuf_v1, versions 3 to 5), owned by cohere.
//!
//! smithay 0.7's own params handling can panic on crafted sizes and accepts fds that aren't
//! dma-bufs, so cohere implements the protocol itself: [`params`] validates every request, and
//! a buffer that passes becomes a smithay [`Dmabuf`] (planes in plane_idx order) stored as the
//! `wl_buffer`'s user data, so smithay's renderers and `get_dmabuf()` keep working. Between
//! validation and the answer, [`ImportHandler::import_buffer`] decides (renderer test import,
//! coherency plan).
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

use smithay::backend::allocator::dmabuf::Dmabuf;
use smithay::backend::allocator::{Format, Modifier};
use smithay::reexports::wayland_protocols::wp::linux_dmabuf::zv1::server::zwp_linux_dmabuf_feedback_v1::ZwpLinuxDmabufFeedbackV1;
use smithay::reexports::wayland_protocols::wp::linux_dmabuf::zv1::server::zwp_linux_dmabuf_v1::ZwpLinuxDmabufV1;
use smithay::reexports::wayland_server::backend::GlobalId;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::reexports::wayland_server::{DisplayHandle, GlobalDispatch, Weak};
use smithay::wayland::buffer::BufferHandler;

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
