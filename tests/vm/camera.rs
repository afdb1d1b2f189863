//! The seeds' pipeline with real kernel buffers: vivid (the kernel's virtual V4L2 camera) as the
//! camera, GStreamer's `v4l2src io-mode=dmabuf ! waylandsink` as the client, cohere as the
//! display, headless and on vkms, for both of vivid's allocators (vb2-vmalloc and
//! vb2-dma-contig). What cohere shows is compared with the same vivid frame captured without
//! Wayland; each exporter's plan is checked against what the coherency model says for it, also
//! with an override that makes vkms scanout non-snooping; GStreamer exits 0 after
//! `num-buffers` frames and cohere's descriptors come back to where they were.

use std::process::Command;
use std::sync::Mutex;

use cohere::coherency::{Access, Path as PlanPath};
use cohere::stats::{BufferStats, Stats};
use cohere::testkit::vkms::{vkms_crc_xrgb8888, Vkms};
use cohere::testkit::Card;

use crate::cohere::{run_to_exit, scratch, summary, wait_for, Cohere};
use crate::headless::compare;
use crate::tests::{ensure_eq, Check, TestFn};

const W: u32 = 640;
const H: u32 = 480;

/// vivid's capture controls for a still picture: its 75% colour bars, without the text it
/// otherwise writes over them (time, counters), which changes every frame.
const CONTROLS: &str = "extra-controls=c,osd_text_mode=2";

pub fn all() -> Vec<(&'static str, TestFn)> {
    vec![
        ("camera_vmalloc_through_gstreamer_headless", || headless(Allocator::Vmalloc)),
        ("camera_dma_contig_through_gstreamer_headless", || headless(Allocator::DmaContig)),
    ]
}

/// (boot, name, test) for the KMS boots.
pub fn kms() -> Vec<(usize, &'static str, TestFn)> {
    vec![
        (1, "camera_vmalloc_through_gstreamer_on_vkms", || on_vkms(Allocator::Vmalloc)),
        (1, "camera_dma_contig_through_gstreamer_on_vkms", || on_vkms(Allocator::DmaContig)),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allocator {
    /// vivid's default: vb2-vmalloc, as uvcvideo (USB cameras) uses.
    Vmalloc,
    /// `allocators=1`: vb2-dma-contig, as most SoC capture drivers use.
    DmaContig,
}

impl Allocator {
    /// The vivid instance (`n_devs=2 allocators=0,1`) and the exporter fdinfo reports.
    fn instance(self) -> (&'static str, &'static str) {
        match self {
            Allocator::Vmalloc => ("vivid-000-vid-cap", "videobuf2_vmalloc"),
            Allocator::DmaContig => ("vivid-001-vid-cap", "videobuf2_dma_contig"),
        }
    }
}

/// One test at a time per camera: a V4L2 capture device has one streaming owner.
fn camera_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Loads vivid once per boot with one capture device per allocator and returns the device
/// node of `allocator`'s.
fn camera(allocator: Allocator) -> Result<String, String> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let status = Command::new("modprobe")
                .args(["vivid", "n_devs=2", "node_types=0x1,0x1", "allocators=0,1"])
                .status()
                .check("modprobe vivid")?;
            status.success().then_some(()).ok_or(format!("modprobe vivid: {status}"))
        })
        .clone()?;
    let (name, _) = allocator.instance();
    wait_for(&format!("the V4L2 device {name}"), || {
        let devices = std::fs::read_dir("/sys/class/video4linux").map_err(|e| e.to_string())?;
        devices
            .filter_map(|d| d.ok())
            .find(|d| std::fs::read_to_string(d.path().join("name")).is_ok_and(|n| n.trim() == name))
            .map(|d| format!("/dev/{}", d.file_name().to_string_lossy()))
            .ok_or_else(|| "not there yet".to_owned())
    })
}

