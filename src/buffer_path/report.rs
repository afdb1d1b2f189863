//! What a surface's buffer-path report says, and how it is worked out: a pure function of the
//! current buffer's plan and hints and of what the last frame did with the surface. The plan
//! and hints come from [`crate::coherency`]; this only puts them side by side with the frame.

use crate::coherency::{scanout_format_hint, Advice, BufferPlan, ConsumerId, DeviceId, Path, Why};

/// Who reads a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consumer {
    /// The compositor's renderer.
    Render,
    /// A display, by its device.
    Display(DeviceId),
    /// The CPU (the CPU copy).
    Cpu,
}

/// Why a path, as the protocol says it: the plan's reasons ([`Why`]) and what a frame found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Nothing stands in the way of reading it directly.
    Coherent,
    /// Shared memory, not a dma-buf.
    NotDmaBuf,
    /// The consumer can't import it.
    CannotImport,
    /// The consumer doesn't snoop; the exporter's SYNC makes it safe.
    NotCoherentWithSync,
    /// The consumer doesn't snoop and the exporter can't sync attachments.
    NotCoherentNoSync,
    /// A CPU renderer would read uncached memory on every repaint.
    CpuRendererUncached,
    /// The CPU can't map it.
    NotMappable,
    /// The display's planes don't take its format or modifier.
    FormatOrModifier,
    /// Direct scanout was allowed but no plane took it.
    PlaneUnavailable,
    /// A device was writing it again after its commit.
    FencePending,
}

impl From<Why> for Reason {
    fn from(why: Why) -> Self {
        match why {
            Why::Coherent => Reason::Coherent,
            Why::CannotImport => Reason::CannotImport,
            Why::NotCoherentWithSync => Reason::NotCoherentWithSync,
            Why::NotCoherentNoSync => Reason::NotCoherentNoSync,
            Why::CpuRendererUncached => Reason::CpuRendererUncached,
            Why::NotMappable => Reason::NotMappable,
        }
    }
}

/// One consumer's planned path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerPath {
    /// Who reads it.
    pub consumer: Consumer,
    /// How.
    pub path: Path,
    /// Why.
    pub reason: Reason,
    /// The reason in words, with each fact's source.
    pub detail: String,
}

/// How a presented frame showed the surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The client's buffer itself on a plane.
    ZeroCopy,
    /// Drawn by the renderer from the buffer.
    Composited,
    /// Drawn by the renderer from its CPU copy.
    Copied,
    /// Left out of the frame.
    Withheld,
}

/// What the last presented frame did with the surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presented {
    /// How it was shown.
    pub outcome: Outcome,
    /// Why not zero-copy (or what the plane needed).
    pub reason: Reason,
    /// What the newest CPU copy read out of the client's buffer (0 unless copied).
    pub bytes_copied: u64,
}

/// A surface's report: one batch of the protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathReport {
    /// One per consumer.
    pub consumers: Vec<ConsumerPath>,
    /// What the last presented frame did, once there is one.
    pub presented: Option<Presented>,
    /// What the client could change.
    pub hints: Vec<Advice>,
}

impl PathReport {
    /// Whether `other` says something this doesn't: bytes copied alone changes every commit
    /// of a copied surface, so it doesn't count (the protocol sends batches on changes of path
    /// or reason, not every frame).
    pub fn differs(&self, other: &PathReport) -> bool {
        let key = |p: &Option<Presented>| p.map(|p| (p.outcome, p.reason));
        self.consumers != other.consumers || self.hints != other.hints || key(&self.presented) != key(&other.presented)
    }
}

/// How the renderer reads client memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RendererAccess {
    /// A CPU renderer (pixman): it reads shared memory where it is.
    ThroughCpu,
    /// A GPU renderer: shared memory is uploaded into a texture.
    Gpu,
}

/// The surface's current buffer.
#[derive(Debug, Clone, Copy)]
pub enum CurrentBuffer<'a> {
    /// No buffer attached.
    None,
    /// A wl_shm buffer.
    Shm,
    /// A dma-buf, with its plan and the hints for it.
    /// A dma-buf, with its plan and hints.
    Dmabuf {
        /// The buffer's plan.
        plan: &'a BufferPlan,
        /// What the client could change.
        hints: &'a [Advice],
    },
}

/// Why a display's planes didn't take a buffer the plan allowed there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaneRefusal {
    /// The planes don't take its format and modifier; `fourcc_taken` when they take the
    /// format with some other modifier.
    /// The format or modifier (`fourcc_taken`: the format with another modifier is taken).
    Format {
        /// The planes take the format with another modifier.
        fourcc_taken: bool,
    },
    /// Something else: no free plane, a failed test commit.
    Other,
}

/// How a frame showed the surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// On a plane, the client's buffer itself.
    ZeroCopy,
    /// Drawn by the renderer: from its CPU copy (`copied`) or from the buffer, maybe after a
    /// display's planes refused it.
    /// Drawn (`copied`: from the CPU copy; `refusal`: why a plane didn't take it).
    Drawn {
        /// From the CPU copy.
        copied: bool,
        /// Why a display's planes didn't take it, if one was asked.
        refusal: Option<PlaneRefusal>,
    },
    /// Left out: a device was writing its buffer again after its commit.
    Withheld,
}

