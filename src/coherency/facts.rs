//! Facts the plan is computed from. Every fact carries its source, so `cohere inspect` and the
//! import log can say where each verdict came from.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::quirks::Quirks;
use super::DmabufFdInfo;

/// Where a fact came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    /// /proc/self/fdinfo of the buffer.
    Fdinfo,
    /// DRM_IOCTL_VERSION on the device node.
    /// DRM_IOCTL_VERSION on a device node.
    DrmVersion {
        /// The node.
        node: String,
    },
    /// A sysfs file or link.
    /// A sysfs file or link.
    Sysfs {
        /// The sysfs path.
        path: String,
    },
    /// The device tree (`of_node`), with or without `dma-coherent`.
    /// The device tree (`of_node`).
    DeviceTree {
        /// The property's sysfs path.
        path: String,
    },
    /// The architecture's rule, when nothing more specific is known.
    /// The architecture's rule.
    ArchDefault {
        /// The rule.
        rule: String,
    },
    /// The quirk database.
    /// The quirk database, at a line.
    Quirk {
        /// The database file.
        file: String,
        /// The line.
        line: usize,
    },
    /// The user's config file.
    /// The user's config file, at a line.
    Override {
        /// The config file.
        file: String,
        /// The line.
        line: usize,
    },
    /// A PRIME import of a real dma-buf into the device.
    /// A PRIME import of a real dma-buf, and its result.
    PrimeImportTest {
        /// What the import did.
        result: String,
    },
    /// A property of the renderer cohere uses.
    /// A property of the renderer.
    Renderer {
        /// The renderer.
        name: String,
    },
    /// A check of what the device does, with its result.
    /// A check of what the device does, and its result.
    DeviceTest {
        /// The check.
        what: String,
        /// Its result.
        result: String,
    },
    /// A default with no better source.
    /// A default, with its rule.
    Default {
        /// The rule.
        rule: String,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Fdinfo => write!(f, "fdinfo"),
            Source::DrmVersion { node } => write!(f, "DRM_IOCTL_VERSION on {node}"),
            Source::Sysfs { path } => write!(f, "sysfs {path}"),
            Source::DeviceTree { path } => write!(f, "device tree {path}"),
            Source::ArchDefault { rule } => write!(f, "arch default: {rule}"),
            Source::Quirk { file, line } => write!(f, "quirk {file}:{line}"),
            Source::Override { file, line } => write!(f, "override {file}:{line}"),
            Source::PrimeImportTest { result } => write!(f, "PRIME import test: {result}"),
            Source::Renderer { name } => write!(f, "renderer {name}"),
            Source::DeviceTest { what, result } => write!(f, "{what}: {result}"),
            Source::Default { rule } => write!(f, "default: {rule}"),
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fact<T> {
    /// The fact.
    pub value: T,
    /// Where it came from.
    pub source: Source,
}

impl<T> Fact<T> {
    /// A fact and its source.
    pub fn new(value: T, source: Source) -> Self {
        Self { value, source }
    }
}

impl<T: fmt::Display> fmt::Display for Fact<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.value, self.source)
    }
}

/// How the CPU maps an exporter's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryType {
    /// Ordinary cached system memory.
    Cached,
    /// Write-combined: CPU writes bypass the caches in bursts; reads are slow.
    WriteCombined,
    /// Uncached.
    Uncached,
    /// Allocated by a GPU for the consumer the client picked from feedback.
    Device,
    /// Coherent memory from the DMA API (`dma_alloc_attrs`) for the exporting device: mapped
    /// uncached where DMA doesn't snoop the CPU caches, cached where it does. Resolved against
    /// the machine by [`ExporterFacts::on`].
    DmaCoherent,
}

impl fmt::Display for MemoryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemoryType::Cached => "cached",
            MemoryType::WriteCombined => "write-combined",
            MemoryType::Uncached => "uncached",
            MemoryType::Device => "device",
            MemoryType::DmaCoherent => "dma-coherent",
        })
    }
}

/// What is known about a buffer's exporter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExporterFacts {
    /// The exporter's name (fdinfo `exp_name`).
    pub name: Fact<String>,
    /// How the CPU maps its memory.
    pub memory: Fact<MemoryType>,
    /// Whether DMA_BUF_IOCTL_SYNC syncs every attachment's caches.
    pub syncs_attachments: Fact<bool>,
    /// Whether the dma-buf can be mmapped.
    pub cpu_mappable: Fact<bool>,
}

