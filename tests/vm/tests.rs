//! Tests that run inside the VM. Each asserts exact values from real kernel objects.

use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use cohere::coherency::DmabufFdInfo;
use cohere::sync::{export_sync_file, DmabufAccess};
use cohere::testkit::fence::{vgem_attach_write_fence, Timeline};
use cohere::testkit::vkms::{vkms_crc_xrgb8888, Vkms};
use cohere::testkit::{heap_buffer, udmabuf, vgem_buffer, Card};
use smithay::reexports::drm::buffer::DrmFourcc;

pub type TestFn = fn() -> Result<(), String>;

/// Tests that drive vkms's display (modesets, CRC, a KMS compositor) take this lock: one DRM
/// master at a time. Everything else runs in parallel.
pub fn vkms_display() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn all() -> Vec<(&'static str, TestFn)> {
    vec![
        ("dmabuf_sources_report_their_exporter_in_fdinfo", dmabuf_sources_report_their_exporter_in_fdinfo),
        ("vgem_fence_is_the_buffers_implicit_fence", vgem_fence_is_the_buffers_implicit_fence),
        ("sw_sync_fences_signal_on_increment_only", sw_sync_fences_signal_on_increment_only),
        ("vkms_scans_out_udmabuf_with_expected_crc_and_writeback", vkms_scans_out_udmabuf_with_expected_crc_and_writeback),
        ("cohere_inspect_reports_the_real_devices", cohere_inspect_reports_the_real_devices),
        ("weston_simple_dmabuf_feedback_receives_cohere_feedback", weston_simple_dmabuf_feedback_receives_cohere_feedback),
    ]
}

pub use crate::cohere::Check;

macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($msg:tt)+) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err(format!("{}: left {:?} != right {:?}", format!($($msg)+), l, r));
        }
    }};
}
pub(crate) use ensure_eq;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {{
        if !$cond {
            return Err(format!($($msg)+));
        }
    }};
}
pub(crate) use ensure;

fn dmabuf_sources_report_their_exporter_in_fdinfo() -> Result<(), String> {
    let vgem = Card::open_driver("vgem").check("vgem")?;
    // File references: ours alone, except a PRIME export, which the GEM object also holds
    // (obj->dma_buf) and the exporting file's handle lookup keeps (file_priv->prime).
    let cases = [
        ("udmabuf", udmabuf(10_000).check("udmabuf")?, 12_288, 1),
        ("system", heap_buffer(65_536).check("heap")?, 65_536, 1),
        ("drm", vgem_buffer(&vgem, 64, 32).check("vgem")?, 64 * 32 * 4, 3),
    ];
    for (exporter, buffer, size, count) in cases {
        ensure!(DmabufFdInfo::is_dmabuf(buffer.as_fd()), "{exporter}: fstatfs doesn't say dma-buf");
        let info = DmabufFdInfo::read(buffer.as_fd()).check("fdinfo")?;
        ensure_eq!(info.exp_name, exporter, "exp_name");
        ensure_eq!(info.size, size as u64, "{exporter} size");
        ensure_eq!(info.count, count, "{exporter} file count");
        // Pixels written through the SYNC-bracketed mapping read back unchanged.
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        buffer.write(&bytes).check("write")?;
        ensure_eq!(buffer.read().check("read")?[..size], bytes[..], "{exporter} contents");
    }
    Ok(())
}

fn vgem_fence_is_the_buffers_implicit_fence() -> Result<(), String> {
    let vgem = Card::open_driver("vgem").check("vgem")?;
    let buffer = vgem_buffer(&vgem, 32, 32).check("vgem buffer")?;
    let idle = export_sync_file(buffer.as_fd(), DmabufAccess::Read).check("export (idle)")?;
    ensure_eq!(idle.is_signaled().check("poll")?, true, "an idle buffer's fence is signalled");
    let handle = buffer.vgem_handle.ok_or("vgem handle")?;
    let fence = vgem_attach_write_fence(&vgem, handle).check("attach")?;
    let pending = export_sync_file(buffer.as_fd(), DmabufAccess::Read).check("export (busy)")?;
    ensure_eq!(pending.is_signaled().check("poll")?, false, "the vgem write fence is pending");
    ensure_eq!(pending.wait(Some(Duration::from_millis(200))).check("wait")?, false, "still pending after 200 ms");
    fence.signal(&vgem).check("signal")?;
    ensure_eq!(pending.wait(Some(Duration::from_secs(2))).check("wait")?, true, "signalled after VGEM_FENCE_SIGNAL");
    let after = export_sync_file(buffer.as_fd(), DmabufAccess::Read).check("export (after)")?;
    ensure_eq!(after.is_signaled().check("poll")?, true, "a fresh export after the signal");
    Ok(())
}

