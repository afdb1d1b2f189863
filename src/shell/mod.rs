//! Window policy: where toplevels go, what size they are told to be, and who has focus.
//!
//! The xdg-shell and xdg-decoration protocol handlers are in `xdg`; they call into the policy
//! here, which is the only place that decides placement. [`ShellMode::Kiosk`] behaves like cage:
//! every toplevel is fullscreen on its output, newest on top. [`ShellMode::Desktop`] stacks
//! windows at their own size with cascade placement, server-side title bars and click to focus.

mod xdg;

pub(crate) use xdg::ensure_initial_configure;

use smithay::desktop::Window;
use smithay::output::Output;
use smithay::reexports::wayland_protocols::xdg::shell::server::xdg_toplevel;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::reexports::wayland_server::Resource;
use smithay::utils::{Logical, Point, Rectangle, SERIAL_COUNTER};
use smithay::wayland::shell::xdg::ToplevelSurface;

use crate::backend::Backend;
use crate::core::Core;
use crate::State;

/// Height of the server-side title bar drawn above desktop windows, in logical pixels.
pub const TITLEBAR_HEIGHT: i32 = 24;
/// Offset between successive cascaded windows.
const CASCADE_STEP: i32 = 32;
/// After this many windows the cascade starts again at the top-left.
const CASCADE_WRAP: i32 = 10;

/// Which window policy the compositor runs.
///
/// Windows are always mapped with `activate = false`: activation belongs to `focus_window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShellMode {
    /// Every toplevel fullscreen on its output, newest on top (like cage).
    Kiosk,
    /// Overlapping windows at their own size, cascade placement, click to focus.
    #[default]
    Desktop,
}

/// Policy state that persists between requests.
#[derive(Debug)]
pub struct Shell {
    /// Kiosk or desktop.
    pub mode: ShellMode,
    cascade_index: i32,
}

impl Shell {
    /// The policy for `mode`.
    pub fn new(mode: ShellMode) -> Self {
        Self { mode, cascade_index: 0 }
    }

    fn next_cascade_slot(&mut self) -> i32 {
        let slot = self.cascade_index % CASCADE_WRAP;
        self.cascade_index = self.cascade_index.wrapping_add(1);
        slot
    }
}

impl<B: Backend> Core<B> {
    /// Maps a new toplevel according to the policy and returns it; the caller focuses it.
    pub(crate) fn place_new_toplevel(&mut self, surface: ToplevelSurface) -> Window {
        let window = Window::new_wayland_window(surface.clone());
        let Some(output) = self.primary_output().cloned() else {
            // No output yet: keep the window unmapped-but-tracked by mapping it at the origin; it
            // will be configured when an output appears.
            self.space.map_element(window.clone(), (0, 0), false);
            return window;
        };
        let location = match self.shell.mode {
            ShellMode::Kiosk => {
                self.configure_fullscreen(&surface, &output);
                self.output_origin(&output)
            }
            ShellMode::Desktop => {
                let slot = self.shell.next_cascade_slot();
                let origin = self.output_origin(&output);
                origin + Point::from((CASCADE_STEP + slot * CASCADE_STEP, TITLEBAR_HEIGHT + CASCADE_STEP + slot * CASCADE_STEP))
            }
        };
        self.space.map_element(window.clone(), location, false);
        window
    }

    /// Sets the pending state that makes `surface` cover `output` exactly.
    fn configure_fullscreen(&self, surface: &ToplevelSurface, output: &Output) {
        let size = self.output_size(output);
        surface.with_pending_state(|state| {
            state.states.set(xdg_toplevel::State::Fullscreen);
            state.states.set(xdg_toplevel::State::Activated);
            state.size = Some(size);
            state.fullscreen_output = surface.wl_surface().client().and_then(|client| output.client_outputs(&client).next());
        });
    }

    /// Re-places a fullscreen window after a commit changed its size. xdg-shell says a
    /// fullscreen surface that doesn't cover its output is centred, with the rest filled: a
    /// client that ignores the configured size (weston-simple-shm does) is shown centred on black.
    pub(crate) fn relayout_after_commit(&mut self, window: &Window) {
        let Some(toplevel) = window.toplevel() else { return };
        let fullscreen = toplevel.with_pending_state(|s| s.states.contains(xdg_toplevel::State::Fullscreen));
        if !fullscreen && self.shell.mode != ShellMode::Kiosk {
            return;
        }
        let output = toplevel
            .with_pending_state(|s| s.fullscreen_output.clone())
            .as_ref()
            .and_then(Output::from_resource)
            .or_else(|| self.primary_output().cloned());
        let Some(output) = output else { return };
        let Some(area) = self.space.output_geometry(&output) else { return };
        let size = window.geometry().size;
        let loc = area.loc + Point::from(((area.size.w - size.w).max(0) / 2, (area.size.h - size.h).max(0) / 2));
        if self.space.element_location(window) != Some(loc) {
            self.space.map_element(window.clone(), loc, false);
        }
    }