/// The frame vivid captures, read without Wayland (v4l2src into a file): XRGB pixels.
fn reference(device: &str) -> Result<Vec<u32>, String> {
    let file = scratch("vivid", "raw");
    let location = format!("location={}", file.display());
    let source = format!("device={device}");
    let caps = format!("video/x-raw,format=BGRx,width={W},height={H}");
    let out = Command::new("gst-launch-1.0")
        .args(["-q", "v4l2src", &source, "num-buffers=1", CONTROLS, "!", &caps, "!", "filesink", &location])
        .output()
        .check("gst-launch-1.0 (reference frame)")?;
    if !out.status.success() {
        return Err(format!("reference capture: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    }
    let bytes = std::fs::read(&file).check("reference frame")?;
    let _ = std::fs::remove_file(&file);
    ensure_eq!(bytes.len(), (W * H * 4) as usize, "reference frame size");
    // BGRx in memory is DRM's XRGB8888.
    let pixels: Vec<u32> = bytes.chunks_exact(4).map(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]) & 0x00ff_ffff).collect();
    // vivid's colour bars: several distinct colours, or the comparison proves nothing.
    let colours: std::collections::HashSet<u32> = pixels.iter().copied().collect();
    if colours.len() < 8 {
        return Err(format!("the reference frame has {} colours: {colours:x?}", colours.len()));
    }
    Ok(pixels)
}

/// `gst-launch-1.0` arguments for the camera into waylandsink.
fn pipeline(device: &str, num_buffers: Option<u32>) -> Vec<String> {
    let mut args = vec!["-e".to_owned(), "v4l2src".into(), format!("device={device}"), "io-mode=dmabuf".into(), CONTROLS.into()];
    args.extend(num_buffers.map(|n| format!("num-buffers={n}")));
    args.extend(["!".into(), format!("video/x-raw,format=BGRx,width={W},height={H}"), "!".into(), "waylandsink".into()]);
    args
}

/// The camera's buffer, as the statistics have it: a live buffer of `exporter`.
fn camera_buffer<'a>(stats: &'a Stats, exporter: &str) -> Option<&'a BufferStats> {
    stats.live_buffers.iter().find(|b| b.exporter == exporter)
}

/// A window surface showing a buffer of `exporter` was part of a frame.
fn video_shown(stats: &Stats, exporter: &str) -> bool {
    stats.windows.iter().flat_map(|w| w.surfaces()).any(|s| s.buffer.as_deref() == Some(exporter) && s.frames_shown >= 1)
}

/// Waits until GStreamer has gone and cohere's descriptors are back to `baseline`.
fn settles_to(cohere: &mut Cohere, baseline: usize) -> Result<(), String> {
    cohere.wait("GStreamer gone", |s| s.clients == 0 && s.commits_waiting == 0)?;
    cohere.fds_back_to(baseline)
}

/// GStreamer with `num-buffers` runs to its end and exits 0; what cohere held for it goes.
fn finite_run(cohere: &mut Cohere, device: &str, baseline: usize) -> Result<(), String> {
    let gst = cohere.client("gst-launch-1.0", &pipeline(device, Some(30)).iter().map(String::as_str).collect::<Vec<_>>(), &[])?;
    let (status, out) = run_to_exit(gst, "GStreamer with num-buffers=30")?;
    if status != Some(0) || !out.contains("Got EOS from element") {
        return Err(format!("GStreamer exit {status:?}, not at the end of its 30 buffers:\n{out}"));
    }
    settles_to(cohere, baseline)
}

/// Plans the coherency model gives the camera's buffers in the VM (x86: DMA snoops, so
/// vb2-dma-contig's DMA-coherent memory is cached): (render, vkms, virtio-gpu). vkms scans it
/// out directly; with vkms scanout made non-snooping neither exporter can sync attachments
/// (vb2-vmalloc has no begin/end_cpu_access, vb2-dma-contig's do nothing), so the renderer,
/// which reads cached memory coherently, composites it. virtio-gpu can't import it.
fn predicted(non_snooping_vkms: bool) -> (PlanPath, PlanPath, PlanPath) {
    let vkms = if non_snooping_vkms { PlanPath::Composite } else { PlanPath::Direct };
    (PlanPath::Direct, vkms, PlanPath::Composite)
}

