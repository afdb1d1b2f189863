//! What `cohere inspect` prints: the devices and their facts with sources, and the matrix of
//! exporter × consumer → path, each with its reason. As drm_info does for KMS.

use std::fmt::Write;

use serde::Serialize;

use super::facts::{ExporterFacts, Fact, MachineFacts, Source};
use super::plan::BufferPlan;
use super::quirks::Quirks;

/// The whole report, also serialisable as JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The machine's facts.
    pub machine: MachineFacts,
    /// Every exporter the database knows.
    pub exporters: Vec<ExporterFacts>,
    /// The plan of a buffer from each.
    pub plans: Vec<BufferPlan>,
}

impl Report {
    /// Plans a buffer from each exporter the quirk database knows.
    pub fn new(machine: MachineFacts, quirks: &Quirks) -> Self {
        let exporters: Vec<ExporterFacts> = quirks
            .exporters()
            .into_iter()
            .map(|name| ExporterFacts::lookup(Fact::new(name, Source::Default { rule: "every exporter in the database".into() }), quirks))
            .collect();
        let plans = exporters.iter().map(|e| BufferPlan::compute(e, &machine)).collect();
        Self { machine, exporters, plans }
    }

    /// Human-readable text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let platform = if m.device_tree { "device tree (DMA noncoherent unless dma-coherent)" } else { "x86/ACPI (DMA snoops CPU caches)" };
        let _ = writeln!(out, "platform: {platform}");
        let renderer = match &m.renderer {
            super::facts::RendererFacts::Cpu { name } => format!("{name} (CPU)"),
            super::facts::RendererFacts::Device { card, .. } => card.clone(),
            super::facts::RendererFacts::Gles { name, snoops, imports, .. } => {
                format!("GLES on {name}\n    reads coherently {snoops}\n    imports dma-bufs {imports}")
            }
        };
        let _ = writeln!(out, "renderer: {renderer}");
        if let Some(why) = &m.renderer_reason {
            let _ = writeln!(out, "    chosen because {why}");
        }
        let _ = writeln!(out);
        for d in &m.devices {
            let roles: Vec<&str> =
                [(d.kms, "display"), (d.render_node.is_some(), "render node")].iter().filter_map(|(on, r)| on.then_some(*r)).collect();
            let _ = writeln!(out, "{}: {} [{}]", d.name, d.driver.value, roles.join(", "));
            let _ = writeln!(out, "    driver           {}", d.driver);
            let _ = writeln!(out, "    bus              {}", d.bus);
            if let Some(dt) = &d.dt_dma_coherent {
                let _ = writeln!(out, "    dma-coherent     {dt}");
            }
            let _ = writeln!(out, "    render snoops    {}", d.render_snoops);
            let _ = writeln!(out, "    scanout snoops   {}", d.scanout_snoops);
            let _ = writeln!(out, "    imports foreign  {}", d.imports_foreign);
            let _ = writeln!(out, "    can render       {}", d.renders);
            let _ = writeln!(out, "    implicit linear  {}", d.implicit_linear);
            if let Some(e) = &d.explicit_sync {
                let _ = writeln!(out, "    explicit sync    {e}");
            }
        }
        let _ = writeln!(out, "\nimplicit modifier read as linear: {}", m.implicit_modifier_linear());
        let _ = writeln!(out, "explicit sync (linux-drm-syncobj-v1): {}", m.explicit_sync_verdict());
        let _ = writeln!(out, "\nexporters:");
        for e in &self.exporters {
            let _ = writeln!(
                out,
                "  {}: memory {}, syncs attachments {}, cpu mappable {}",
                e.name.value, e.memory, e.syncs_attachments, e.cpu_mappable
            );
        }
        let _ = writeln!(out, "\nplan (exporter → consumer: path — reason):");
        for p in &self.plans {
            let _ = writeln!(out, "  {}:", p.exporter);
            for (consumer, d) in p.decisions() {
                let _ = writeln!(out, "    {consumer:<28} {:<22} {}", d.path.to_string(), d.reason);
            }
            if let Some(why) = p.rejection() {
                let _ = writeln!(out, "    → rejected at import: {why}");
            }
        }
        out
    }
}
