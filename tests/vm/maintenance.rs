//! DirectWithMaintenance on vkms: with vkms scanout declared non-snooping, a udmabuf (whose
//! exporter syncs every attachment on DMA_BUF_IOCTL_SYNC) still goes on a plane, because cohere
//! brackets each new commit with SYNC before the atomic commit that scans it out. A kprobe trace
//! of the guest kernel proves the order: the exporter's end_cpu_access (udmabuf's, which
//! `dma_buf_end_cpu_access` calls) with `DMA_FROM_DEVICE` on the buffer before every atomic
//! commit. Without attachment sync the buffer is composited instead.

use std::process::Command;

use cohere::coherency::Path as PlanPath;

use crate::cohere::scratch;
use crate::kms::{check_vkms_crc, expect_udmabuf_batch, output_counters, start_with_client_report, vkms_node, window_plan, VKMS_OUTPUT};
use crate::tests::{ensure_eq, test_image, Check, TestFn};

pub fn kms() -> Vec<(usize, &'static str, TestFn)> {
    vec![
        (1, "kms_direct_with_maintenance_syncs_before_every_commit", kms_direct_with_maintenance_syncs_before_every_commit),
        (1, "kms_without_attachment_sync_composites_instead", kms_without_attachment_sync_composites_instead),
    ]
}

const TRACING: &str = "/sys/kernel/tracing";
/// `DRM_MODE_ATOMIC_TEST_ONLY`: smithay tests plane assignments before committing.
const TEST_ONLY: u32 = 0x0100;
/// `DRM_MODE_PAGE_FLIP_EVENT`: a commit that shows a frame.
const PAGE_FLIP_EVENT: u32 = 0x01;
/// `DMA_FROM_DEVICE`: the direction of SYNC(END|READ).
const FROM_DEVICE: i32 = 2;

/// Kprobe events on the guest kernel, removed on drop.
struct Trace;

impl Trace {
    fn start() -> Result<Trace, String> {
        if !std::path::Path::new(TRACING).join("kprobe_events").exists() {
            let status = Command::new("mount").args(["-t", "tracefs", "tracefs", TRACING]).status().check("mounting tracefs")?;
            if !status.success() {
                return Err(format!("mount tracefs: {status}"));
            }
        }
        let write = |file: &str, text: &str| std::fs::write(format!("{TRACING}/{file}"), text).check(&format!("{TRACING}/{file}"));
        write("tracing_on", "0")?;
        write("kprobe_events", "")?;
        // dma_buf_end_cpu_access() is inlined into the SYNC ioctl in Debian's 6.12, so the probe
        // sits on what it calls: udmabuf's end_cpu_access (struct dma_buf *, enum
        // dma_data_direction), where the exporter syncs the attachments. And
        // drm_mode_atomic_ioctl(dev, struct drm_mode_atomic *data, file): data->flags is first.
        write("kprobe_events", "p:cohere_end end_cpu_udmabuf dmabuf=%di:x64 dir=%si:s32\n")?;
        std::fs::OpenOptions::new()
            .append(true)
            .open(format!("{TRACING}/kprobe_events"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"p:cohere_atomic drm_mode_atomic_ioctl flags=+0(%si):u32\n"))
            .check("adding the atomic probe")?;
        write("events/kprobes/enable", "1")?;
        write("trace", "")?;
        write("tracing_on", "1")?;
        Ok(Trace)
    }