fn check_plan(buffer: &BufferStats, non_snooping_vkms: bool) -> Result<(), String> {
    let plan = &buffer.plan;
    let got = (plan.path(Access::Sample), plan.path_of("(vkms)"), plan.path_of("(virtio_gpu)"));
    let (render, vkms, virtio) = predicted(non_snooping_vkms);
    ensure_eq!(got, (Some(render), Some(vkms), Some(virtio)), "{} plan (render, vkms, virtio-gpu): {plan:?}", buffer.exporter);
    Ok(())
}

/// Headless, kiosk at the camera's size: the screenshot is the camera's frame, exactly.
fn headless(allocator: Allocator) -> Result<(), String> {
    let _camera = camera_lock();
    let device = camera(allocator)?;
    let (_, exporter) = allocator.instance();
    let expected = reference(&device)?;
    let shot = scratch("camera", "png");
    let size = format!("{W}x{H}");
    let shot_arg = shot.display().to_string();
    let mut cohere =
        Cohere::start(&["--headless", "--kiosk", "--size", &size, "--screenshot", &shot_arg, "--after-frames", "0"], &[], &[])?;
    cohere.wait("cohere to listen", |_| true)?;
    let baseline = cohere.fds()?;
    let gst = cohere.client("gst-launch-1.0", &pipeline(&device, None).iter().map(String::as_str).collect::<Vec<_>>(), &[])?;
    let gst_pid = gst.id();
    let stats = cohere.wait(&format!("the camera's {exporter} buffers shown"), |s| video_shown(s, exporter))?;
    let buffer = camera_buffer(&stats, exporter).ok_or_else(|| format!("no live {exporter} buffer: {}", summary(&stats)))?;
    check_plan(buffer, false)?;
    let (w, h, rgba) = cohere.screenshot(&shot)?;
    ensure_eq!((w, h), (W, H), "screenshot size");
    compare(&rgba, w, &expected).map_err(|e| format!("{exporter}: {e}"))?;
    // SIGINT with -e: GStreamer sends EOS down the pipeline and exits 0.
    rustix::process::kill_process(rustix::process::Pid::from_raw(gst_pid as i32).ok_or("pid")?, rustix::process::Signal::INT)
        .check("SIGINT to GStreamer")?;
    let (status, out) = run_to_exit(gst, "GStreamer after SIGINT")?;
    if status != Some(0) || !out.contains("Got EOS") {
        return Err(format!("GStreamer didn't stop cleanly (exit {status:?}):\n{out}"));
    }
    settles_to(&mut cohere, baseline)?;
    finite_run(&mut cohere, &device, baseline)?;
    let stopped = cohere.stop()?;
    ensure_eq!(stopped.status, Some(0), "cohere exit");
    if stopped.stats.buffers_planned < 2 || stopped.stats.buffers_rejected != 0 {
        return Err(format!("buffers planned and rejected: {}", summary(&stopped.stats)));
    }
    Ok(())
}