/// What a frame did with the surface, on the output it is mainly shown on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// How.
    pub shown: Shown,
    /// The display device of that output (none headless).
    pub display: Option<DeviceId>,
    /// What the surface's newest CPU copy read.
    pub bytes_copied: u64,
}

/// The report for a surface with `buffer`, last seen as `seen`.
pub fn report(renderer: RendererAccess, buffer: CurrentBuffer<'_>, seen: Option<&Observation>) -> PathReport {
    let mut report = PathReport::default();
    match buffer {
        CurrentBuffer::None => {}
        CurrentBuffer::Shm => {
            let (path, detail) = match renderer {
                RendererAccess::ThroughCpu => (Path::Direct, "shared memory: the CPU renderer reads it where it is"),
                RendererAccess::Gpu => (Path::CpuCopy, "shared memory: its damage is uploaded into a texture"),
            };
            report.consumers.push(ConsumerPath { consumer: Consumer::Render, path, reason: Reason::NotDmaBuf, detail: detail.into() });
        }
        CurrentBuffer::Dmabuf { plan, hints } => {
            for c in plan.consumers() {
                let consumer = match c.consumer {
                    ConsumerId::Render => Consumer::Render,
                    ConsumerId::Scanout(d) => Consumer::Display(d),
                    ConsumerId::Cpu => Consumer::Cpu,
                };
                report.consumers.push(ConsumerPath {
                    consumer,
                    path: c.path(),
                    reason: c.decision.why.into(),
                    detail: c.decision.reason.clone(),
                });
            }
            report.hints = hints.to_vec();
        }
    }
    if let Some(seen) = seen.filter(|_| !matches!(buffer, CurrentBuffer::None)) {
        let presented = presented(buffer, seen);
        if let (Reason::FormatOrModifier, Some(d), CurrentBuffer::Dmabuf { plan, .. }) = (presented.reason, seen.display, buffer) {
            let fourcc_taken = matches!(seen.shown, Shown::Drawn { refusal: Some(PlaneRefusal::Format { fourcc_taken: true }), .. });
            let label = plan.consumers().find(|c| c.consumer == ConsumerId::Scanout(d)).map_or("the display", |c| c.label.as_str());
            report.hints.push(scanout_format_hint(d, label, fourcc_taken));
        }
        report.presented = Some(presented);
    }
    report
}

