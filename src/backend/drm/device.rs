//! One DRM device: its `DrmDevice`, GBM device and a `DrmCompositor` per connected connector.

use std::collections::HashMap;
use std::path::Path;

use smithay::backend::allocator::dmabuf::Dmabuf;
use smithay::backend::allocator::dumb::DumbAllocator;
use smithay::backend::allocator::gbm::GbmDevice;
use smithay::backend::allocator::Format;
use smithay::backend::allocator::Fourcc;
use smithay::backend::drm::compositor::{DrmCompositor, FrameFlags, PrimaryPlaneElement};
use smithay::backend::drm::{DrmDevice, DrmDeviceFd, DrmEvent, DrmNode};
use smithay::backend::renderer::element::RenderElement;
use smithay::backend::renderer::element::{Element, Kind, RenderElementPresentationState, RenderElementStates};
use smithay::backend::renderer::{Bind, ImportAll, ImportMem, Renderer, Texture};
use smithay::backend::session::libseat::LibSeatSession;
use smithay::backend::session::Session;
use smithay::output::Output;
use smithay::reexports::calloop::{LoopHandle, RegistrationToken};
use smithay::reexports::drm::control::{connector, crtc, Device as _, ModeTypeFlags};
use smithay::reexports::drm::Device as _;
use smithay::reexports::rustix::fs::OFlags;
use smithay::utils::DeviceFd;

use super::exporter::SwapchainExporter;
use super::Drm;
use crate::coherency::DeviceId;
use crate::core::{Core, OutputConfig};
use crate::path::direct::ScanoutFilter;
use crate::render::OutputElement;
use crate::State;

type Compositor = DrmCompositor<DumbAllocator, ScanoutFilter<SwapchainExporter>, (), DrmDeviceFd>;

/// An error of smithay's `DrmCompositor` (its type is generic over the allocator and exporter).
pub type CompositorError = Box<dyn std::error::Error + Send + Sync>;

/// Why a DRM device can't be used or drawn.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("opening {path} through the session")]
    /// Opening the device through the session failed.
    Session {
        /// The device node.
        path: String,
        #[source]
        /// The session's error.
        source: smithay::backend::session::libseat::Error,
    },
    #[error("{path} is not a DRM node")]
    /// The path isn't a DRM node.
    Node {
        /// The device node.
        path: String,
        #[source]
        /// Why it isn't one.
        source: smithay::backend::drm::CreateDrmNodeError,
    },
    #[error("DRM on {path}")]
    /// A DRM call on the device failed.
    Drm {
        /// The device node.
        path: String,
        #[source]
        /// smithay's DRM error.
        source: smithay::backend::drm::DrmError,
    },
    #[error("{what} on {path}")]
    /// A system call on the device failed.
    Io {
        /// What was being done.
        what: &'static str,
        /// The device node.
        path: String,
        #[source]
        /// The system's error.
        source: std::io::Error,
    },
    #[error("watching {path}'s events")]
    /// The device's events could not be watched.
    EventLoop {
        /// The device node.
        path: String,
        #[source]
        /// The event loop's error.
        source: smithay::reexports::calloop::Error,
    },
    #[error("output {output}")]
    /// smithay's `DrmCompositor` for an output failed.
    Compositor {
        /// The output's name.
        output: String,
        #[source]
        /// The compositor's error.
        source: CompositorError,
    },
    #[error("no DrmCompositor for this CRTC")]
    /// A CRTC without a `DrmCompositor` was asked to render.
    UnknownCrtc,
}

struct Surface {
    output: Output,
    compositor: Compositor,
    /// The frame waiting for its page flip.
    pending: Option<PendingFrame>,
}

/// A frame queued for a page flip: its element states and the presentation feedback of the
/// commits it shows, delivered when the flip completes.
pub(crate) struct PendingFrame {
    pub states: RenderElementStates,
    pub feedback: smithay::desktop::utils::OutputPresentationFeedback,
}

impl std::fmt::Debug for PendingFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingFrame").field("states", &self.states).finish_non_exhaustive()
    }
}

