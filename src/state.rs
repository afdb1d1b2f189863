//! `State { backend, core }` and the protocol handlers that need no backend-specific knowledge.
//! Handlers that do (linux-dmabuf import) are implemented on the concrete backend's state in
//! that backend's module.

use smithay::backend::renderer::utils::on_commit_buffer_handler;
use smithay::input::{Seat, SeatHandler, SeatState};
use smithay::reexports::wayland_server::protocol::wl_buffer::WlBuffer;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::reexports::wayland_server::Client;
use smithay::wayland::buffer::BufferHandler;
use smithay::wayland::compositor::{
    add_pre_commit_hook, get_parent, is_sync_subsurface, CompositorClientState, CompositorHandler, CompositorState,
};
use smithay::wayland::output::OutputHandler;
use smithay::wayland::shm::{ShmHandler, ShmState};
use smithay::{delegate_compositor, delegate_output, delegate_presentation, delegate_seat, delegate_shm, delegate_viewporter};

use crate::backend::Backend;
use crate::core::{ClientState, Core};

/// The whole compositor state, split so handlers can borrow the backend and the core at once.
pub struct State<B: Backend> {
    /// The backend: renderer, outputs' targets, import, coherency.
    pub backend: B,
    /// Everything else.
    pub core: Core<B>,
}

impl<B: Backend> CompositorHandler for State<B> {
    fn compositor_state(&mut self) -> &mut CompositorState {
        &mut self.core.globals.compositor
    }

    fn client_compositor_state<'a>(&self, client: &'a Client) -> &'a CompositorClientState {
        match client.get_data::<ClientState>() {
            Some(data) => &data.compositor_state,
            // Every client cohere accepts is inserted with ClientState; an embedder that inserts
            // its own data gets a shared default instead of a panic.
            None => fallback_client_state(),
        }
    }

    fn new_surface(&mut self, surface: &WlSurface) {
        add_pre_commit_hook::<Self, _>(surface, |state, _dh, surface| crate::commit::pre_commit(state, surface));
    }

    fn commit(&mut self, surface: &WlSurface) {
        let attached = crate::commit::attached(surface);
        self.backend.import().orient(surface);
        on_commit_buffer_handler::<Self>(surface);
        crate::commit::committed(self, surface, attached);
        if !is_sync_subsurface(surface) {
            let mut root = surface.clone();
            while let Some(parent) = get_parent(&root) {
                root = parent;
            }
            if let Some(window) = self.core.window_for_surface(&root) {
                window.on_commit();
                self.core.relayout_after_commit(&window);
            }
        }
        crate::shell::ensure_initial_configure(self, surface);
        self.core.popups.commit(surface);
        self.backend.surface_committed(surface);
        self.publish_paths([surface]);
        self.backend.schedule_redraw();
    }
}

impl<B: Backend> State<B> {
    /// Offers the globals `options` ask for that need the backend's facts.
    pub(crate) fn offer_globals(&mut self, options: &crate::Options) {
        self.core.offer_explicit_sync(self.backend.coherency().machine());
        if options.buffer_path == crate::compositor::Offer::Offered {
            self.core.offer_buffer_path();
        }
        self.core.coherency_options = options.coherency.clone();
    }

    /// Reads the quirk database and the user's overrides again and plans every live buffer
    /// again with them: buffers are marked for planes anew, and clients that observe their
    /// buffer paths are told what changed. On an error nothing changes.
    pub fn reload_coherency(&mut self) -> Result<(), crate::coherency::QuirkError> {
        let quirks = self.core.coherency_options.load().inspect_err(|_| self.core.config_reload_failures += 1)?;
        self.backend.coherency_mut().reload(quirks);
        self.plans_changed();
        Ok(())
    }

    /// Every live buffer's plan changed (configuration reload, hotplug).
    pub(crate) fn plans_changed(&mut self) {
        self.backend.plans_changed();
        self.publish_all_paths();
        self.backend.schedule_redraw();
    }
}

impl<B: Backend> crate::commit::CommitHandler for State<B> {
    fn commit_state(&mut self) -> &mut crate::commit::CommitState {
        &mut self.core.commits
    }

    fn coherency(&self) -> &crate::coherency::CoherencyState {
        self.backend.coherency()
    }

    fn scanout_devices(&self) -> Vec<crate::coherency::DeviceId> {
        self.backend.scanout_devices()
    }

    fn loop_handle(&self) -> smithay::reexports::calloop::LoopHandle<'static, Self> {
        self.core.loop_handle.clone()
    }

    fn display_handle(&self) -> smithay::reexports::wayland_server::DisplayHandle {
        self.core.display_handle.clone()
    }

    fn surface_copied(&mut self, surface: &WlSurface, bytes: u64) {
        self.core.surface_copied(surface, bytes);
    }

    fn y_inverted(&self, dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf) -> bool {
        self.backend.import().is_y_inverted(dmabuf)
    }
}

fn fallback_client_state() -> &'static CompositorClientState {
    static FALLBACK: std::sync::OnceLock<CompositorClientState> = std::sync::OnceLock::new();
    FALLBACK.get_or_init(CompositorClientState::default)
}

impl<B: Backend> BufferHandler for State<B> {
    fn buffer_destroyed(&mut self, _buffer: &WlBuffer) {}
}

impl<B: Backend> ShmHandler for State<B> {
    fn shm_state(&self) -> &ShmState {
        &self.core.globals.shm
    }
}

impl<B: Backend> SeatHandler for State<B> {
    type KeyboardFocus = WlSurface;
    type PointerFocus = WlSurface;
    type TouchFocus = WlSurface;

    fn seat_state(&mut self) -> &mut SeatState<Self> {
        &mut self.core.globals.seat_state
    }

    fn focus_changed(&mut self, _seat: &Seat<Self>, focused: Option<&WlSurface>) {
        tracing::trace!(?focused, "keyboard focus");
    }

    fn cursor_image(&mut self, _seat: &Seat<Self>, image: smithay::input::pointer::CursorImageStatus) {
        self.core.cursor.status = image;
    }
}

impl<B: Backend> OutputHandler for State<B> {}

impl<B: Backend> crate::sync::explicit::SyncobjHandler for State<B> {
    fn syncobj_state(&mut self) -> Option<&mut crate::sync::explicit::SyncobjState> {
        self.core.syncobj.as_mut()
    }
}

crate::delegate_syncobj!(@<B: Backend + 'static> State<B>);

delegate_compositor!(@<B: Backend + 'static> State<B>);
delegate_shm!(@<B: Backend + 'static> State<B>);
delegate_seat!(@<B: Backend + 'static> State<B>);
delegate_output!(@<B: Backend + 'static> State<B>);
delegate_presentation!(@<B: Backend + 'static> State<B>);
delegate_viewporter!(@<B: Backend + 'static> State<B>);