/// Outcome and reason of a frame: why not zero-copy (or, on a plane, what the plane needed).
fn presented(buffer: CurrentBuffer<'_>, seen: &Observation) -> Presented {
    let plan = match buffer {
        CurrentBuffer::Dmabuf { plan, .. } => Some(plan),
        CurrentBuffer::None | CurrentBuffer::Shm => None,
    };
    let display = seen.display.and_then(|d| plan.and_then(|p| p.decision(ConsumerId::Scanout(d))));
    let (outcome, reason) = match (seen.shown, plan) {
        (Shown::Withheld, _) => (Outcome::Withheld, Reason::FencePending),
        (_, None) => (if seen.shown == Shown::ZeroCopy { Outcome::ZeroCopy } else { Outcome::Composited }, Reason::NotDmaBuf),
        (Shown::ZeroCopy, Some(_)) => (Outcome::ZeroCopy, display.map_or(Reason::Coherent, |d| d.why.into())),
        (Shown::Drawn { copied: true, .. }, Some(plan)) => (Outcome::Copied, plan.render.decision.why.into()),
        (Shown::Drawn { copied: false, refusal }, Some(plan)) => {
            let reason = match display {
                // The plan let the buffer onto this display's planes and none took it.
                Some(d) if d.path.reads_buffer() => match refusal {
                    Some(PlaneRefusal::Format { .. }) => Reason::FormatOrModifier,
                    Some(PlaneRefusal::Other) | None => Reason::PlaneUnavailable,
                },
                Some(d) => d.why.into(),
                // No display (headless): the renderer's own reason.
                None => plan.render.decision.why.into(),
            };
            (Outcome::Composited, reason)
        }
    };
    let bytes_copied = if outcome == Outcome::Copied { seen.bytes_copied } else { 0 };
    Presented { outcome, reason, bytes_copied }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coherency::{plan_hints, probe, ExporterFacts, Fact, MachineFacts, ProbeOptions, Quirks, RendererChoice, Source};

    fn vm() -> (MachineFacts, Quirks) {
        let quirks = Quirks::builtin().expect("built-in quirks");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs/vm");
        (probe(&ProbeOptions::sysfs(root, RendererChoice::Cpu("pixman".into())), &quirks), quirks)
    }

    fn planned(exporter: &str) -> (BufferPlan, Vec<Advice>) {
        let (machine, quirks) = vm();
        let facts = ExporterFacts::lookup(Fact::new(exporter.into(), Source::Fdinfo), &quirks);
        let plan = BufferPlan::compute(&facts, &machine);
        let hints = plan_hints(&facts, &machine, &plan);
        (plan, hints)
    }

    // The VM fixture's displays: card1 is vkms (226:1), card2 virtio-gpu (226:2).
    fn vkms() -> DeviceId {
        DeviceId(rustix::fs::makedev(226, 1))
    }
    fn virtio() -> DeviceId {
        DeviceId(rustix::fs::makedev(226, 2))
    }

    fn seen(shown: Shown, display: Option<DeviceId>) -> Observation {
        Observation { shown, display, bytes_copied: 4096 }
    }

    fn drawn(refusal: Option<PlaneRefusal>) -> Shown {
        Shown::Drawn { copied: false, refusal }
    }

    #[test]
    fn presented_reasons_follow_the_plan_and_the_frame() {
        let (udmabuf, hints) = planned("udmabuf");
        let buffer = CurrentBuffer::Dmabuf { plan: &udmabuf, hints: &hints };
        let outcome = |shown, display| {
            let r = report(RendererAccess::ThroughCpu, buffer, Some(&seen(shown, display)));
            r.presented.map(|p| (p.outcome, p.reason, p.bytes_copied))
        };
        assert_eq!(outcome(Shown::ZeroCopy, Some(vkms())), Some((Outcome::ZeroCopy, Reason::Coherent, 0)));
        // Allowed on vkms's planes, but drawn: the planes are why.
        assert_eq!(outcome(drawn(None), Some(vkms())), Some((Outcome::Composited, Reason::PlaneUnavailable, 0)));
        let format = Some(PlaneRefusal::Format { fourcc_taken: true });
        assert_eq!(outcome(drawn(format), Some(vkms())), Some((Outcome::Composited, Reason::FormatOrModifier, 0)));
        // virtio-gpu can't import it at all.
        assert_eq!(outcome(drawn(None), Some(virtio())), Some((Outcome::Composited, Reason::CannotImport, 0)));
        // Headless: the renderer reads it directly.
        assert_eq!(outcome(drawn(None), None), Some((Outcome::Composited, Reason::Coherent, 0)));
        assert_eq!(outcome(Shown::Withheld, None), Some((Outcome::Withheld, Reason::FencePending, 0)));

        let (vgem, hints) = planned("drm");
        let buffer = CurrentBuffer::Dmabuf { plan: &vgem, hints: &hints };
        let copied = report(RendererAccess::ThroughCpu, buffer, Some(&seen(Shown::Drawn { copied: true, refusal: None }, None)));
        let p = copied.presented.expect("presented");
        assert_eq!((p.outcome, p.reason, p.bytes_copied), (Outcome::Copied, Reason::CpuRendererUncached, 4096));
    }

    #[test]
    fn a_format_refusal_adds_the_format_hint() {
        let (udmabuf, hints) = planned("udmabuf");
        let buffer = CurrentBuffer::Dmabuf { plan: &udmabuf, hints: &hints };
        let modifier =
            report(RendererAccess::ThroughCpu, buffer, Some(&seen(drawn(Some(PlaneRefusal::Format { fourcc_taken: true })), Some(vkms()))));
        assert!(modifier.hints.iter().any(|a| a.hint == crate::coherency::Hint::UseScanoutTranche(vkms())), "{:?}", modifier.hints);
        let format = report(
            RendererAccess::ThroughCpu,
            buffer,
            Some(&seen(drawn(Some(PlaneRefusal::Format { fourcc_taken: false })), Some(vkms()))),
        );
        assert!(format.hints.iter().any(|a| a.hint == crate::coherency::Hint::UseDifferentFormat(vkms())), "{:?}", format.hints);
    }

    #[test]
    fn shared_memory_is_one_render_consumer() {
        for (renderer, path) in [(RendererAccess::ThroughCpu, Path::Direct), (RendererAccess::Gpu, Path::CpuCopy)] {
            let r = report(renderer, CurrentBuffer::Shm, Some(&seen(drawn(None), Some(vkms()))));
            let consumers: Vec<_> = r.consumers.iter().map(|c| (c.consumer, c.path, c.reason)).collect();
            assert_eq!(consumers, vec![(Consumer::Render, path, Reason::NotDmaBuf)]);
            let p = r.presented.expect("presented");
            assert_eq!((p.outcome, p.reason), (Outcome::Composited, Reason::NotDmaBuf));
            assert!(r.hints.is_empty());
        }
    }

    #[test]
    fn bytes_alone_are_no_change() {
        let (vgem, hints) = planned("drm");
        let buffer = CurrentBuffer::Dmabuf { plan: &vgem, hints: &hints };
        let copied = |bytes| {
            report(
                RendererAccess::ThroughCpu,
                buffer,
                Some(&Observation { shown: Shown::Drawn { copied: true, refusal: None }, display: None, bytes_copied: bytes }),
            )
        };
        assert!(!copied(1).differs(&copied(2)));
        assert!(copied(1).differs(&report(RendererAccess::ThroughCpu, buffer, None)));
    }
}
