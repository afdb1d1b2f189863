//! Machine facts from sysfs (any root, so tests can use fixture trees), the device tree and,
//! on a live system, the device nodes themselves (DRM_IOCTL_VERSION and a PRIME import test).

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{fcntl_add_seals, ftruncate, memfd_create, MemfdFlags, OFlags, SealFlags};
use rustix::ioctl::{ioctl, opcode};
use smithay::reexports::drm;
use smithay::reexports::drm::control::Device as _;
use smithay::reexports::drm::Device as _;

use super::facts::{DeviceFacts, DeviceId, Fact, MachineFacts, RendererFacts, Source};
use super::quirks::Quirks;

/// Which renderer the plan assumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RendererChoice {
    /// A CPU renderer (pixman), by name.
    Cpu(String),
    /// The first device that has a render node and can render (fixture machines).
    FirstRenderDevice,
    /// GLES on an EGL device, as [`crate::backend::renderer`] found it.
    Gles(GlesRenderer),
}

/// What is known of the EGL device GLES renders on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlesRenderer {
    /// The GL renderer string.
    pub name: String,
    /// Its render node's file name (`renderD128`); `None` for the software EGL device.
    pub render_node: Option<String>,
    /// GL runs on the CPU (llvmpipe and the like).
    pub software: bool,
    /// EGL offers `EGL_EXT_image_dma_buf_import`.
    pub imports_dmabuf: bool,
}

/// How the probe reaches DRM device nodes (for DRM_IOCTL_VERSION, the PRIME import test and
/// the syncobj test).
#[derive(Debug, Clone)]
pub enum NodeAccess {
    /// Not at all (fixture trees): facts come from sysfs and the database.
    None,
    /// Opens them in this directory (`/dev/dri`).
    Open(PathBuf),
    /// Uses the descriptors the embedder opened (through its session), by node file name
    /// (`renderD128`, `card1`); a node that isn't there isn't probed.
    Provided(std::sync::Arc<std::collections::BTreeMap<String, OwnedFd>>),
}

/// A node to query: a descriptor the probe opened, or one the embedder lent it.
enum NodeFd<'a> {
    Opened(OwnedFd),
    Lent(BorrowedFd<'a>),
}

impl AsFd for NodeFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            NodeFd::Opened(fd) => fd.as_fd(),
            NodeFd::Lent(fd) => *fd,
        }
    }
}

impl NodeAccess {
    /// The node named `name` (`renderD128`), and how sources should name it.
    fn node(&self, name: &str) -> Option<(NodeFd<'_>, String)> {
        match self {
            NodeAccess::None => None,
            NodeAccess::Open(dir) => {
                let path = dir.join(name);
                let fd = rustix::fs::open(&path, OFlags::RDWR | OFlags::CLOEXEC, rustix::fs::Mode::empty()).ok()?;
                Some((NodeFd::Opened(fd), path.display().to_string()))
            }
            NodeAccess::Provided(fds) => {
                fds.get(name).map(|fd| (NodeFd::Lent(fd.as_fd()), format!("{name} (the compositor's descriptor)")))
            }
        }
    }
}

/// Where to look.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// The sysfs tree (`/sys`, or a fixture).
    pub sysfs_root: PathBuf,
    /// How to reach the device nodes.
    pub nodes: NodeAccess,
    /// Which renderer the plan assumes.
    pub renderer: RendererChoice,
    /// Why this renderer (`cohere inspect` prints it).
    pub renderer_reason: Option<String>,
}

impl ProbeOptions {
    /// The running machine: sysfs, and the nodes in /dev/dri opened by the probe.
    pub fn live(renderer: RendererChoice) -> Self {
        Self { sysfs_root: "/sys".into(), nodes: NodeAccess::Open("/dev/dri".into()), renderer, renderer_reason: None }
    }

    /// The running machine, probing only through descriptors the embedder opened (through its
    /// session), by node file name: nothing is opened behind the session's back.
    pub fn with_fds(renderer: RendererChoice, fds: std::collections::BTreeMap<String, OwnedFd>) -> Self {
        Self { nodes: NodeAccess::Provided(std::sync::Arc::new(fds)), ..Self::live(renderer) }
    }

