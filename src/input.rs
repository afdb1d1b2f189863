//! Keyboard and pointer input from any smithay input backend (libinput on KMS): keys go to the
//! focused window, the pointer moves over the outputs, and a button press focuses and raises
//! the window under it (click to focus).

use smithay::backend::input::{
    AbsolutePositionEvent, Axis, AxisSource, ButtonState, Event, InputBackend, InputEvent, KeyboardKeyEvent, PointerAxisEvent,
    PointerButtonEvent, PointerMotionEvent,
};
use smithay::input::keyboard::FilterResult;
use smithay::input::pointer::{AxisFrame, ButtonEvent, MotionEvent, RelativeMotionEvent};
use smithay::utils::{Logical, Point, SERIAL_COUNTER};

use crate::backend::Backend;
use crate::State;

impl<B: Backend> State<B> {
    /// Handles one input event.
    pub fn process_input_event<I: InputBackend>(&mut self, event: InputEvent<I>) {
        match event {
            InputEvent::Keyboard { event } => {
                let Some(keyboard) = self.core.seat.get_keyboard() else { return };
                let serial = SERIAL_COUNTER.next_serial();
                let time = Event::time_msec(&event);
                keyboard.input::<(), _>(self, event.key_code(), event.state(), serial, time, |_, _, _| FilterResult::Forward);
            }
            InputEvent::PointerMotion { event } => {
                let delta = event.delta();
                let location = self.clamp_to_outputs(self.pointer_location() + delta);
                self.pointer_moved(location, Event::time_msec(&event));
                if let Some(pointer) = self.core.seat.get_pointer() {
                    let focus = self.surface_under(location);
                    pointer.relative_motion(
                        self,
                        focus,
                        &RelativeMotionEvent { delta, delta_unaccel: event.delta_unaccel(), utime: Event::time(&event) },
                    );
                    pointer.frame(self);
                }
            }
            InputEvent::PointerMotionAbsolute { event } => {
                let Some(output) = self.core.primary_output().cloned() else { return };
                let Some(geo) = self.core.space.output_geometry(&output) else { return };
                let location = event.position_transformed(geo.size) + geo.loc.to_f64();
                self.pointer_moved(location, Event::time_msec(&event));
            }
            InputEvent::PointerButton { event } => {
                let Some(pointer) = self.core.seat.get_pointer() else { return };
                let serial = SERIAL_COUNTER.next_serial();
                if event.state() == ButtonState::Pressed {
                    self.click_at(pointer.current_location());
                }
                pointer.button(
                    self,
                    &ButtonEvent { button: event.button_code(), state: event.state(), serial, time: Event::time_msec(&event) },
                );
                pointer.frame(self);
            }
            InputEvent::PointerAxis { event } => {
                let Some(pointer) = self.core.seat.get_pointer() else { return };
                let mut frame = AxisFrame::new(Event::time_msec(&event)).source(event.source());
                for axis in [Axis::Horizontal, Axis::Vertical] {
                    if let Some(amount) = event.amount(axis) {
                        frame = frame.value(axis, amount);
                    } else if event.source() == AxisSource::Finger {
                        frame = frame.stop(axis);
                    }
                }
                pointer.axis(self, frame);
                pointer.frame(self);
            }
            InputEvent::DeviceAdded { device } => {
                let name = smithay::backend::input::Device::name(&device);
                tracing::info!(device = %name, "input device added");
                self.core.input_devices.push(name);
            }
            InputEvent::DeviceRemoved { device } => {
                let name = smithay::backend::input::Device::name(&device);
                tracing::info!(device = %name, "input device removed");
                if let Some(i) = self.core.input_devices.iter().position(|d| *d == name) {
                    self.core.input_devices.remove(i);
                }
            }
            _ => {}
        }
    }

    fn pointer_location(&self) -> Point<f64, Logical> {
        self.core.seat.get_pointer().map(|p| p.current_location()).unwrap_or_default()
    }

    fn surface_under(
        &self,
        location: Point<f64, Logical>,
    ) -> Option<(smithay::reexports::wayland_server::protocol::wl_surface::WlSurface, Point<f64, Logical>)> {
        let (window, loc) = self.core.space.element_under(location)?;
        let (surface, surface_loc) = window.surface_under(location - loc.to_f64(), smithay::desktop::WindowSurfaceType::ALL)?;
        Some((surface, (surface_loc + loc).to_f64()))
    }

    fn pointer_moved(&mut self, location: Point<f64, Logical>, time: u32) {
        let Some(pointer) = self.core.seat.get_pointer() else { return };
        self.core.cursor.seen = true;
        let focus = self.surface_under(location);
        pointer.motion(self, focus, &MotionEvent { location, serial: SERIAL_COUNTER.next_serial(), time });
        pointer.frame(self);
    }

    /// Keeps the pointer inside the union of the outputs.
    fn clamp_to_outputs(&self, p: Point<f64, Logical>) -> Point<f64, Logical> {
        let geos: Vec<_> = self.core.outputs().filter_map(|o| self.core.space.output_geometry(o)).collect();
        if geos.iter().any(|g| g.to_f64().contains(p)) || geos.is_empty() {
            return p;
        }
        let max_x = geos.iter().map(|g| g.loc.x + g.size.w).max().unwrap_or(1) as f64 - 1.0;
        let max_y = geos.iter().map(|g| g.loc.y + g.size.h).max().unwrap_or(1) as f64 - 1.0;
        (p.x.clamp(0.0, max_x), p.y.clamp(0.0, max_y)).into()
    }
}