impl ExporterFacts {
    /// Facts for exporter `name` from the quirk database. An exporter the database doesn't
    /// know is treated conservatively: cached memory without attachment sync.
    pub fn lookup(name: Fact<String>, quirks: &Quirks) -> Self {
        let unknown = || Source::Default { rule: format!("exporter {} is not in the quirk database", name.value) };
        Self {
            memory: quirks.exporter_memory(&name.value).unwrap_or_else(|| Fact::new(MemoryType::Cached, unknown())),
            syncs_attachments: quirks.exporter_syncs_attachments(&name.value).unwrap_or_else(|| Fact::new(false, unknown())),
            cpu_mappable: quirks.exporter_cpu_mappable(&name.value).unwrap_or_else(|| Fact::new(true, unknown())),
            name,
        }
    }

    /// The facts as they hold on `machine`: DMA-coherent memory is uncached on device-tree
    /// platforms (DMA is noncoherent there unless a node says otherwise, and the exporting
    /// device isn't known) and cached where DMA snoops the CPU caches.
    pub fn on(&self, machine: &MachineFacts) -> ExporterFacts {
        let mut facts = self.clone();
        if self.memory.value == MemoryType::DmaCoherent {
            let (memory, rule) = if machine.device_tree {
                (MemoryType::Uncached, "DMA-coherent memory is mapped uncached on a device-tree platform")
            } else {
                (MemoryType::Cached, "DMA-coherent memory is cached where DMA snoops (x86)")
            };
            facts.memory = Fact::new(memory, Source::ArchDefault { rule: format!("{rule}; {}", self.memory.source) });
        }
        facts
    }

    /// Facts for a buffer from its fdinfo.
    pub fn from_fdinfo(info: &DmabufFdInfo, quirks: &Quirks) -> Self {
        Self::lookup(Fact::new(info.exp_name.clone(), Source::Fdinfo), quirks)
    }
}

/// A DRM device's identity: the dev_t of its primary node (`/dev/dri/cardN`), as sysfs `dev`
/// and `stat()` give it and as smithay's `DrmNode::dev_id()` returns it. Decisions are keyed by
/// this, never by a card name or a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(pub u64);

impl DeviceId {
    /// The device of a DRM node (primary or render: both belong to one device, but only the
    /// primary node's dev_t is the identity; render nodes are mapped by the caller).
    pub fn from_dev(dev: u64) -> Self {
        Self(dev)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", rustix::fs::major(self.0), rustix::fs::minor(self.0))
    }
}

/// Who reads a buffer. The label a consumer is printed with is separate data
/// ([`ConsumerFacts::name`]); nothing decides on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "device", rename_all = "kebab-case")]
pub enum ConsumerId {
    /// The renderer that composites (a CPU renderer or a GPU).
    Render,
    /// The display engine of one KMS device.
    Scanout(DeviceId),
    /// The CPU itself (the CPU copy's reads).
    Cpu,
}

impl ConsumerId {
    /// How this consumer reads.
    pub fn access(self) -> Access {
        match self {
            ConsumerId::Render => Access::Sample,
            ConsumerId::Scanout(_) => Access::Scanout,
            ConsumerId::Cpu => Access::CpuRead,
        }
    }
}

/// One DRM device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceFacts {
    /// Its identity (primary node dev_t).
    pub id: DeviceId,
    /// `card0`, ...: for people, never for decisions.
    pub name: String,
    /// The DRM driver.
    pub driver: Fact<String>,
    /// The bus the device is on.
    pub bus: Fact<String>,
    /// `Some` when the device has a device-tree node: whether it says `dma-coherent`.
    pub dt_dma_coherent: Option<Fact<bool>>,
    /// Whether its GPU snoops CPU caches when sampling.
    pub render_snoops: Fact<bool>,
    /// Whether its display engine snoops CPU caches when scanning out.
    pub scanout_snoops: Fact<bool>,
    /// Whether it imports dma-bufs from other exporters.
    pub imports_foreign: Fact<bool>,
    /// Whether it can be cohere's renderer.
    pub renders: Fact<bool>,
    /// Buffers this driver allocates without an explicit modifier (DRM_FORMAT_MOD_INVALID)
    /// are always linear: it has no tiled layouts.
    pub implicit_linear: Fact<bool>,
    /// Has connectors: a display (KMS) device.
    pub kms: bool,
    /// Its render node's file name, if it has one.
    pub render_node: Option<String>,
    /// Timeline syncobjs and syncobj eventfd work on its render node, so linux-drm-syncobj-v1
    /// can import clients' timelines here. `None` when the node can't be opened (fixtures).
    pub explicit_sync: Option<Fact<bool>>,
}

