//! The plan: a pure function of (exporter facts, consumer facts, access) that says how each
//! consumer can read a buffer coherently, and why. This is the only place that decides.
//!
//! | memory         | consumer snoops | exporter syncs | path                                 |
//! |----------------|-----------------|----------------|--------------------------------------|
//! | any            | can't import    | –              | fallback                             |
//! | not cached     | CPU renderer    | –              | CpuCopy (read once per damage)       |
//! | device (GPU)   | –               | –              | Direct (client followed feedback)    |
//! | WC / uncached  | –               | –              | Direct                               |
//! | cached         | yes             | –              | Direct                               |
//! | cached         | no              | yes            | DirectWithMaintenance (SYNC bracket) |
//! | cached         | no              | no             | fallback                             |
//!
//! Fallback for scanout is Composite when the renderer can read the buffer (Direct or with
//! maintenance), else CpuCopy; for the renderer it is CpuCopy. CpuCopy needs a CPU mapping;
//! without one the consumer is Reject. The CPU itself reads Direct (its SYNC bracket handles
//! device writes) when the exporter can be mapped. A CPU copy fixes CPU↔device incoherency
//! because it brackets its own access; it never claims to fix device-to-device incoherency.
//!
//! A CPU renderer (pixman) reads a buffer through a CPU mapping on every repaint that touches
//! it: overlapping windows, moves, every output the window is on. GPU, write-combined and
//! uncached memory is slow to read that way, so such buffers are copied instead, each damaged
//! pixel once per commit, into cached memory the renderer composites from.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::facts::{Access, ConsumerFacts, ConsumerId, DeviceId, ExporterFacts, MachineFacts, MemoryType};

/// How one consumer gets the pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Path {
    /// The consumer reads the client's buffer itself.
    Direct,
    /// A display reads it after cache maintenance (DMA_BUF_IOCTL_SYNC).
    DirectWithMaintenance,
    /// The renderer draws it for this display.
    Composite,
    /// The CPU copies its damage first; the consumer reads the copy.
    CpuCopy,
    /// This consumer can't show it.
    Reject,
}

impl Path {
    /// Every path, cheapest first.
    pub const ALL: [Path; 5] = [Path::Direct, Path::DirectWithMaintenance, Path::Composite, Path::CpuCopy, Path::Reject];

    /// Whether the consumer reads the client's buffer itself (no copy, no composition).
    pub fn reads_buffer(self) -> bool {
        matches!(self, Path::Direct | Path::DirectWithMaintenance)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The fact that decided a path, as data: what a client can act on (the buffer-path protocol
/// sends it), where [`Decision::reason`] says it in words with each fact's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Why {
    /// The consumer reads this memory coherently: nothing stands in the way of Direct.
    Coherent,
    /// The consumer can't import dma-bufs from this exporter.
    CannotImport,
    /// The consumer doesn't snoop CPU caches; the exporter's SYNC makes the buffer safe.
    NotCoherentWithSync,
    /// The consumer doesn't snoop CPU caches and the exporter can't sync attachments.
    NotCoherentNoSync,
    /// A CPU renderer would read GPU, write-combined or uncached memory on every repaint.
    CpuRendererUncached,
    /// The CPU can't map the buffer.
    NotMappable,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A path and the reason for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// How the consumer gets the pixels.
    pub path: Path,
    /// The deciding fact.
    pub why: Why,
    /// The reason in words, naming where each fact came from.
    pub reason: String,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.path, self.reason)
    }
}

fn decide(path: Path, why: Why, reason: impl Into<String>) -> Decision {
    Decision { path, why, reason: reason.into() }
}

/// The decision for one consumer. `render` is the renderer's decision, needed to know whether
/// a scanout consumer can fall back to composition; it is ignored for other accesses.
pub fn plan(exporter: &ExporterFacts, consumer: &ConsumerFacts, render: Option<&Decision>) -> Decision {
    let exp = &exporter.name.value;
    let access = consumer.id.access();
    if access == Access::CpuRead {
        return if exporter.cpu_mappable.value {
            decide(Path::Direct, Why::Coherent, format!("{exp} buffers can be mapped; reads are bracketed by DMA_BUF_IOCTL_SYNC"))
        } else {
            decide(Path::Reject, Why::NotMappable, format!("{exp} buffers can't be mapped by the CPU"))
        };
    }
    let mem = &exporter.memory;
    let (why, words) = if !consumer.imports_foreign.value {
        (Why::CannotImport, format!("{} can't import dma-bufs from other exporters ({})", consumer.name, consumer.imports_foreign.source))
    } else {
        match mem.value {
            MemoryType::Device | MemoryType::WriteCombined | MemoryType::Uncached if consumer.through_cpu => {
                (Why::CpuRendererUncached, format!("{exp} memory is {mem}; {} reads through the CPU on every repaint", consumer.name))
            }
            MemoryType::Device => {
                return decide(Path::Direct, Why::Coherent, format!("{exp} is GPU memory ({}), allocated per dma-buf feedback", mem.source))
            }
            MemoryType::WriteCombined | MemoryType::Uncached => {
                return decide(Path::Direct, Why::Coherent, format!("{exp} memory is {mem}: no CPU cache to flush"))
            }
            // Unresolved DMA-coherent memory (see `ExporterFacts::on`) is read as cached, the
            // conservative reading.
            MemoryType::Cached | MemoryType::DmaCoherent if consumer.snoops.value => {
                return decide(
                    Path::Direct,
                    Why::Coherent,
                    format!("{exp} memory is cached ({}); {} is cache-coherent ({})", mem.source, consumer.name, consumer.snoops.source),
                )
            }
            MemoryType::Cached | MemoryType::DmaCoherent if exporter.syncs_attachments.value => {
                return decide(
                    Path::DirectWithMaintenance,
                    Why::NotCoherentWithSync,
                    format!(
                        "{exp} memory is cached ({}); {} doesn't snoop ({}); {exp} syncs attachments on DMA_BUF_IOCTL_SYNC ({})",
                        mem.source, consumer.name, consumer.snoops.source, exporter.syncs_attachments.source
                    ),
                )
            }
            MemoryType::Cached | MemoryType::DmaCoherent => (
                Why::NotCoherentNoSync,
                format!(
                    "{exp} memory is cached ({}); {} doesn't snoop ({}); {exp} can't sync attachments ({})",
                    mem.source, consumer.name, consumer.snoops.source, exporter.syncs_attachments.source
                ),
            ),
        }
    };
    if access == Access::Scanout {
        if let Some(r) = render.filter(|r| r.path.reads_buffer()) {
            return decide(Path::Composite, why, format!("{words}; the renderer reads it ({})", r.path));
        }
    }
    if exporter.cpu_mappable.value {
        decide(Path::CpuCopy, why, format!("{words}; a SYNC-bracketed CPU copy"))
    } else {
        decide(Path::Reject, why, format!("{words}; and it can't be mapped for a CPU copy"))
    }
}