/// On vkms, desktop: the video (a subsurface of waylandsink's window) at its own size above
/// the background and title bar; vkms's CRC of the whole screen must be that picture. Without
/// the override the camera's buffer goes zero-copy on a plane; with it, it is composited.
fn on_vkms(allocator: Allocator) -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let _camera = camera_lock();
    let device = camera(allocator)?;
    let (_, exporter) = allocator.instance();
    let frame = reference(&device)?;
    let node = Card::open_driver("vkms").check("vkms")?.path.display().to_string();
    let config = scratch("override", "toml");
    std::fs::write(&config, "[driver.vkms]\nscanout_snoops = false\n").check("config")?;
    let config_arg = config.display().to_string();
    for non_snooping in [false, true] {
        let what = format!("{exporter}, vkms scanout {}", if non_snooping { "non-snooping (override)" } else { "snooping" });
        let mut args = vec!["--desktop", "--drm-device", node.as_str()];
        if non_snooping {
            args.extend(["--config", config_arg.as_str()]);
        }
        let mut cohere = Cohere::start(&args, &[], &[])?;
        cohere.wait("cohere to listen", |_| true)?;
        let baseline = cohere.fds()?;
        let gst = cohere.client("gst-launch-1.0", &pipeline(&device, None).iter().map(String::as_str).collect::<Vec<_>>(), &[])?;
        let gst_pid = gst.id();
        let stats = cohere.wait(&format!("{what}: the camera's buffers shown"), |s| video_shown(s, exporter))?;
        check_plan(
            camera_buffer(&stats, exporter).ok_or_else(|| format!("no live {exporter} buffer: {}", summary(&stats)))?,
            non_snooping,
        )?;
        // A frame that showed the video has flipped (frames_shown counts at the flip), and
        // with it the window's title bar; every frame since shows the same still picture.
        // Where the window went (waylandsink maps its window more than once, so not always the
        // first cascade slot).
        let window =
            stats.windows.iter().find(|w| w.subsurfaces.iter().any(|s| s.buffer.as_deref() == Some(exporter))).ok_or("no window")?;
        let (x, y, ww, wh) = window.geometry;
        ensure_eq!((ww, wh), (W as i32, H as i32), "{what}: the window's size");
        let want = vkms_crc_xrgb8888(&desktop_with_video(&frame, (x as u32, y as u32)));
        let crcs = cohere.readback("Virtual-1", || {
            let card = Card::open_driver("vkms").check("vkms")?;
            Vkms::new(&card).check("vkms")?.crcs(3).check("crc")
        })?;
        if crcs.iter().any(|c| *c != want) {
            return Err(format!("{what}: vkms CRCs {crcs:x?}, expected {want:#x} (the camera's frame in its window)\n{}", cohere.log()));
        }
        rustix::process::kill_process(rustix::process::Pid::from_raw(gst_pid as i32).ok_or("pid")?, rustix::process::Signal::INT)
            .check("SIGINT to GStreamer")?;
        let (status, out) = run_to_exit(gst, "GStreamer after SIGINT")?;
        ensure_eq!(status, Some(0), "{what}: GStreamer after SIGINT:\n{out}");
        settles_to(&mut cohere, baseline)?;
        finite_run(&mut cohere, &device, baseline)?;
        let stopped = cohere.stop()?;
        let c = stopped.stats.output("Virtual-1").copied().ok_or("no Virtual-1")?;
        let zero_copy_expected = !non_snooping;
        if (c.zero_copy_elements > 0) != zero_copy_expected || c.composited_elements == 0 {
            return Err(format!("{what}: expected zero-copy {zero_copy_expected}: {c:?}"));
        }
    }
    Ok(())
}

/// 1024x768: the desktop background, the focused title bar and the 640x480 frame at `at`.
fn desktop_with_video(frame: &[u32], (wx, wy): (u32, u32)) -> Vec<u32> {
    let (sw, sh) = (1024u32, 768u32);
    let rgb = |c: [f32; 4]| ((c[0] * 255.0).round() as u32) << 16 | ((c[1] * 255.0).round() as u32) << 8 | (c[2] * 255.0).round() as u32;
    let (bg, bar) = (rgb(cohere::render::DESKTOP_BACKGROUND), rgb(cohere::render::TITLEBAR_FOCUSED));
    (0..sw * sh)
        .map(|i| {
            let (x, y) = (i % sw, i / sw);
            match (x.checked_sub(wx).filter(|x| *x < W), y.checked_sub(wy - 24)) {
                (Some(dx), Some(dy)) if dy >= 24 && dy - 24 < H => frame[((dy - 24) * W + dx) as usize],
                (Some(_), Some(dy)) if dy < 24 => bar,
                _ => bg,
            }
        })
        .collect()
}