/// How a consumer accesses the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// The renderer samples it (composition).
    Sample,
    /// A display controller scans it out.
    Scanout,
    /// The CPU reads it (CPU copy).
    CpuRead,
}

impl fmt::Display for Access {
    /// The names the plan counters use: `render`, `scanout`, `cpu`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Sample => "render",
            Access::Scanout => "scanout",
            Access::CpuRead => "cpu",
        })
    }
}

/// One consumer of a buffer, as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerFacts {
    /// Who it is.
    pub id: ConsumerId,
    /// `render (pixman)`, `scanout card1 (vkms)`, `cpu`: a label for people.
    pub name: String,
    /// Whether it reads CPU-cached memory coherently.
    pub snoops: Fact<bool>,
    /// Whether it imports dma-bufs from other exporters.
    pub imports_foreign: Fact<bool>,
    /// Reads through a CPU mapping (a CPU renderer such as pixman), on every repaint that
    /// touches the buffer, rather than with a device's DMA.
    pub through_cpu: bool,
}

/// Which renderer cohere composites with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RendererFacts {
    /// A CPU renderer (pixman): it reads buffers through CPU mappings on every repaint.
    /// A CPU renderer (pixman).
    Cpu {
        /// Its name.
        name: String,
    },
    /// GLES: buffers are imported as EGL images and sampled by the GPU (or by llvmpipe).
    /// GLES on an EGL device: its GL renderer string, device, whether it snoops, whether it imports dma-bufs.
    Gles {
        /// The GL renderer string.
        name: String,
        /// The DRM device it renders on (none for the software device).
        device: Option<DeviceId>,
        /// Whether it reads CPU-cached memory coherently.
        snoops: Fact<bool>,
        /// Whether its EGL imports dma-bufs.
        imports: Fact<bool>,
    },
    /// A GPU: its identity, and its card name for people.
    /// The GPU of a DRM device (fixture machines).
    Device {
        /// The device.
        id: DeviceId,
        /// Its card name.
        card: String,
    },
}

/// Everything known about the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineFacts {
    /// True on device-tree platforms (most ARM boards), where DMA is noncoherent by default.
    pub device_tree: bool,
    /// Every DRM device.
    pub devices: Vec<DeviceFacts>,
    /// The renderer cohere composites with.
    pub renderer: RendererFacts,
    /// Why this renderer.
    pub renderer_reason: Option<String>,
    /// Set for one buffer the renderer failed to import (see `without_render_import`).
    #[serde(skip)]
    pub render_import: Option<Fact<bool>>,
}

impl MachineFacts {
    /// The render consumer.
    pub fn render_consumer(&self) -> ConsumerFacts {
        let mut consumer = self.renderer_consumer();
        if let Some(import) = &self.render_import {
            consumer.imports_foreign = import.clone();
        }
        consumer
    }

    fn renderer_consumer(&self) -> ConsumerFacts {
        match &self.renderer {
            RendererFacts::Device { id, card } => match self.devices.iter().find(|d| d.id == *id) {
                Some(d) => ConsumerFacts {
                    id: ConsumerId::Render,
                    name: format!("render {} ({})", d.name, d.driver.value),
                    snoops: d.render_snoops.clone(),
                    imports_foreign: d.imports_foreign.clone(),
                    through_cpu: false,
                },
                None => Self::cpu_renderer(&format!("{card} (missing)")),
            },
            RendererFacts::Cpu { name } => Self::cpu_renderer(name),
            RendererFacts::Gles { name, snoops, imports, .. } => ConsumerFacts {
                id: ConsumerId::Render,
                name: format!("render (gles: {})", short_gl_name(name)),
                snoops: snoops.clone(),
                imports_foreign: imports.clone(),
                through_cpu: false,
            },
        }
    }

