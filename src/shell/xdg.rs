//! xdg-shell and xdg-decoration protocol handlers. They translate requests into calls on the
//! policy in the parent module and never decide placement themselves.

use smithay::delegate_xdg_decoration;
use smithay::delegate_xdg_shell;
use smithay::desktop::PopupKind;
use smithay::output::Output;
use smithay::reexports::wayland_protocols::xdg::decoration::zv1::server::zxdg_toplevel_decoration_v1::Mode as DecorationMode;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::reexports::wayland_server::protocol::{wl_output, wl_seat};
use smithay::utils::Serial;
use smithay::wayland::shell::xdg::decoration::XdgDecorationHandler;
use smithay::wayland::shell::xdg::{PopupSurface, PositionerState, ToplevelSurface, XdgShellHandler, XdgShellState};

use crate::backend::Backend;
use crate::State;

impl<B: Backend> XdgShellHandler for State<B> {
    fn xdg_shell_state(&mut self) -> &mut XdgShellState {
        &mut self.core.globals.xdg_shell
    }

    fn new_toplevel(&mut self, surface: ToplevelSurface) {
        // cohere only draws server-side decorations; say so before the first configure.
        surface.with_pending_state(|state| state.decoration_mode = Some(DecorationMode::ServerSide));
        let window = self.core.place_new_toplevel(surface);
        self.focus_window(Some(&window));
    }

    fn toplevel_destroyed(&mut self, surface: ToplevelSurface) {
        let top = self.core.remove_toplevel(&surface);
        self.focus_window(top.as_ref());
    }

    fn new_popup(&mut self, surface: PopupSurface, positioner: PositionerState) {
        surface.with_pending_state(|state| state.geometry = positioner.get_geometry());
        if let Err(err) = self.core.popups.track_popup(PopupKind::Xdg(surface)) {
            tracing::debug!(%err, "popup not tracked");
        }
    }

    fn reposition_request(&mut self, surface: PopupSurface, positioner: PositionerState, token: u32) {
        surface.with_pending_state(|state| {
            state.geometry = positioner.get_geometry();
            state.positioner = positioner;
        });
        surface.send_repositioned(token);
    }

    fn grab(&mut self, _surface: PopupSurface, _seat: wl_seat::WlSeat, _serial: Serial) {
        // Popup grabs are not supported yet; the popup stays mapped until the client dismisses it.
    }

    fn fullscreen_request(&mut self, surface: ToplevelSurface, output: Option<wl_output::WlOutput>) {
        let output = output.as_ref().and_then(Output::from_resource);
        self.core.request_fullscreen(&surface, output);
    }

    fn unfullscreen_request(&mut self, surface: ToplevelSurface) {
        self.core.request_unfullscreen(&surface);
    }
}

impl<B: Backend> XdgDecorationHandler for State<B> {
    fn new_decoration(&mut self, toplevel: ToplevelSurface) {
        toplevel.with_pending_state(|state| state.decoration_mode = Some(DecorationMode::ServerSide));
        if toplevel.is_initial_configure_sent() {
            toplevel.send_pending_configure();
        }
    }

    fn request_mode(&mut self, toplevel: ToplevelSurface, _mode: DecorationMode) {
        // Server-side only: the answer is the same whatever the client prefers.
        self.new_decoration(toplevel);
    }

    fn unset_mode(&mut self, toplevel: ToplevelSurface) {
        self.new_decoration(toplevel);
    }
}

/// Sends the initial configure for xdg surfaces on their first commit, as xdg-shell requires.
pub(crate) fn ensure_initial_configure<B: Backend>(state: &mut State<B>, surface: &WlSurface) {
    if let Some(window) = state.core.window_for_surface(surface) {
        if let Some(toplevel) = window.toplevel() {
            if !toplevel.is_initial_configure_sent() {
                toplevel.send_configure();
            }
        }
        return;
    }
    if let Some(PopupKind::Xdg(popup)) = state.core.popups.find_popup(surface) {
        if !popup.is_initial_configure_sent() {
            if let Err(err) = popup.send_configure() {
                tracing::debug!(?err, "popup initial configure");
            }
        }
    }
}

delegate_xdg_shell!(@<B: Backend + 'static> State<B>);
delegate_xdg_decoration!(@<B: Backend + 'static> State<B>);