fn sw_sync_fences_signal_on_increment_only() -> Result<(), String> {
    let timeline = Timeline::new().check("timeline")?;
    let at_two = timeline.fence_at(2).check("fence at 2")?;
    let at_one = timeline.fence_at(1).check("fence at 1")?;
    ensure_eq!(at_one.is_signaled().check("poll")?, false, "point 1 before any increment");
    ensure_eq!(at_two.wait(Some(Duration::from_millis(100))).check("wait")?, false, "point 2 before any increment");
    timeline.advance(1).check("inc")?;
    ensure_eq!(at_one.is_signaled().check("poll")?, true, "point 1 after +1");
    ensure_eq!(at_two.is_signaled().check("poll")?, false, "point 2 after +1");
    timeline.advance(1).check("inc")?;
    ensure_eq!(at_two.is_signaled().check("poll")?, true, "point 2 after +2");
    Ok(())
}

/// XRGB8888 test image: four quadrants of known colours with a 1-pixel diagonal line, so a
/// stride, offset or channel error changes both the CRC and the written-back pixels.
pub fn test_image(w: u32, h: u32) -> Vec<u32> {
    (0..w * h)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            if x == y {
                0x00ff_ffff
            } else {
                match (x < w / 2, y < h / 2) {
                    (true, true) => 0x00c0_1020,
                    (false, true) => 0x0010_c040,
                    (true, false) => 0x0020_40c0,
                    (false, false) => 0x0080_8080,
                }
            }
        })
        .collect()
}

fn vkms_scans_out_udmabuf_with_expected_crc_and_writeback() -> Result<(), String> {
    let _display = vkms_display();
    let card = Card::open_driver("vkms").check("vkms")?;
    let kms = Vkms::new(&card).check("vkms pipeline")?;
    let (w, h) = kms.size();
    ensure_eq!((w, h), (1024, 768), "vkms default mode");
    let pixels = test_image(w, h);
    let bytes: Vec<u8> = pixels.iter().flat_map(|p| p.to_le_bytes()).collect();
    let buffer = udmabuf(bytes.len()).check("udmabuf")?;
    buffer.write(&bytes).check("fill")?;
    let fb = kms.import(&buffer, (w, h), DrmFourcc::Xrgb8888, w * 4).check("import udmabuf")?;

    kms.show(fb).check("show")?;
    let expected = vkms_crc_xrgb8888(&pixels);
    let crcs = kms.crcs(3).check("crc")?;
    ensure_eq!(crcs, vec![expected; 3], "vkms CRC of the shown frame (expected {expected:#010x})");

    let written = kms.writeback(fb).check("writeback")?;
    let mut wrong = 0usize;
    let mut first = None;
    for (i, (got, want)) in written.chunks_exact(4).zip(&pixels).enumerate() {
        let got = u32::from_le_bytes([got[0], got[1], got[2], got[3]]) & 0x00ff_ffff;
        if got != *want {
            wrong += 1;
            first.get_or_insert((i as u32 % w, i as u32 / w, got, *want));
        }
    }
    ensure_eq!(wrong, 0, "writeback pixels that differ (first: {first:x?})");
    Ok(())
}

