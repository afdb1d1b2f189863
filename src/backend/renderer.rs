//! Which renderer composites: Pixman (the CPU) or GLES, and on which EGL device. The choice is
//! made once at start-up from what the EGL devices are ([`probe`]) by a pure function
//! ([`decide`]); the log and `cohere inspect` say what was chosen and why.
//!
//! - `auto` (the default): GLES on the first EGL device that has a render node, imports
//!   dma-bufs (`EGL_EXT_image_dma_buf_import`) and is a hardware driver; otherwise Pixman.
//!   Software GL (llvmpipe, softpipe, swrast) is never chosen by itself: Pixman composites as
//!   well on the CPU without a GL stack.
//! - `gles`: GLES, on such a hardware device if there is one, else on the software EGL device
//!   (`EGL_MESA_device_software`).
//! - `pixman`: Pixman.

use std::path::PathBuf;

use smithay::backend::egl::{EGLContext, EGLDevice, EGLDisplay};
use smithay::backend::renderer::gles::GlesRenderer;

/// What the user asked for (`--renderer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RendererPreference {
    #[default]
    /// GLES on a hardware GPU whose EGL imports dma-bufs, else Pixman.
    Auto,
    /// Pixman, on the CPU.
    Pixman,
    /// GLES, on the software EGL device if there is no hardware GPU.
    Gles,
}

/// The renderer that composites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RendererKind {
    /// CPU rendering with pixman. Always available.
    #[default]
    Pixman,
    /// GLES on an EGL device.
    Gles,
}

/// One EGL device, as far as the choice goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EglCandidate {
    /// Its DRM render node, when it has one (the software device has none).
    pub render_node: Option<PathBuf>,
    /// GL renders in software here: `EGL_MESA_device_software`, or a GL renderer string of
    /// llvmpipe, softpipe or swrast.
    pub software: bool,
    /// EGL can import dma-bufs as images.
    pub imports_dmabuf: bool,
    /// The GL renderer string (`llvmpipe (LLVM 15.0.6, 256 bits)`, `Mesa Intel(R) ...`).
    pub gl_renderer: String,
}

impl EglCandidate {
    fn label(&self) -> String {
        let node = self.render_node.as_ref().map_or_else(|| "the software EGL device".to_owned(), |n| n.display().to_string());
        format!("{node} ({})", self.gl_renderer)
    }
}

/// What was chosen, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RendererDecision {
    /// The renderer chosen.
    pub kind: RendererKind,
    /// The EGL device to render on (GLES).
    pub device: Option<EglCandidate>,
    /// Why, in words.
    pub reason: String,
}

/// `--renderer gles` with no EGL device that can render.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("GLES asked for, but no EGL device can render here (no hardware GPU importing dma-bufs, no EGL_MESA_device_software)")]
pub struct NoGlesDevice;

/// The choice, from the preference and the EGL devices there are.
pub fn decide(preference: RendererPreference, candidates: &[EglCandidate]) -> Result<RendererDecision, NoGlesDevice> {
    let hardware = candidates.iter().find(|c| c.render_node.is_some() && !c.software && c.imports_dmabuf);
    let pixman = |reason: String| Ok(RendererDecision { kind: RendererKind::Pixman, device: None, reason });
    match (preference, hardware) {
        (RendererPreference::Pixman, _) => pixman("asked for (--renderer pixman)".into()),
        (_, Some(gpu)) => Ok(RendererDecision {
            kind: RendererKind::Gles,
            device: Some(gpu.clone()),
            reason: format!("{} is a hardware GPU that imports dma-bufs", gpu.label()),
        }),
        (RendererPreference::Gles, None) => match candidates.iter().find(|c| c.render_node.is_none() && c.software) {
            Some(soft) => Ok(RendererDecision {
                kind: RendererKind::Gles,
                device: Some(soft.clone()),
                reason: format!("asked for (--renderer gles); no hardware GPU imports dma-bufs, so {}", soft.label()),
            }),
            None => Err(NoGlesDevice),
        },
        (RendererPreference::Auto, None) => {
            let why: Vec<String> = candidates
                .iter()
                .filter(|c| c.render_node.is_some())
                .map(|c| {
                    let what = match (c.software, c.imports_dmabuf) {
                        (true, _) => "renders in software",
                        (false, false) => "can't import dma-bufs",
                        (false, true) => "is usable",
                    };
                    format!("{} {what}", c.label())
                })
                .collect();
            if why.is_empty() {
                pixman("no EGL device with a render node".into())
            } else {
                pixman(format!("no hardware GPU for GLES: {}", why.join("; ")))
            }
        }
    }
}

