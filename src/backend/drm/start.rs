//! Starting the KMS backend: session, devices, hotplug and session pause/resume.

use smithay::backend::libinput::{LibinputInputBackend, LibinputSessionInterface};
use smithay::backend::session::libseat::LibSeatSession;
use smithay::backend::session::{Event as SessionEvent, Session};
use smithay::backend::udev::{UdevBackend, UdevEvent};
use smithay::reexports::calloop::EventLoop;
use smithay::reexports::input::Libinput;
use smithay::reexports::wayland_server::Display;

use super::{render_output, Device, Drm, DrmBackendError, Trigger};
use crate::compositor::{Compositor, Options, StartError};
use crate::core::Core;
use crate::State;

impl Compositor<Drm> {
    /// Starts cohere on KMS: needs a seat (libseat: seatd, logind or its builtin backend as
    /// root) and at least one connected display.
    pub fn new_drm(options: Options) -> Result<Self, StartError> {
        if options.screenshot.is_some() {
            return Err(StartError::Unsupported("--screenshot needs --headless for now".into()));
        }
        let event_loop: EventLoop<'static, State<Drm>> = EventLoop::try_new().map_err(StartError::EventLoop)?;
        let display: Display<State<Drm>> = Display::new().map_err(StartError::Display)?;
        let dh = display.handle();
        let (session, notifier) = LibSeatSession::new().map_err(DrmBackendError::Session)?;
        let seat = session.seat();
        let quirks = options.coherency.load()?;
        let main_device = options.dmabuf_main_device.or_else(crate::compositor::first_render_node);
        let decision = crate::backend::renderer::choose(options.renderer)?;
        let backend = Drm::new(session, event_loop.handle(), &dh, main_device, quirks, &decision)?;
        let core = Core::new(dh, options.shell, event_loop.handle());
        let mut state = State { backend, core };
        state.offer_globals(&options);
        state.core.control.configure(None, options.exit_after_frames);

        let udev = UdevBackend::new(&seat).map_err(DrmBackendError::Udev)?;
        let only = options.drm_device.as_ref().map(|p| p.canonicalize().unwrap_or_else(|_| p.clone()));
        state.backend.only_device = only.clone();
        // Sorted, so the primary output (first added) doesn't depend on udev's order.
        let mut paths: Vec<std::path::PathBuf> = udev.device_list().map(|(_, p)| p.to_owned()).collect();
        paths.sort();
        for path in &paths {
            add_device(&mut state, path);
        }
        if state.core.primary_output().is_none() {
            return Err(DrmBackendError::NoDisplay.into());
        }
        let handle = event_loop.handle();
        handle
            .insert_source(udev, |event, _, state| {
                match event {
                    UdevEvent::Added { path, .. } => add_device(state, &path),
                    UdevEvent::Changed { device_id } => {
                        // A connector came or went: rebuild that device's outputs.
                        if let Some(path) = remove_device(state, device_id) {
                            add_device(state, &path);
                        }
                    }
                    UdevEvent::Removed { device_id } => {
                        remove_device(state, device_id);
                    }
                }
                // Consumers changed: every live buffer's plan is recomputed.
                state.backend.coherency.devices_changed();
                state.plans_changed();
            })
            .map_err(|e| StartError::EventLoop(e.error))?;
        handle
            .insert_source(notifier, |event, _, state| match event {
                SessionEvent::PauseSession => {
                    tracing::info!("session paused");
                    for d in state.backend.devices.values_mut() {
                        d.pause();
                    }
                }
                SessionEvent::ActivateSession => {
                    tracing::info!("session active again");
                    for d in state.backend.devices.values_mut() {
                        d.activate();
                    }
                    state.backend.reset_pacing();
                    redraw_all(state);
                }
            })
            .map_err(|e| StartError::EventLoop(e.error))?;
        // Keyboard and pointer through libinput, on the same session.
        let mut libinput = Libinput::new_with_udev(LibinputSessionInterface::from(state.backend.session.clone()));
        if libinput.udev_assign_seat(&seat).is_err() {
            tracing::warn!(seat, "libinput could not take the seat's input devices");
        }
        handle
            .insert_source(LibinputInputBackend::new(libinput), |event, _, state| state.process_input_event(event))
            .map_err(|e| StartError::EventLoop(e.error))?;
        let mut compositor = Compositor::assemble(event_loop, display, state, &options.socket, options.stats_file.clone())?;
        redraw_all(&mut compositor.state);
        Ok(compositor)
    }
}

fn redraw_all(state: &mut State<Drm>) {
    let outputs: Vec<_> = state.core.outputs().cloned().collect();
    for output in outputs {
        render_output(state, &output, Trigger::Tick);
    }
}

fn add_device(state: &mut State<Drm>, path: &std::path::Path) {
    // Render nodes come through udev too; only primary nodes (cardN) drive displays.
    if !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("card")) {
        return;
    }
    if state.backend.only_device.as_ref().is_some_and(|only| only.as_path() != path) {
        tracing::debug!(path = %path.display(), "not the --drm-device; skipped");
        return;
    }
    let handle = state.backend.handle.clone();
    let formats = state.backend.renderer.dmabuf_formats();
    let verdicts = state.backend.coherency.plans.verdicts();
    let setup =
        super::device::Setup { renderer_formats: &formats, verdicts: &verdicts, y_inverted: state.backend.import_state().y_inverted() };
    match Device::open(&mut state.backend.session, &setup, &handle, &mut state.core, path) {
        Ok(device) => {
            tracing::info!(card = device.card, driver = device.driver, outputs = device.outputs().count(), "DRM device added");
            let outputs: Vec<_> = device.outputs().cloned().collect();
            state.backend.devices.insert(device.node, device);
            for output in outputs {
                render_output(state, &output, Trigger::Tick);
            }
        }
        Err(err) => tracing::warn!(err = %crate::ErrorChain(&err), "DRM device not used"),
    }
}

/// Removes the device with `device_id`; returns its path so a change can re-add it.
fn remove_device(state: &mut State<Drm>, device_id: u64) -> Option<std::path::PathBuf> {
    let node = *state.backend.devices.keys().find(|n| n.dev_id() == device_id)?;
    let device = state.backend.devices.remove(&node)?;
    let path = device.path.clone();
    tracing::info!(card = device.card, "DRM device removed or changed");
    let handle = state.backend.handle.clone();
    device.teardown(&mut state.core, &handle);
    Some(path)
}