    /// The same machine with the renderer unable to import one buffer (its import at create
    /// failed): that buffer is planned against this.
    pub fn without_render_import(&self, result: String) -> MachineFacts {
        let mut m = self.clone();
        m.render_import = Some(Fact::new(false, Source::DeviceTest { what: "the renderer's import of this buffer".into(), result }));
        m
    }

    fn cpu_renderer(name: &str) -> ConsumerFacts {
        let source = Source::Renderer { name: name.to_owned() };
        ConsumerFacts {
            id: ConsumerId::Render,
            name: format!("render ({name})"),
            snoops: Fact::new(true, source.clone()),
            imports_foreign: Fact::new(true, source),
            through_cpu: true,
        }
    }

    /// One scanout consumer per KMS device.
    pub fn scanout_consumers(&self) -> Vec<ConsumerFacts> {
        self.devices
            .iter()
            .filter(|d| d.kms)
            .map(|d| ConsumerFacts {
                id: ConsumerId::Scanout(d.id),
                name: format!("scanout {} ({})", d.name, d.driver.value),
                snoops: d.scanout_snoops.clone(),
                imports_foreign: d.imports_foreign.clone(),
                through_cpu: false,
            })
            .collect()
    }

    /// Whether a buffer with the implicit modifier (DRM_FORMAT_MOD_INVALID) can be read as
    /// linear. A "drm" dma-buf doesn't say which device allocated it, so this holds only when
    /// every DRM device here lays out implicit-modifier buffers linearly (CPU exporters such as
    /// udmabuf have no layout of their own). With no device at all, nobody could have tiled it.
    pub fn implicit_modifier_linear(&self) -> Fact<bool> {
        match self.devices.iter().find(|d| !d.implicit_linear.value) {
            Some(d) => Fact::new(false, d.implicit_linear.source.clone()),
            None => {
                let names: Vec<&str> = self.devices.iter().map(|d| d.driver.value.as_str()).collect();
                Fact::new(
                    true,
                    Source::Default {
                        rule: format!("every DRM device ({}) allocates implicit-modifier buffers linearly", names.join(", ")),
                    },
                )
            }
        }
    }

    /// The device linux-drm-syncobj-v1 imports timelines on: the first with a render node
    /// where timeline syncobjs and syncobj eventfd work.
    pub fn explicit_sync_device(&self) -> Option<&DeviceFacts> {
        self.devices.iter().find(|d| d.render_node.is_some() && d.explicit_sync.as_ref().is_some_and(|f| f.value))
    }

    /// Whether cohere offers linux-drm-syncobj-v1, and why: for `cohere inspect` and the log.
    pub fn explicit_sync_verdict(&self) -> String {
        if let Some(d) = self.explicit_sync_device() {
            let why = d.explicit_sync.as_ref().map(|f| f.source.to_string()).unwrap_or_default();
            return format!("offered on {} ({}): {why}", d.name, d.driver.value);
        }
        let tried: Vec<String> = self
            .devices
            .iter()
            .filter_map(|d| Some(format!("{} ({}): {}", d.name, d.driver.value, d.explicit_sync.as_ref()?.source)))
            .collect();
        if tried.is_empty() {
            "not offered: no render node could be checked".into()
        } else {
            format!("not offered: {}", tried.join("; "))
        }
    }

    /// The CPU as a consumer (the CPU copy reads through a SYNC-bracketed mapping).
    pub fn cpu_consumer() -> ConsumerFacts {
        let source = Source::Default { rule: "the CPU is coherent with its own caches".into() };
        ConsumerFacts {
            id: ConsumerId::Cpu,
            name: "cpu".into(),
            snoops: Fact::new(true, source.clone()),
            imports_foreign: Fact::new(true, source),
            through_cpu: true,
        }
    }
}

/// "llvmpipe" out of "llvmpipe (LLVM 15.0.6, 256 bits)": labels stay short.
fn short_gl_name(name: &str) -> &str {
    name.split(" (").next().unwrap_or(name)
}
