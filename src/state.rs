//! `State { backend, core }` and the protocol handlers that need no backend-specific knowledge.
//! Handlers that do (linux-dmabuf import) are implemented on the concrete backend's state in
//! that backend's module.

use smithay::backend::renderer::utils::on_commit_buffer_handler;
use smithay::input::{Seat, SeatHandler, SeatState};
use smithay::reexports::wayland_server::protocol::wl_buffer::WlBuffer;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::reexports::wayland_server::Client;
use smithay::wayland::buffer::BufferHandler;
use smithay::reexports::calloop::generic::Generic;
use smithay::reexports::calloop::{Interest, Mode, PostAction};
use smithay::reexports::wayland_server::Resource;
use smithay::wayland::compositor::{
    add_blocker, add_pre_commit_hook, get_parent, is_sync_subsurface, with_states, BufferAssignment, CompositorClientState,
    CompositorHandler, CompositorState, SurfaceAttributes,
};
use smithay::wayland::output::OutputHandler;
use smithay::wayland::shm::{ShmHandler, ShmState};
use smithay::{
    delegate_compositor, delegate_output, delegate_presentation, delegate_seat, delegate_shm, delegate_viewporter,
};

use crate::backend::Backend;
use crate::core::{ClientState, Core};
use crate::sync::{Acquire, FenceBlocker, FenceFd};

/// The whole compositor state, split so handlers can borrow the backend and the core at once.
pub struct State<B: Backend> {
    pub backend: B,
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
        add_pre_commit_hook::<Self, _>(surface, |state, _dh, surface| state.hold_for_acquire_fence(surface));
    }

    fn commit(&mut self, surface: &WlSurface) {
        on_commit_buffer_handler::<Self>(surface);
        self.run_cpu_copy(surface);
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
        self.backend.schedule_redraw();
    }
}

impl<B: Backend> State<B> {
    /// A commit bringing a dma-buf that a device is still writing waits (a commit blocker) until
    /// the buffer's acquire fence signals; see [`crate::sync::acquire`].
    fn hold_for_acquire_fence(&mut self, surface: &WlSurface) {
        let dmabuf = with_states(surface, |states| {
            let mut attrs = states.cached_state.get::<SurfaceAttributes>();
            match attrs.pending().buffer.as_ref() {
                Some(BufferAssignment::NewBuffer(buffer)) => smithay::wayland::dmabuf::get_dmabuf(buffer).ok().cloned(),
                _ => None,
            }
        });
        let Some(dmabuf) = dmabuf else { return };
        let Acquire::Wait(fd) = crate::sync::acquire(&dmabuf) else { return };
        let Some(client) = surface.client() else { return };
        let blocker = FenceBlocker::default();
        let release = blocker.clone();
        let id = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let my_id = id.clone();
        let source = Generic::new(FenceFd(fd), Interest::READ, Mode::Level);
        let inserted = self.core.loop_handle.insert_source(source, move |_, _, state: &mut State<B>| {
            release.release();
            state.core.fence_signalled(my_id.get());
            let dh = state.core.display_handle.clone();
            state.client_compositor_state(&client).blocker_cleared(state, &dh);
            Ok(PostAction::Remove)
        });
        match inserted {
            Ok(token) => {
                add_blocker(surface, blocker);
                id.set(self.core.fence_wait_started(surface, token));
                tracing::debug!(surface = %surface.id(), "commit held until its buffer's acquire fence signals");
            }
            Err(err) => tracing::warn!(%err, "cannot watch an acquire fence; the commit goes ahead"),
        }
    }

    /// The CpuCopy executor's turn in a commit: when the surface's buffer is planned CpuCopy
    /// for the renderer, its damage is copied now; otherwise the surface is drawn as usual.
    fn run_cpu_copy(&mut self, surface: &WlSurface) {
        let dmabuf = smithay::backend::renderer::utils::with_renderer_surface_state(surface, |s| {
            s.buffer().and_then(|b| smithay::wayland::dmabuf::get_dmabuf(b).ok().cloned())
        })
        .flatten();
        let copy = dmabuf.filter(|d| {
            self.backend.coherency().plans.get(d).is_some_and(|p| p.render.1.path == crate::coherency::Path::CpuCopy)
        });
        let Some(dmabuf) = copy else {
            crate::path::cpu_copy::deactivate(surface);
            return;
        };
        match crate::path::cpu_copy::copy_commit(surface, &dmabuf) {
            Ok(copied) if copied.bytes > 0 => {
                self.core.counters.cpu_copies += 1;
                self.core.counters.bytes_copied += copied.bytes;
                let outputs = self.core.outputs_showing(surface);
                self.backend.surface_copied(&outputs, copied.bytes);
                tracing::trace!(bytes = copied.bytes, rects = copied.rects, "cpu copy");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, "cpu copy failed; the surface keeps its previous content"),
        }
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

delegate_compositor!(@<B: Backend + 'static> State<B>);
delegate_shm!(@<B: Backend + 'static> State<B>);
delegate_seat!(@<B: Backend + 'static> State<B>);
delegate_output!(@<B: Backend + 'static> State<B>);
delegate_presentation!(@<B: Backend + 'static> State<B>);
delegate_viewporter!(@<B: Backend + 'static> State<B>);