    /// Handles xdg_toplevel.set_fullscreen.
    pub(crate) fn request_fullscreen(&mut self, surface: &ToplevelSurface, output: Option<Output>) {
        let output = output.or_else(|| self.primary_output().cloned());
        if let Some(output) = output {
            self.configure_fullscreen(surface, &output);
            if let Some(window) = self.window_for_surface(surface.wl_surface()) {
                let origin = self.output_origin(&output);
                self.space.map_element(window, origin, false);
            }
        }
        if surface.is_initial_configure_sent() {
            surface.send_configure();
        }
    }

    /// Handles xdg_toplevel.unset_fullscreen. In kiosk mode windows stay fullscreen.
    pub(crate) fn request_unfullscreen(&mut self, surface: &ToplevelSurface) {
        if self.shell.mode == ShellMode::Kiosk {
            if surface.is_initial_configure_sent() {
                surface.send_configure();
            }
            return;
        }
        surface.with_pending_state(|state| {
            state.states.unset(xdg_toplevel::State::Fullscreen);
            state.size = None;
            state.fullscreen_output = None;
        });
        if let Some(window) = self.window_for_surface(surface.wl_surface()) {
            let slot = self.shell.next_cascade_slot();
            let origin = self.primary_output().map(|o| self.output_origin(o)).unwrap_or_default();
            let loc = origin + Point::from((CASCADE_STEP + slot * CASCADE_STEP, TITLEBAR_HEIGHT + CASCADE_STEP + slot * CASCADE_STEP));
            self.space.map_element(window, loc, false);
        }
        if surface.is_initial_configure_sent() {
            surface.send_configure();
        }
    }

    /// Removes a destroyed toplevel and returns the window now on top, which gets focus.
    pub(crate) fn remove_toplevel(&mut self, surface: &ToplevelSurface) -> Option<Window> {
        if let Some(window) = self.window_for_surface(surface.wl_surface()) {
            self.space.unmap_elem(&window);
        }
        self.space.elements().last().cloned()
    }

    /// The window whose root surface is `surface`.
    pub fn window_for_surface(&self, surface: &WlSurface) -> Option<Window> {
        self.space.elements().find(|w| w.toplevel().is_some_and(|t| t.wl_surface() == surface)).cloned()
    }

    /// The outputs showing `surface`'s window, topmost-first as the space orders them
    /// (subsurfaces count as their root's; a popup's surface has none of its own).
    pub fn outputs_showing(&self, surface: &WlSurface) -> Vec<smithay::output::Output> {
        let mut root = surface.clone();
        while let Some(parent) = smithay::wayland::compositor::get_parent(&root) {
            root = parent;
        }
        self.window_for_surface(&root).map(|w| self.space.outputs_for_element(&w)).unwrap_or_default()
    }

    /// The server-side title bar of a desktop window, as (rectangle, focused) in global logical
    /// coordinates. Kiosk and fullscreen windows get none.
    pub fn titlebar(&self, window: &Window) -> Option<(Rectangle<i32, Logical>, bool)> {
        if self.shell.mode != ShellMode::Desktop {
            return None;
        }
        let toplevel = window.toplevel()?;
        let states = toplevel.with_pending_state(|s| s.states.clone());
        if states.contains(xdg_toplevel::State::Fullscreen) {
            return None;
        }
        let geo = self.space.element_geometry(window)?;
        if geo.size.w <= 0 || geo.size.h <= 0 {
            return None;
        }
        let bar = Rectangle::new((geo.loc.x, geo.loc.y - TITLEBAR_HEIGHT).into(), (geo.size.w, TITLEBAR_HEIGHT).into());
        Some((bar, states.contains(xdg_toplevel::State::Activated)))
    }
}

impl<B: Backend> State<B> {
    /// Raises `window`, marks it activated and gives it keyboard focus; `None` clears focus.
    pub(crate) fn focus_window(&mut self, window: Option<&Window>) {
        let serial = SERIAL_COUNTER.next_serial();
        if let Some(window) = window {
            // Activation is done below, by us: Space's own would swallow the configure that
            // tells the previously focused window it lost activation.
            self.core.space.raise_element(window, false);
        }
        for w in self.core.space.elements() {
            let active = Some(w) == window;
            if w.set_activated(active) {
                if let Some(t) = w.toplevel() {
                    // send_configure, not send_pending_configure: the latter compares with the
                    // last *acked* state, so a change against an unacked configure is dropped.
                    if t.is_initial_configure_sent() {
                        t.send_configure();
                    }
                }
            }
        }
        let focus = window.and_then(|w| w.toplevel()).map(|t| t.wl_surface().clone());
        if let Some(t) = window.and_then(|w| w.toplevel()) {
            let title = smithay::wayland::compositor::with_states(t.wl_surface(), |s| {
                s.data_map
                    .get::<smithay::wayland::shell::xdg::XdgToplevelSurfaceData>()
                    .and_then(|d| d.lock().ok().and_then(|d| d.title.clone()))
            });
            tracing::debug!(title = title.as_deref().unwrap_or(""), "focused window");
        }
        if let Some(keyboard) = self.core.seat.get_keyboard() {
            keyboard.set_focus(self, focus, serial);
        }
    }

    /// Click to focus: a button press over a window raises and focuses it (desktop and kiosk).
    pub fn click_at(&mut self, location: Point<f64, Logical>) {
        let under = self.core.space.element_under(location).map(|(w, _)| w.clone());
        if let Some(window) = under {
            self.focus_window(Some(&window));
        }
    }
}