    /// (is_end, dmabuf, dir or flags) in order.
    fn events(&self) -> Result<Vec<Event>, String> {
        std::fs::write(format!("{TRACING}/tracing_on"), "0").check("tracing_on")?;
        let text = std::fs::read_to_string(format!("{TRACING}/trace")).check("reading the trace")?;
        let field =
            |line: &str, name: &str| line.split(&format!("{name}=")).nth(1).and_then(|v| v.split_whitespace().next()).map(str::to_owned);
        let mut events = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if line.contains("cohere_end:") {
                let dir = field(line, "dir").and_then(|d| d.parse().ok()).unwrap_or(0);
                events.push(Event::End { dmabuf: field(line, "dmabuf").unwrap_or_default(), dir });
            } else if line.contains("cohere_atomic:") {
                let flags = field(line, "flags").and_then(|f| f.parse().ok()).unwrap_or(0);
                events.push(Event::Atomic { flags });
            }
        }
        Ok(events)
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = std::fs::write(format!("{TRACING}/events/kprobes/enable"), "0");
        let _ = std::fs::write(format!("{TRACING}/kprobe_events"), "");
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Event {
    End { dmabuf: String, dir: i32 },
    Atomic { flags: u32 },
}

fn kms_direct_with_maintenance_syncs_before_every_commit() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let config = scratch("override", "toml");
    std::fs::write(&config, "[driver.vkms]\nscanout_snoops = false\n").check("config")?;
    let node = vkms_node()?;
    let config_arg = config.display().to_string();
    let trace = Trace::start()?;
    // Ten more frames after the first, alternating two udmabufs, each presented before the next.
    let frames = 10;
    let env = [("COHERE_CLIENT_FRAMES", "10")];
    let (mut cohere, first, report_file) =
        start_with_client_report(&["--kiosk", "--drm-device", &node, "--config", &config_arg], &["1024", "768"], &env)?;
    cohere.wait_client(&report_file, "the client's frames presented", |r| r.presented as usize > frames)?;
    // The client hears that its buffer goes on a plane after cache maintenance, and why.
    let display = "direct_with_maintenance (not_coherent_with_sync)";
    let rest = ["presented: zero_copy (not_coherent_with_sync), 0 bytes copied", "hint allocate_write_combined"];
    let paths = expect_udmabuf_batch(&mut cohere, &report_file, &node, display, &rest)?;
    ensure_eq!(paths.zero_copy_presented, paths.presented, "presentations with the zero_copy flag (all of them)");
    // The last frame shows the first image again.
    check_vkms_crc(&mut cohere, &test_image(1024, 768), "the client's last frame")?;
    let stopped = cohere.stop()?;
    let events = trace.events()?;
    let plan = window_plan(&stopped.stats, "udmabuf")?;
    ensure_eq!(plan.path_of("(vkms)"), Some(PlanPath::DirectWithMaintenance), "vkms scanout with the override: {plan:?}");
    let c = output_counters(&stopped, VKMS_OUTPUT)?;
    if c.zero_copy_elements == 0 || c.composited_elements != 0 || c.bytes_copied != 0 {
        return Err(format!("expected the buffer on a plane only: {c:?}"));
    }
    if stopped.stats.maintenances < frames as u64 + 1 {
        return Err(format!("{} commits maintained, expected {}", stopped.stats.maintenances, frames + 1));
    }
    // The surface's feedback offers vkms's scanout tranche, as for Direct.
    if !first.feedback.iter().any(|l| l == "feedback: tranche_flags(Value(TrancheFlags(Scanout)))") {
        return Err(format!("no scanout tranche in the surface feedback: {:?}", first.feedback));
    }
    // Each maintenance (the last `maintenances` SYNC(END|READ)s: the earlier ones are pixman's
    // test import at create) is followed by an atomic commit before the next one: the commit
    // that scans out the frame it prepared. Commits may repeat a frame (no new content, no
    // maintenance needed), but none shows a frame before its maintenance, and the maintained
    // buffer alternates with the client's frames.
    let maintained = stopped.stats.maintenances as usize;
    let ends: Vec<(usize, &String)> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            Event::End { dmabuf, dir } if *dir == FROM_DEVICE => Some((i, dmabuf)),
            _ => None,
        })
        .collect();
    if ends.len() < maintained {
        return Err(format!("{} SYNC(END|READ)s traced for {maintained} maintenances: {events:?}", ends.len()));
    }
    let ends = &ends[ends.len() - maintained..];
    // A frame's commit is a page flip (shutdown's modesets aren't).
    let commit_between = |from: usize, to: usize| {
        events[from..to].iter().any(|e| matches!(e, Event::Atomic { flags } if flags & TEST_ONLY == 0 && flags & PAGE_FLIP_EVENT != 0))
    };
    let unshown: Vec<usize> =
        (0..ends.len()).filter(|&k| !commit_between(ends[k].0, ends.get(k + 1).map_or(events.len(), |e| e.0))).collect();
    if !unshown.is_empty() {
        return Err(format!(
            "maintenances {unshown:?} (of {maintained}) were not followed by an atomic commit before the next: {events:?}"
        ));
    }
    let alternating = ends.windows(2).all(|w| w[0].1 != w[1].1);
    let buffers: std::collections::BTreeSet<&String> = ends.iter().map(|e| e.1).collect();
    if !alternating || buffers.len() != 2 {
        return Err(format!("the maintained buffers don't alternate with the frames: {ends:?}"));
    }
    Ok(())
}

/// An override file (its path) that makes vkms non-snooping and udmabuf unable to sync
/// attachments: udmabufs are then composited on vkms.
pub(crate) fn composite_on_vkms() -> Result<String, String> {
    let config = scratch("override", "toml");
    std::fs::write(&config, "[driver.vkms]\nscanout_snoops = false\n\n[exporter.udmabuf]\nsyncs_attachments = false\n").check("config")?;
    Ok(config.display().to_string())
}

/// With vkms non-snooping and udmabuf declared unable to sync attachments, SYNC can't make the
/// buffer safe to scan out: it is composited instead, with exact pixels, and gets only the
/// render tranche.
fn kms_without_attachment_sync_composites_instead() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let node = vkms_node()?;
    let config_arg = composite_on_vkms()?;
    let (mut cohere, report, report_file) =
        start_with_client_report(&["--kiosk", "--drm-device", &node, "--config", &config_arg], &["1024", "768"], &[])?;
    let rest = ["presented: composited (not_coherent_no_sync), 0 bytes copied", "hint allocate_write_combined"];
    let paths = expect_udmabuf_batch(&mut cohere, &report_file, &node, "composite (not_coherent_no_sync)", &rest)?;
    ensure_eq!(paths.zero_copy_presented, 0, "presentations with the zero_copy flag");
    check_vkms_crc(&mut cohere, &test_image(1024, 768), "the client's image")?;
    let stopped = cohere.stop()?;
    let plan = window_plan(&stopped.stats, "udmabuf")?;
    ensure_eq!(plan.path_of("(vkms)"), Some(PlanPath::Composite), "vkms scanout: {plan:?}");
    let c = output_counters(&stopped, VKMS_OUTPUT)?;
    if c.zero_copy_elements != 0 || c.composited_elements == 0 || c.bytes_copied != 0 || stopped.stats.maintenances != 0 {
        return Err(format!("expected composition only: {c:?}, {} maintained", stopped.stats.maintenances));
    }
    if report.feedback.is_empty() || report.feedback.iter().any(|l| l.contains("TrancheFlags(Scanout)")) {
        return Err(format!("surface feedback should be render-only: {:?}", report.feedback));
    }
    Ok(())
}