    /// Fixture trees: sysfs only.
    pub fn sysfs(root: impl Into<PathBuf>, renderer: RendererChoice) -> Self {
        Self { sysfs_root: root.into(), nodes: NodeAccess::None, renderer, renderer_reason: None }
    }
}

fn link_name(path: &Path) -> Option<String> {
    std::fs::read_link(path).ok()?.file_name()?.to_str().map(str::to_owned)
}

/// Sources name sysfs paths as `/sys/...` whatever the root, so a fixture tree reads like the
/// machine it stands for.
fn sysfs_source(root: &Path, path: &Path) -> Source {
    let rel = path.strip_prefix(root).unwrap_or(path);
    Source::Sysfs { path: Path::new("/sys").join(rel).display().to_string() }
}

/// The DRM driver, from the device node if we can open it, else from sysfs.
/// The node to open for queries: the render node when there is one, because opening a primary
/// node can make us DRM master for a moment and lock a starting display server out.
fn query_node(device: &Path, card: &str) -> String {
    std::fs::read_dir(device.join("drm"))
        .ok()
        .and_then(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).find(|n| n.starts_with("renderD")))
        .unwrap_or_else(|| card.to_owned())
}

fn driver(root: &Path, card: &str, device: &Path, nodes: &NodeAccess) -> Option<Fact<String>> {
    let sysfs = |p: &Path| sysfs_source(root, p);
    if let Some((fd, node)) = nodes.node(&query_node(device, card)) {
        if let Ok(v) = Card(fd).get_driver() {
            return Some(Fact::new(v.name().to_string_lossy().into_owned(), Source::DrmVersion { node }));
        }
    }
    let link = device.join("driver");
    match link_name(&link) {
        // virtio-pci is the transport; the DRM driver is bound to the virtio child device.
        Some(name) if name == "virtio-pci" => {
            let children = std::fs::read_dir(device).ok()?;
            children.filter_map(|e| e.ok()).find_map(|e| {
                let is_virtio = e.file_name().to_str().is_some_and(|n| n.starts_with("virtio"));
                let link = e.path().join("driver");
                is_virtio.then(|| link_name(&link).map(|n| Fact::new(n, sysfs(&link)))).flatten()
            })
        }
        Some(name) => Some(Fact::new(name, sysfs(&link))),
        None => {
            // Platform devices without a bound driver (vkms, vgem) name themselves in modalias.
            let path = device.join("modalias");
            let alias = std::fs::read_to_string(&path).ok()?;
            let name = alias.trim().strip_prefix("platform:")?.to_owned();
            Some(Fact::new(name, sysfs(&path)))
        }
    }
}

struct Card<F>(F);
impl<F: AsFd> AsFd for Card<F> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
impl<F: AsFd> drm::Device for Card<F> {}
impl<F: AsFd> drm::control::Device for Card<F> {}

#[repr(C)]
struct UdmabufCreate {
    memfd: u32,
    flags: u32,
    offset: u64,
    size: u64,
}
const UDMABUF_CREATE: rustix::ioctl::Opcode = opcode::write::<UdmabufCreate>(b'u', 0x42);

/// UDMABUF_CREATE returns the new dma-buf as the ioctl's return value, which rustix's generic
/// Setter discards, so it gets its own `Ioctl` impl.
struct CreateUdmabuf(UdmabufCreate);

// SAFETY: opcode and argument layout match the kernel's UDMABUF_CREATE; the kernel only reads.
unsafe impl rustix::ioctl::Ioctl for CreateUdmabuf {
    type Output = OwnedFd;
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> rustix::ioctl::Opcode {
        UDMABUF_CREATE
    }
    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        (&mut self.0 as *mut UdmabufCreate).cast()
    }
    unsafe fn output_from_ptr(out: rustix::ioctl::IoctlOutput, _: *mut std::ffi::c_void) -> rustix::io::Result<OwnedFd> {
        // SAFETY: a successful UDMABUF_CREATE returns a descriptor the kernel just installed.
        Ok(unsafe { OwnedFd::from_raw_fd(out) })
    }
}