/// What one render call did.
pub(crate) enum Rendered {
    Queued {
        states: RenderElementStates,
        zero_copy: u64,
        composited: u64,
        cursor_plane: bool,
        fence: Option<smithay::backend::renderer::sync::SyncPoint>,
    },
    Empty {
        states: RenderElementStates,
    },
}

/// What every display needs from the backend: the formats the renderer draws into and the
/// plans' answers for its framebuffer exporter.
pub(crate) struct Setup<'a> {
    pub renderer_formats: &'a [Format],
    pub verdicts: &'a crate::coherency::Verdicts,
    pub y_inverted: crate::import::YInverted,
}

/// A DRM device cohere drives.
pub struct Device {
    /// The card's file name (`card1`).
    pub card: String,
    /// The device node's path.
    pub path: std::path::PathBuf,
    /// The DRM driver (DRM_IOCTL_VERSION).
    pub driver: String,
    /// The device's node.
    pub node: DrmNode,
    /// The display device the plans name (`DeviceId::from(node)`), found in sysfs once at
    /// open: the buffer-path reports and dma-buf feedback ask for it after every frame.
    pub id: DeviceId,
    drm: DrmDevice,
    surfaces: HashMap<crtc::Handle, Surface>,
    token: RegistrationToken,
}

impl Device {
    /// Opens `path` through the session and creates an output for each connected connector.
    pub(crate) fn open(
        session: &mut LibSeatSession,
        setup: &Setup<'_>,
        handle: &LoopHandle<'static, State<Drm>>,
        core: &mut Core<Drm>,
        path: &Path,
    ) -> Result<Device, DeviceError> {
        let at = || path.display().to_string();
        let fd = session
            .open(path, OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK)
            .map_err(|source| DeviceError::Session { path: at(), source })?;
        let fd = DrmDeviceFd::new(DeviceFd::from(fd));
        let node = DrmNode::from_file(std::os::fd::AsFd::as_fd(&fd)).map_err(|source| DeviceError::Node { path: at(), source })?;
        let (mut drm, notifier) = DrmDevice::new(fd.clone(), true).map_err(|source| DeviceError::Drm { path: at(), source })?;
        let gbm = GbmDevice::new(fd.clone()).map_err(|source| DeviceError::Io { what: "GBM", path: at(), source })?;
        let driver = drm.get_driver().map(|d| d.name().to_string_lossy().into_owned()).unwrap_or_default();
        let card = path.file_name().and_then(|n| n.to_str()).unwrap_or("card?").to_owned();
        let token = handle
            .insert_source(notifier, move |event, metadata, state| match event {
                DrmEvent::VBlank(crtc) => super::vblank(state, node, crtc, metadata.take()),
                DrmEvent::Error(err) => tracing::warn!(%err, "DRM device error"),
            })
            .map_err(|e| DeviceError::EventLoop { path: at(), source: e.error })?;

        // The display device the plans name, found in sysfs once for the device and its outputs.
        let id = DeviceId::from(node);
        let mut surfaces = HashMap::new();
        // On failure part-way, take back the outputs already announced and the event source.
        if let Err(err) = add_outputs(&mut drm, &gbm, id, &card, &driver, setup, core, &mut surfaces) {
            for s in surfaces.values() {
                core.remove_output(&s.output);
            }
            handle.remove(token);
            return Err(err);
        }
        Ok(Device { card, path: path.to_owned(), driver, node, id, drm, surfaces, token })
    }

    /// The outputs of the device's connected connectors.
    pub fn outputs(&self) -> impl Iterator<Item = &Output> {
        self.surfaces.values().map(|s| &s.output)
    }

    /// Formats the primary planes can scan out.
    pub fn scanout_formats(&self) -> Vec<smithay::backend::allocator::Format> {
        let mut formats: Vec<_> =
            self.surfaces.values().flat_map(|s| s.compositor.surface().plane_info().formats.iter().copied().collect::<Vec<_>>()).collect();
        formats.sort_by_key(|f| (f.code as u32, u64::from(f.modifier)));
        formats.dedup();
        formats
    }

    pub(crate) fn crtc_of(&self, output: &Output) -> Option<crtc::Handle> {
        self.surfaces.iter().find(|(_, s)| &s.output == output).map(|(c, _)| *c)
    }