/// One consumer's decision, with the consumer's identity and its label for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerPlan {
    /// Who.
    pub consumer: ConsumerId,
    /// `render (pixman)`, `scanout card1 (vkms)`: printed, never compared.
    pub label: String,
    /// The path and why.
    pub decision: Decision,
}

impl ConsumerPlan {
    fn new(consumer: &ConsumerFacts, decision: Decision) -> Self {
        Self { consumer: consumer.id, label: consumer.name.clone(), decision }
    }

    /// The decision's path.
    pub fn path(&self) -> Path {
        self.decision.path
    }
}

/// The plan for every consumer of one buffer, computed once at import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BufferPlan {
    /// The buffer's exporter.
    pub exporter: String,
    /// How the CPU maps the buffer's memory: how the CPU copy reads it.
    #[serde(skip)]
    pub memory: MemoryType,
    /// The renderer's decision.
    pub render: ConsumerPlan,
    /// One per KMS device.
    pub scanout: Vec<ConsumerPlan>,
    /// The CPU's decision.
    pub cpu: ConsumerPlan,
}

impl BufferPlan {
    /// Plans a buffer from `exporter` against every consumer on `machine`.
    pub fn compute(exporter: &ExporterFacts, machine: &MachineFacts) -> Self {
        let exporter = &exporter.on(machine);
        let render_consumer = machine.render_consumer();
        let render = plan(exporter, &render_consumer, None);
        let scanout = machine.scanout_consumers().iter().map(|c| ConsumerPlan::new(c, plan(exporter, c, Some(&render)))).collect();
        let cpu_consumer = MachineFacts::cpu_consumer();
        let cpu = ConsumerPlan::new(&cpu_consumer, plan(exporter, &cpu_consumer, None));
        Self {
            exporter: exporter.name.value.clone(),
            memory: exporter.memory.value,
            render: ConsumerPlan::new(&render_consumer, render),
            scanout,
            cpu,
        }
    }

    /// The plan with only the displays in `displays` (the ones a compositor drives).
    pub fn for_displays(&self, displays: &[DeviceId]) -> BufferPlan {
        let mut plan = self.clone();
        plan.scanout.retain(|c| matches!(c.consumer, ConsumerId::Scanout(d) if displays.contains(&d)));
        plan
    }

    /// `Some(reason)` when no consumer can show the buffer: it gets `failed` at import.
    pub fn rejection(&self) -> Option<String> {
        let shown = self.render.path() != Path::Reject || self.scanout.iter().any(|c| c.path() != Path::Reject);
        (!shown).then(|| format!("no consumer can show {} buffers: {}", self.exporter, self.render.decision.reason))
    }

    /// Every consumer's plan, render first, then each display, then the CPU.
    pub fn consumers(&self) -> impl Iterator<Item = &ConsumerPlan> {
        std::iter::once(&self.render).chain(&self.scanout).chain(std::iter::once(&self.cpu))
    }

    /// Every (label, decision), render first: for printing.
    pub fn decisions(&self) -> impl Iterator<Item = (&str, &Decision)> {
        self.consumers().map(|c| (c.label.as_str(), &c.decision))
    }

    /// The decision for `consumer`, if it is one of this buffer's consumers.
    pub fn decision(&self, consumer: ConsumerId) -> Option<&Decision> {
        self.consumers().find(|c| c.consumer == consumer).map(|c| &c.decision)
    }

    /// How the display engine of `device` gets the pixels; `None` for a device the plan
    /// doesn't know (not a display, or added after the plan was made).
    pub fn scanout_path(&self, device: DeviceId) -> Option<Path> {
        self.decision(ConsumerId::Scanout(device)).map(|d| d.path)
    }
}

impl fmt::Display for BufferPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.decisions().map(|(n, d)| format!("{n}: {}", d.path)).collect();
        f.write_str(&parts.join(", "))
    }
}