/// Probes (unless Pixman was asked for) and decides; logs the decision.
pub fn choose(preference: RendererPreference) -> Result<RendererDecision, NoGlesDevice> {
    let candidates = match preference {
        RendererPreference::Pixman => Vec::new(),
        // auto never picks the software device, so it isn't even opened.
        RendererPreference::Auto => probe(false),
        RendererPreference::Gles => probe(true),
    };
    let decision = decide(preference, &candidates)?;
    tracing::info!(renderer = ?decision.kind, reason = %decision.reason, "renderer");
    Ok(decision)
}

/// Lists the EGL devices (with `software`, the software device too): for each, a display and a
/// context are made to read its GL renderer string (EGL alone can't tell a software DRM driver
/// from a hardware one).
pub fn probe(software: bool) -> Vec<EglCandidate> {
    let Ok(devices) = EGLDevice::enumerate() else { return Vec::new() };
    devices
        .filter_map(|device| {
            let render_node = device.try_get_render_node().ok().flatten().and_then(|n| n.dev_path());
            if render_node.is_none() && !software {
                return None;
            }
            let software_ext = device.is_software();
            let (gl_renderer, imports_dmabuf) = match gles_on(&device) {
                Ok(mut renderer) => {
                    let imports = renderer.egl_context().display().extensions().iter().any(|e| e == "EGL_EXT_image_dma_buf_import");
                    (gl_renderer_string(&mut renderer), imports)
                }
                Err(err) => {
                    tracing::debug!(%err, node = ?render_node, "EGL device unusable");
                    return None;
                }
            };
            let soft_name = ["llvmpipe", "softpipe", "swrast"].iter().any(|s| gl_renderer.contains(s));
            Some(EglCandidate { render_node, software: software_ext || soft_name, imports_dmabuf, gl_renderer })
        })
        .collect()
}

/// A GLES renderer on `device`.
pub fn gles_on(device: &EGLDevice) -> Result<GlesRenderer, String> {
    // SAFETY: the EGLDevice is valid for the lifetime of the display created from it.
    let display = unsafe { EGLDisplay::new(device.clone()) }.map_err(|e| e.to_string())?;
    let context = EGLContext::new(&display).map_err(|e| e.to_string())?;
    // SAFETY: the context was just created and is not current on any other thread.
    unsafe { GlesRenderer::new(context) }.map_err(|e| e.to_string())
}

/// The EGL device of a decision.
pub fn egl_device(candidate: &EglCandidate) -> Option<EGLDevice> {
    EGLDevice::enumerate().ok()?.find(|d| match &candidate.render_node {
        Some(node) => d.try_get_render_node().ok().flatten().and_then(|n| n.dev_path()).as_ref() == Some(node),
        None => d.is_software() && d.try_get_render_node().ok().flatten().is_none(),
    })
}

/// The coherency model's view of a GLES renderer on `device`.
pub fn gles_facts(device: &EglCandidate) -> crate::coherency::probe::GlesRenderer {
    crate::coherency::probe::GlesRenderer {
        name: device.gl_renderer.clone(),
        render_node: device.render_node.as_ref().and_then(|n| n.file_name()).and_then(|n| n.to_str()).map(str::to_owned),
        software: device.software,
        imports_dmabuf: device.imports_dmabuf,
    }
}