/// A udmabuf of `size` bytes (page multiple) over a sealed memfd, which udmabuf requires
/// (F_SEAL_SHRINK, no F_SEAL_WRITE). Used for PRIME import tests, and by the test kit.
pub fn udmabuf(size: usize) -> std::io::Result<OwnedFd> {
    let size = size.div_ceil(4096) * 4096;
    let memfd = memfd_create("cohere-udmabuf", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    ftruncate(&memfd, size as u64)?;
    fcntl_add_seals(&memfd, SealFlags::SHRINK)?;
    let dev = rustix::fs::open("/dev/udmabuf", OFlags::RDWR | OFlags::CLOEXEC, rustix::fs::Mode::empty())?;
    let create = UdmabufCreate { memfd: rustix::fd::AsRawFd::as_raw_fd(&memfd) as u32, flags: 0x01, offset: 0, size: size as u64 };
    // SAFETY: see CreateUdmabuf.
    Ok(unsafe { ioctl(&dev, CreateUdmabuf(create)) }?)
}

/// A card's identity: sysfs `dev` ("226:1"), as udev and `stat()` report it. Without that file
/// (trees that lack it) the DRM major and the card's minor, which is what the kernel assigns.
fn device_id(class: &Path, card: &str) -> DeviceId {
    let from_sysfs = std::fs::read_to_string(class.join(card).join("dev")).ok().and_then(|text| {
        let (major, minor) = text.trim().split_once(':')?;
        Some(rustix::fs::makedev(major.parse().ok()?, minor.parse().ok()?))
    });
    const DRM_MAJOR: u32 = 226;
    let minor = card.strip_prefix("card").and_then(|n| n.parse().ok()).unwrap_or(0);
    DeviceId(from_sysfs.unwrap_or_else(|| rustix::fs::makedev(DRM_MAJOR, minor)))
}

/// Imports a udmabuf into the device: can it take dma-bufs from other exporters?
fn prime_import_test(node: NodeFd<'_>) -> Option<Fact<bool>> {
    let card = Card(node);
    let buf = udmabuf(4096).ok()?;
    let (ok, result) = match card.prime_fd_to_buffer(buf.as_fd()) {
        Ok(handle) => {
            let _ = card.close_buffer(handle);
            (true, "udmabuf imported".to_owned())
        }
        Err(e) => (false, format!("udmabuf refused: {e}")),
    };
    Some(Fact::new(ok, Source::PrimeImportTest { result }))
}

/// Can linux-drm-syncobj-v1 use this render node? (timeline syncobjs and syncobj eventfd)
fn explicit_sync((fd, node): (NodeFd<'_>, String)) -> Fact<bool> {
    let what = format!("syncobj test on {node}");
    let owned = match fd {
        NodeFd::Opened(fd) => Ok(fd),
        NodeFd::Lent(fd) => fd.try_clone_to_owned(),
    };
    match owned.map(crate::sync::syncobj::SyncobjDevice::from_fd) {
        Ok(device) => {
            let support = device.support();
            Fact::new(support == crate::sync::syncobj::SyncobjSupport::Supported, Source::DeviceTest { what, result: support.to_string() })
        }
        Err(e) => Fact::new(false, Source::DeviceTest { what, result: format!("can't open: {e}") }),
    }
}

/// A GLES renderer as a consumer: it reads buffers with its device's DMA (a hardware GPU: the
/// device's render snooping) or with the CPU (software GL, which is cache-coherent), and imports
/// dma-bufs if EGL can.
fn gles_facts(gles: &GlesRenderer, devices: &[DeviceFacts], device_tree: bool) -> RendererFacts {
    let device = gles.render_node.as_ref().and_then(|node| devices.iter().find(|d| d.render_node.as_ref() == Some(node)));
    let snoops = match (gles.software, device) {
        (true, _) => Fact::new(true, Source::Renderer { name: format!("{} renders on the CPU", gles.name) }),
        (false, Some(d)) => d.render_snoops.clone(),
        (false, None) if device_tree => {
            Fact::new(false, Source::ArchDefault { rule: "device-tree platform: DMA is noncoherent unless dma-coherent".into() })
        }
        (false, None) => Fact::new(true, Source::ArchDefault { rule: "x86: DMA snoops the CPU caches".into() }),
    };
    let what = match &gles.render_node {
        Some(node) => format!("EGL on {node}"),
        None => "EGL on the software device".into(),
    };
    let result = if gles.imports_dmabuf { "EGL_EXT_image_dma_buf_import offered" } else { "no EGL_EXT_image_dma_buf_import" };
    RendererFacts::Gles {
        name: gles.name.clone(),
        device: device.map(|d| d.id),
        snoops,
        imports: Fact::new(gles.imports_dmabuf, Source::DeviceTest { what, result: result.into() }),
    }
}

/// Probes every DRM card under `options.sysfs_root`.
pub fn probe(options: &ProbeOptions, quirks: &Quirks) -> MachineFacts {
    let root = &options.sysfs_root;
    let dt_root = root.join("firmware/devicetree");
    let device_tree = dt_root.is_dir();
    let class = root.join("class/drm");
    let mut entries: Vec<String> =
        std::fs::read_dir(&class).map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect()).unwrap_or_default();
    entries.sort_by_key(|n| (n.len(), n.clone()));
    let cards = entries.iter().filter(|n| n.strip_prefix("card").is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit())));
    let mut devices = Vec::new();
    for card in cards {
        let device = class.join(card).join("device");
        let sysfs = |p: &Path| sysfs_source(root, p);
        let Some(driver) = driver(root, card, &device, &options.nodes) else {
            tracing::debug!(card, "no driver found; skipped");
            continue;
        };
        let subsystem = device.join("subsystem");
        let bus = Fact::new(link_name(&subsystem).unwrap_or_else(|| "unknown".into()), sysfs(&subsystem));
        let of_node = device.join("of_node");
        let dt_dma_coherent = std::fs::symlink_metadata(&of_node).is_ok().then(|| {
            let prop = of_node.join("dma-coherent");
            let path = Path::new("/sys").join(prop.strip_prefix(root).unwrap_or(&prop)).display().to_string();
            Fact::new(prop.exists(), Source::DeviceTree { path })
        });
        let default_snoops = match (&dt_dma_coherent, device_tree) {
            (Some(dt), _) => dt.clone(),
            (None, true) => {
                Fact::new(false, Source::ArchDefault { rule: "device-tree platform: DMA is noncoherent unless dma-coherent".into() })
            }
            (None, false) => Fact::new(true, Source::ArchDefault { rule: "x86: DMA snoops the CPU caches".into() }),
        };
        let d = &driver.value;
        let node = query_node(&device, card);
        let render_node = (node != *card).then_some(node.clone());
        let kms = entries.iter().any(|e| e.starts_with(&format!("{card}-")));
        let prime = options.nodes.node(&node).and_then(|(fd, _)| prime_import_test(fd));
        let imports_foreign = prime
            .or_else(|| quirks.imports_foreign(d))
            .unwrap_or_else(|| Fact::new(true, Source::Default { rule: "PRIME import assumed to work".into() }));
        let renders = quirks.renders(d).unwrap_or_else(|| Fact::new(render_node.is_some(), sysfs(&device.join("drm"))));
        let implicit_linear = quirks
            .implicit_linear(d)
            .unwrap_or_else(|| Fact::new(false, Source::Default { rule: format!("{d}'s implicit-modifier layout is unknown") }));
        let explicit_sync = render_node.as_ref().and_then(|render| options.nodes.node(render)).map(explicit_sync);
        devices.push(DeviceFacts {
            explicit_sync,
            id: device_id(&class, card),
            name: card.clone(),
            render_snoops: quirks.render_snoops(d).unwrap_or_else(|| default_snoops.clone()),
            scanout_snoops: quirks.scanout_snoops(d).unwrap_or(default_snoops),
            driver,
            bus,
            dt_dma_coherent,
            imports_foreign,
            renders,
            implicit_linear,
            kms,
            render_node,
        });
    }
    let renderer = match &options.renderer {
        RendererChoice::Cpu(name) => RendererFacts::Cpu { name: name.clone() },
        RendererChoice::FirstRenderDevice => devices
            .iter()
            .find(|d| d.render_node.is_some() && d.renders.value)
            .map(|d| RendererFacts::Device { id: d.id, card: d.name.clone() })
            .unwrap_or(RendererFacts::Cpu { name: "pixman".into() }),
        RendererChoice::Gles(gles) => gles_facts(gles, &devices, device_tree),
    };
    MachineFacts { device_tree, devices, renderer, renderer_reason: options.renderer_reason.clone(), render_import: None }
}