    pub(crate) fn render<R>(
        &mut self,
        crtc: crtc::Handle,
        renderer: &mut R,
        elements: &[OutputElement<R>],
        clear: [f32; 4],
    ) -> Result<Rendered, DeviceError>
    where
        R: Renderer + Bind<Dmabuf> + ImportAll + ImportMem,
        R::TextureId: Texture + Clone + Send + 'static,
        R::Error: Send + Sync + 'static,
        OutputElement<R>: RenderElement<R>,
    {
        let surface = self.surfaces.get_mut(&crtc).ok_or(DeviceError::UnknownCrtc)?;
        let failed = |output: &Output, e: CompositorError| DeviceError::Compositor { output: output.name(), source: e };
        let result = surface
            .compositor
            .render_frame(renderer, elements, clear, FrameFlags::DEFAULT)
            .map_err(|e| failed(&surface.output, Box::new(e)))?;
        let mut states = result.states.clone();
        // smithay reports an element on the cursor plane as zero-copy, but it copies the
        // element into its cursor buffer: say so, for presentation feedback and releases.
        let cursor_plane = result.cursor_element.map(|e| e.id().clone());
        if let Some(state) = cursor_plane.as_ref().and_then(|id| states.states.get_mut(id)) {
            state.presentation_state = RenderElementPresentationState::Rendering { reason: None };
        }
        if result.is_empty {
            return Ok(Rendered::Empty { states });
        }
        // The composition's fence: waited for here when the display can't take it as an
        // IN_FENCE_FD (vkms, virtio-gpu), else it goes with the commit and buffers the renderer
        // read are released only when it has signalled (see path::release).
        let fence = match &result.primary_element {
            PrimaryPlaneElement::Swapchain(element) => Some(element.sync.clone()),
            PrimaryPlaneElement::Element(_) => None,
        };
        if result.needs_sync() {
            if let Some(fence) = &fence {
                if let Err(err) = fence.wait() {
                    tracing::warn!(?err, "waiting for the composition");
                }
            }
        }
        // The cursor is counted on its own: "zero-copy" and "composited" are about client
        // content.
        let cursors: Vec<_> = elements.iter().filter(|e| e.kind() == Kind::Cursor).map(|e| e.id().clone()).collect();
        let count = |want: fn(&RenderElementPresentationState) -> bool| {
            states.states.iter().filter(|(id, s)| !cursors.contains(id) && want(&s.presentation_state)).count() as u64
        };
        let zero_copy = count(|p| matches!(p, RenderElementPresentationState::ZeroCopy));
        let composited = count(|p| matches!(p, RenderElementPresentationState::Rendering { .. }));
        let cursor_plane = cursor_plane.is_some_and(|id| cursors.contains(&id));
        surface.compositor.queue_frame(()).map_err(|e| failed(&surface.output, Box::new(e)))?;
        Ok(Rendered::Queued { states, zero_copy, composited, cursor_plane, fence })
    }

    pub(crate) fn set_pending(&mut self, crtc: crtc::Handle, frame: PendingFrame) {
        if let Some(s) = self.surfaces.get_mut(&crtc) {
            s.pending = Some(frame);
        }
    }

    /// The flip for `crtc` completed: returns the output and the frame shown (`None` for a
    /// flip of a frame cohere no longer tracks, after a reset).
    pub(crate) fn frame_submitted(&mut self, crtc: crtc::Handle) -> Option<(Output, Option<PendingFrame>)> {
        let surface = self.surfaces.get_mut(&crtc)?;
        if let Err(err) = surface.compositor.frame_submitted() {
            tracing::warn!(?err, "frame_submitted");
        }
        Some((surface.output.clone(), surface.pending.take()))
    }

    /// The session was paused (VT switch): stop touching the device.
    pub(crate) fn pause(&mut self) {
        self.drm.pause();
    }

    /// The session is back: take the device again and forget what KMS state we assumed.
    pub(crate) fn activate(&mut self) {
        if let Err(err) = self.drm.activate(false) {
            tracing::warn!(%err, card = self.card, "reactivating the device");
        }
        for s in self.surfaces.values_mut() {
            if let Err(err) = s.compositor.reset_state() {
                tracing::warn!(%err, "resetting KMS state");
            }
            s.pending = None;
        }
    }