fn cohere_inspect_reports_the_real_devices() -> Result<(), String> {
    let out = Command::new(env!("CARGO_BIN_EXE_cohere")).args(["inspect", "--json"]).output().check("inspect")?;
    ensure_eq!(out.status.code(), Some(0), "inspect status: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).check("inspect JSON")?;
    let devices = json["machine"]["devices"].as_array().ok_or("no devices")?;
    let by_driver = |name: &str| devices.iter().find(|d| d["driver"]["value"] == name).cloned();
    let mut drivers: Vec<&str> = devices.iter().filter_map(|d| d["driver"]["value"].as_str()).collect();
    drivers.sort();
    ensure_eq!(drivers, vec!["vgem", "virtio_gpu", "vkms"], "drivers");
    for d in devices {
        ensure_eq!(d["driver"]["source"]["kind"], "drm-version", "driver read with DRM_IOCTL_VERSION: {d}");
    }
    let vkms = by_driver("vkms").ok_or("vkms")?;
    let virtio = by_driver("virtio_gpu").ok_or("virtio_gpu")?;
    let vgem = by_driver("vgem").ok_or("vgem")?;
    ensure_eq!(
        (vkms["kms"].clone(), virtio["kms"].clone(), vgem["kms"].clone()),
        (true.into(), true.into(), false.into()),
        "display devices"
    );
    ensure_eq!(vkms["bus"]["value"], "platform", "vkms bus");
    ensure_eq!(virtio["bus"]["value"], "pci", "virtio-gpu bus");
    // The PRIME import test, with a real udmabuf: vkms takes it, virtio-gpu refuses (ENODEV).
    ensure_eq!(vkms["imports_foreign"]["value"], true, "vkms imports");
    ensure_eq!(vkms["imports_foreign"]["source"]["kind"], "prime-import-test", "vkms import source");
    ensure_eq!(virtio["imports_foreign"]["value"], false, "virtio-gpu imports");
    let result = virtio["imports_foreign"]["source"]["result"].as_str().unwrap_or_default().to_owned();
    if !result.contains("No such device") {
        return Err(format!("virtio-gpu import test: {result}"));
    }
    let text = Command::new(env!("CARGO_BIN_EXE_cohere")).arg("inspect").output().check("inspect text")?;
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    std::fs::write("/cohere-results/inspect.txt", &text).check("saving inspect output")?;
    // linux-drm-syncobj-v1 goes on virtio-gpu, the one device here with timeline syncobjs.
    let card = virtio["name"].as_str().unwrap_or_default().to_owned();
    if !text.contains(&format!("explicit sync (linux-drm-syncobj-v1): offered on {card} (virtio_gpu): syncobj test on /dev/dri/renderD")) {
        return Err(format!("inspect text doesn't offer explicit sync on {card}:\n{text}"));
    }
    if !text.contains("udmabuf:") || !text.contains("PRIME import test") {
        return Err(format!("inspect text:\n{text}"));
    }
    Ok(())
}

/// `test_image` with every colour inverted: what the client's second buffer holds.
pub fn alt_image(w: u32, h: u32) -> Vec<u32> {
    test_image(w, h).into_iter().map(|p| !p & 0x00ff_ffff).collect()
}

/// The image of frame `k` of a client that rewrites its buffers (`COHERE_CLIENT_REWRITE`):
/// [`test_image`] for k = 0, then a different one for every k.
pub fn frame_image(w: u32, h: u32, k: u32) -> Vec<u32> {
    let mask = k.wrapping_mul(0x0013_2537) & 0x00ff_ffff;
    test_image(w, h).into_iter().map(|p| p ^ mask).collect()
}

/// weston-simple-dmabuf-feedback prints the feedback it receives. With Mesa 22.3 it then can't
/// allocate on vgem (no GBM driver) and aborts; what it printed is what this test checks.
fn weston_simple_dmabuf_feedback_receives_cohere_feedback() -> Result<(), String> {
    let reference = cohere::Compositor::new_headless(cohere::Options {
        socket: cohere::SocketChoice::None,
        pacing: cohere::FramePacing::Manual,
        ..Default::default()
    })
    .check("reference compositor")?;
    let formats = reference.state.backend.import_state().formats().to_vec();
    drop(reference);
    let mut nodes: Vec<String> = std::fs::read_dir("/dev/dri")
        .check("/dev/dri")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("renderD"))
        .collect();
    nodes.sort();
    let main = format!("/dev/dri/{}", nodes.first().ok_or("no render node")?);
    // The client prints what it received, then aborts (no GBM on vgem with Mesa 22.3).
    let mut cohere = crate::cohere::Cohere::start(&["--headless", "--kiosk"], &[], &[("RUST_LOG", "warn")])?;
    let client = cohere.client("weston-simple-dmabuf-feedback", &[], &[])?;
    let (_, text) = crate::cohere::run_to_exit(client, "weston-simple-dmabuf-feedback")?;
    cohere.stop()?;
    let want = format!("compositor sent main_device event for dma-buf feedback - {main}");
    if !text.contains(&want) {
        return Err(format!("no {want:?} in:\n{text}"));
    }
    if !text.contains(&format!("target_device for tranche - {main}")) || !text.contains("scanout tranche? no") {
        return Err(format!("tranche target or flags missing:\n{text}"));
    }
    let pairs: Vec<&str> = text.lines().filter(|l| l.contains("tranche format/modifier pair")).collect();
    ensure_eq!(pairs.len(), formats.len(), "pairs printed vs cohere's format table:\n{text}");
    // Every device in the VM allocates implicit-modifier buffers linearly, so each LINEAR format
    // also comes with the implicit modifier (DRM_FORMAT_MOD_INVALID).
    let linear = pairs.iter().filter(|l| l.ends_with("modifier LINEAR (0x0)")).count();
    let implicit = pairs.iter().filter(|l| l.ends_with("(0xffffffffffffff)")).count();
    if linear == 0 || linear != implicit || linear + implicit != pairs.len() {
        return Err(format!("expected LINEAR and implicit pairs, one each per format:\n{text}"));
    }
    Ok(())
}
