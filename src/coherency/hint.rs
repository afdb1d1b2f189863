//! Hints: what a client could change about its buffers to reach a cheaper path. Like the plan,
//! a pure function of facts: each hint is found by planning the same buffer again with one
//! thing changed (its memory type, its exporter) and keeping the change only when it makes a
//! consumer's path cheaper and none dearer. So cohere never suggests what it wouldn't do.

use std::fmt;

use serde::Serialize;

use super::facts::{ConsumerId, DeviceId, ExporterFacts, Fact, MachineFacts, MemoryType, Source};
use super::plan::{BufferPlan, Path, Why};

/// A change a client could make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Hint {
    /// Allocate from this display device: it can't import buffers from the current exporter.
    AllocateFromScanoutDevice(DeviceId),
    /// Allocate write-combined or device memory: a display that doesn't snoop the CPU caches
    /// takes that without cache maintenance, composition or a copy.
    AllocateWriteCombined,
    /// Allocate cached memory: a CPU renderer reads it directly, where this memory is copied.
    AllocateCached,
    /// Use a format and modifier from the surface's dma-buf feedback scanout tranche: this
    /// display's planes don't take the buffer's modifier.
    UseScanoutTranche(DeviceId),
    /// Use a different format: this display's planes don't take the buffer's format at all.
    UseDifferentFormat(DeviceId),
}

impl Hint {
    /// The display device the hint is about, if any.
    pub fn device(self) -> Option<DeviceId> {
        match self {
            Hint::AllocateFromScanoutDevice(d) | Hint::UseScanoutTranche(d) | Hint::UseDifferentFormat(d) => Some(d),
            Hint::AllocateWriteCombined | Hint::AllocateCached => None,
        }
    }
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hint::AllocateFromScanoutDevice(d) => write!(f, "allocate from scanout device {d}"),
            Hint::AllocateWriteCombined => write!(f, "allocate write-combined"),
            Hint::AllocateCached => write!(f, "allocate cached"),
            Hint::UseScanoutTranche(d) => write!(f, "use the scanout tranche of {d}"),
            Hint::UseDifferentFormat(d) => write!(f, "use a format {d} takes"),
        }
    }
}

/// A hint and what it means for this buffer, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Advice {
    /// The change.
    pub hint: Hint,
    /// What it means for this buffer, in words.
    pub detail: String,
}

impl fmt::Display for Advice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.hint, self.detail)
    }
}

/// Paths from cheapest to dearest, for "cheaper and none dearer".
fn cost(path: Path) -> u8 {
    match path {
        Path::Direct => 0,
        Path::DirectWithMaintenance => 1,
        Path::Composite => 2,
        Path::CpuCopy => 3,
        Path::Reject => 4,
    }
}

/// Whether `other` is no dearer than `plan` for any consumer.
fn none_dearer(plan: &BufferPlan, other: &BufferPlan) -> bool {
    plan.consumers().all(|c| other.decision(c.consumer).is_some_and(|d| cost(d.path) <= cost(c.path())))
}

/// The plan of the same buffer in memory of type `memory`.
fn with_memory(exporter: &ExporterFacts, machine: &MachineFacts, memory: MemoryType) -> BufferPlan {
    let mut facts = exporter.clone();
    facts.memory = Fact::new(memory, Source::Default { rule: format!("what if the memory were {memory}") });
    BufferPlan::compute(&facts, machine)
}

/// The hints for a buffer from `exporter` planned as `plan` on `machine`, in a stable order.
/// Only the consumers in `plan` count: a compositor that drives some displays passes the plan
/// for those ([`BufferPlan::for_displays`]).
pub fn plan_hints(exporter: &ExporterFacts, machine: &MachineFacts, plan: &BufferPlan) -> Vec<Advice> {
    let mut hints = Vec::new();
    let exp = &plan.exporter;
    // A display that can't import this exporter's buffers imports its own: its driver's
    // buffers are native to it, so they can go on its planes.
    for s in &plan.scanout {
        if let (ConsumerId::Scanout(device), Why::CannotImport) = (s.consumer, s.decision.why) {
            if s.path() != Path::Direct {
                hints.push(Advice {
                    hint: Hint::AllocateFromScanoutDevice(device),
                    detail: format!(
                        "{} can't import {exp} dma-bufs; buffers allocated on it (GBM or dumb buffers) can go on its planes",
                        s.label
                    ),
                });
            }
        }
    }
    let memory = exporter.on(machine).memory.value;
    let not_snooped: Vec<&str> = plan
        .scanout
        .iter()
        .filter(|s| matches!(s.decision.why, Why::NotCoherentWithSync | Why::NotCoherentNoSync))
        .map(|s| s.label.as_str())
        .collect();
    if matches!(memory, MemoryType::Cached | MemoryType::DmaCoherent) && !not_snooped.is_empty() {
        let other = with_memory(exporter, machine, MemoryType::WriteCombined);
        let cheaper = plan.scanout.iter().any(|s| other.decision(s.consumer).is_some_and(|d| cost(d.path) < cost(s.path())));
        if cheaper {
            hints.push(Advice {
                hint: Hint::AllocateWriteCombined,
                detail: format!(
                    "{} can't snoop CPU caches: cached {exp} memory needs cache maintenance, composition or a copy there, write-combined or device memory goes on the planes as it is",
                    not_snooped.join(", ")
                ),
            });
        }
    }
    if plan.render.decision.why == Why::CpuRendererUncached {
        let other = with_memory(exporter, machine, MemoryType::Cached);
        if cost(other.render.path()) < cost(plan.render.path()) && none_dearer(plan, &other) {
            hints.push(Advice {
                hint: Hint::AllocateCached,
                detail: format!(
                    "{} reads client buffers through the CPU: {memory} {exp} memory is copied first, cached memory is read as it is",
                    plan.render.label
                ),
            });
        }
    }
    hints
}

/// The hint for a buffer a display's planes didn't take because of its format or modifier:
/// the scanout tranche when the planes take its format with another modifier, else another
/// format.
pub fn scanout_format_hint(device: DeviceId, display: &str, format_on_planes: bool) -> Advice {
    if format_on_planes {
        Advice {
            hint: Hint::UseScanoutTranche(device),
            detail: format!("{display}'s planes don't take this modifier; the surface's dma-buf feedback lists the ones they take"),
        }
    } else {
        Advice { hint: Hint::UseDifferentFormat(device), detail: format!("{display}'s planes don't take this format") }
    }
}