    /// Removes the device's outputs from the core and its event source from the loop.
    pub(crate) fn teardown(self, core: &mut Core<Drm>, handle: &LoopHandle<'static, State<Drm>>) {
        for s in self.surfaces.values() {
            core.remove_output(&s.output);
        }
        handle.remove(self.token);
        drop(self.drm);
    }
}

/// Creates an output and a `DrmCompositor` for each connected connector of `drm`.
#[allow(clippy::too_many_arguments)]
fn add_outputs(
    drm: &mut DrmDevice,
    gbm: &GbmDevice<DrmDeviceFd>,
    id: DeviceId,
    card: &str,
    driver: &str,
    setup: &Setup<'_>,
    core: &mut Core<Drm>,
    surfaces: &mut HashMap<crtc::Handle, Surface>,
) -> Result<(), DeviceError> {
    let res = drm.resource_handles().map_err(|source| DeviceError::Io { what: "mode resources", path: card.to_owned(), source })?;
    let mut used = Vec::new();
    for conn in res.connectors() {
        let Ok(info) = drm.get_connector(*conn, false) else { continue };
        if info.state() != connector::State::Connected {
            continue;
        }
        let Some(mode) = info.modes().iter().find(|m| m.mode_type().contains(ModeTypeFlags::PREFERRED)).or(info.modes().first()).copied()
        else {
            continue;
        };
        let crtc = info
            .encoders()
            .iter()
            .filter_map(|e| drm.get_encoder(*e).ok())
            .flat_map(|e| res.filter_crtcs(e.possible_crtcs()))
            .find(|c| !used.contains(c));
        let Some(crtc) = crtc else { continue };
        used.push(crtc);
        let name = format!("{}-{}", info.interface().as_str(), info.interface_id());
        let (w, h) = mode.size();
        let config = OutputConfig { size: (i32::from(w), i32::from(h)), refresh_mhz: mode.vrefresh() * 1000 };
        let output = core.add_output(&name, config, driver);
        let surface = match drm.create_surface(crtc, mode, &[*conn]) {
            Ok(surface) => surface,
            Err(source) => {
                core.remove_output(&output);
                return Err(DeviceError::Drm { path: card.to_owned(), source });
            }
        };
        // Dumb buffers for the swapchain: LINEAR on every KMS device, and Pixman draws into
        // them (GBM on kms_swrast reports an implicit modifier Pixman won't bind). Client
        // buffers reach a plane only if the plan marked them for this node (path::direct).
        let allocator = DumbAllocator::new(drm.device_fd().clone());
        let exporter =
            ScanoutFilter::new(SwapchainExporter::new(gbm.clone()), id, setup.verdicts.clone()).keeping_off(setup.y_inverted.clone());
        let cursor = drm.cursor_size();
        let compositor = DrmCompositor::new(
            smithay::output::OutputModeSource::Auto(output.clone()),
            surface,
            None,
            allocator,
            exporter,
            [Fourcc::Xrgb8888, Fourcc::Argb8888],
            setup.renderer_formats.iter().copied(),
            cursor,
            // GBM for the cursor plane: smithay writes Kind::Cursor elements into cursor BOs.
            Some(gbm.clone()),
        );
        let compositor = match compositor {
            Ok(compositor) => compositor,
            Err(e) => {
                core.remove_output(&output);
                return Err(DeviceError::Compositor { output: name, source: Box::new(e) });
            }
        };
        // What the buffer-path protocol needs to say why a buffer didn't go on a plane.
        let planes = compositor.surface().planes();
        let mut formats: Vec<Format> =
            planes.primary.iter().chain(&planes.overlay).flat_map(|p| p.formats.iter().copied().collect::<Vec<_>>()).collect();
        formats.sort_by_key(|f| (f.code as u32, u64::from(f.modifier)));
        formats.dedup();
        output.user_data().insert_if_missing_threadsafe(|| crate::paths::OutputDisplay { device: id, formats });
        tracing::info!(card, driver, output = name, w, h, "KMS output");
        surfaces.insert(crtc, Surface { output, compositor, pending: None });
    }
    Ok(())
}