/// `GL_RENDERER`.
pub fn gl_renderer_string(renderer: &mut GlesRenderer) -> String {
    use smithay::backend::renderer::gles::ffi;
    renderer
        .with_context(|gl| {
            // SAFETY: GetString returns a static NUL-terminated string, or null on error.
            let ptr = unsafe { gl.GetString(ffi::RENDERER) };
            if ptr.is_null() {
                return String::new();
            }
            // SAFETY: non-null, NUL-terminated, valid while the context lives.
            unsafe { std::ffi::CStr::from_ptr(ptr.cast()) }.to_string_lossy().into_owned()
        })
        .unwrap_or_default()
}

/// A renderer made before the plans exist to guard it (see [`crate::path::guard`]).
#[allow(clippy::large_enum_variant)] // made once at start-up
pub(crate) enum Unguarded {
    Pixman(smithay::backend::renderer::pixman::PixmanRenderer),
    Gles(smithay::backend::renderer::gles::GlesRenderer),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(node: &str, renderer: &str, software: bool, imports: bool) -> EglCandidate {
        EglCandidate { render_node: Some(node.into()), software, imports_dmabuf: imports, gl_renderer: renderer.into() }
    }

    fn llvmpipe_device() -> EglCandidate {
        EglCandidate { render_node: None, software: true, imports_dmabuf: true, gl_renderer: "llvmpipe (LLVM 15.0.6, 256 bits)".into() }
    }

    #[test]
    fn auto_picks_a_hardware_gpu_that_imports_dmabufs() {
        let intel = gpu("/dev/dri/renderD128", "Mesa Intel(R) UHD Graphics 620", false, true);
        let d = decide(RendererPreference::Auto, &[llvmpipe_device(), intel.clone()]).unwrap();
        assert_eq!((d.kind, d.device), (RendererKind::Gles, Some(intel)));
        assert!(d.reason.contains("hardware GPU"), "{}", d.reason);
    }

    #[test]
    fn auto_picks_pixman_with_software_gl_only_and_says_why() {
        // The test VM: virtio-gpu's render node renders with llvmpipe (kms_swrast).
        let virtio = gpu("/dev/dri/renderD129", "llvmpipe (LLVM 15.0.6, 256 bits)", true, true);
        let d = decide(RendererPreference::Auto, &[virtio, llvmpipe_device()]).unwrap();
        assert_eq!((d.kind, d.device), (RendererKind::Pixman, None));
        assert_eq!(d.reason, "no hardware GPU for GLES: /dev/dri/renderD129 (llvmpipe (LLVM 15.0.6, 256 bits)) renders in software");
        let none = decide(RendererPreference::Auto, &[]).unwrap();
        assert_eq!((none.kind, none.reason.as_str()), (RendererKind::Pixman, "no EGL device with a render node"));
    }

    #[test]
    fn a_gpu_without_dmabuf_import_is_not_chosen() {
        let old = gpu("/dev/dri/renderD128", "Mesa DRI R200", false, false);
        let d = decide(RendererPreference::Auto, &[old]).unwrap();
        assert_eq!(d.kind, RendererKind::Pixman);
        assert!(d.reason.contains("can't import dma-bufs"), "{}", d.reason);
    }

    #[test]
    fn gles_forces_the_software_device_and_pixman_is_pixman() {
        let d = decide(RendererPreference::Gles, &[llvmpipe_device()]).unwrap();
        assert_eq!((d.kind, d.device), (RendererKind::Gles, Some(llvmpipe_device())));
        let intel = gpu("/dev/dri/renderD128", "Mesa Intel(R) UHD Graphics 620", false, true);
        assert_eq!(decide(RendererPreference::Pixman, std::slice::from_ref(&intel)).unwrap().kind, RendererKind::Pixman);
        assert_eq!(decide(RendererPreference::Gles, &[llvmpipe_device(), intel.clone()]).unwrap().device, Some(intel));
        assert_eq!(decide(RendererPreference::Gles, &[]), Err(NoGlesDevice));
    }
}
