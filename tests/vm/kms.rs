//! cohere on KMS in the VM: vkms (atomic, accepts foreign dma-bufs) and virtio-gpu (refuses
//! them). Pixels are checked through vkms CRC and by reading back the primary plane, always
//! through [`Cohere::readback`], so a readback counts only while cohere shows its own frames.
//! Facts come from cohere's statistics and the test client's report, never from log text.

use std::path::PathBuf;
use std::process::Command;

use cohere::coherency::{Access, Path as PlanPath};
use cohere::stats::Stats;
use cohere::testkit::vkms::{vkms_crc_xrgb8888, Vkms};
use cohere::testkit::Card;

use crate::client_mode::CLIENT_MODE;
use crate::cohere::{run_to_exit, scratch, summary, wait_for, ClientReport, Cohere, Stopped};
use crate::tests::{ensure_eq, test_image, Check, TestFn};

/// (boot, name, test): each runs a KMS compositor that holds the display, so they run one
/// after another (the display lock), grouped into boots.
pub fn all() -> Vec<(usize, &'static str, TestFn)> {
    vec![
        (1, "kms_vkms_udmabuf_goes_direct_to_a_plane", kms_vkms_udmabuf_goes_direct_to_a_plane),
        (1, "kms_y_inverted_udmabuf_shows_upright_on_vkms", kms_y_inverted_udmabuf_shows_upright_on_vkms),
        (1, "kms_desktop_window_goes_on_an_overlay_plane", kms_desktop_window_goes_on_an_overlay_plane),
        (1, "kms_virtio_gpu_composites_the_foreign_buffer", kms_virtio_gpu_composites_the_foreign_buffer),
        (1, "kms_virtio_gpu_shows_a_vgem_buffer_through_the_cpu_copy", kms_virtio_gpu_shows_a_vgem_buffer_through_the_cpu_copy),
        (1, "kms_check_kms_lists_the_displays", kms_check_kms_lists_the_displays),
        (1, "kms_kiosk_weston_simple_shm_and_exit_status", kms_kiosk_weston_simple_shm_and_exit_status),
        (1, "kms_weston_simple_dmabuf_egl_on_vkms_is_copied_and_shown", kms_weston_simple_dmabuf_egl_on_vkms_is_copied_and_shown),
        // With udevd running: libinput and hotplug (which renumbers virtio-gpu's card).
        (2, "kms_libinput_click_focuses_the_window_under_the_pointer", kms_libinput_click_focuses_the_window_under_the_pointer),
        (2, "kms_pointer_shows_the_arrow_on_the_cursor_plane", kms_pointer_shows_the_arrow_on_the_cursor_plane),
        (2, "kms_hotplug_removes_and_adds_outputs", kms_hotplug_removes_and_adds_outputs),
    ]
}

pub(crate) const VKMS_OUTPUT: &str = "Virtual-1";

pub(crate) fn me() -> Result<String, String> {
    Ok(std::env::current_exe().check("current exe")?.display().to_string())
}

pub(crate) fn vkms_node() -> Result<String, String> {
    Ok(Card::open_driver("vkms").check("vkms")?.path.display().to_string())
}

/// cohere on KMS (`args`) with the test client as its app, once the client's first buffer was
/// presented and its window was part of a frame. Returns cohere and the client's report.
pub(crate) fn start_with_client(args: &[&str], client: &[&str], env: &[(&str, &str)]) -> Result<(Cohere, ClientReport), String> {
    start_with_client_report(args, client, env).map(|(c, r, _)| (c, r))
}

/// [`start_with_client`], also returning the client's report file.
pub(crate) fn start_with_client_report(
    args: &[&str],
    client: &[&str],
    env: &[(&str, &str)],
) -> Result<(Cohere, ClientReport, std::path::PathBuf), String> {
    let report_file = scratch("client", "json");
    let me = me()?;
    let mut app = vec![me.as_str(), CLIENT_MODE];
    app.extend_from_slice(client);
    let mut env = env.to_vec();
    let report_env = report_file.display().to_string();
    env.push(("COHERE_CLIENT_REPORT", &report_env));
    let mut cohere = Cohere::start(args, &app, &env)?;
    let title = client.get(2).copied().unwrap_or("udmabuf");
    let report = cohere.wait_client(&report_file, "the client's buffer presented", |r| r.presented >= 1)?;
    cohere.wait(&format!("window {title:?} shown"), |s| s.window(title).is_some_and(|w| w.surface.frames_shown >= 1))?;
    Ok((cohere, report, report_file))
}

/// vkms's CRC of what it shows, while cohere shows its frames, must be the CRC of `expected`
/// (1024x768 XRGB).
pub(crate) fn check_vkms_crc(cohere: &mut Cohere, expected: &[u32], what: &str) -> Result<(), String> {
    let want = vkms_crc_xrgb8888(expected);
    let crcs = cohere.readback(VKMS_OUTPUT, || {
        let card = Card::open_driver("vkms").check("vkms")?;
        Vkms::new(&card).check("vkms")?.crcs(3).check("crc")
    })?;
    if crcs.iter().any(|c| *c != want) {
        return Err(format!("vkms CRCs {crcs:x?}, expected {want:#x} ({what})"));
    }
    Ok(())
}

/// The counters of `output` in the last statistics.
pub(crate) fn output_counters(stopped: &Stopped, output: &str) -> Result<cohere::OutputCounters, String> {
    stopped.stats.output(output).copied().ok_or_else(|| format!("no output {output}: {}", summary(&stopped.stats)))
}

pub(crate) fn window_plan(stats: &Stats, title: &str) -> Result<cohere::stats::PlanStats, String> {
    stats.window(title).and_then(|w| w.surface.plan.clone()).ok_or_else(|| format!("no plan for window {title:?}: {}", summary(stats)))
}

/// Waits for the client's buffer-path batch with a presented frame and checks its lines,
/// details aside, against `want` (without the closing `done`).
pub(crate) fn expect_batch(cohere: &mut Cohere, report_file: &std::path::Path, want: &[String]) -> Result<ClientReport, String> {
    let report =
        cohere.wait_client(report_file, "a buffer-path batch with a presented frame", |r| r.last_batch().contains("presented: "))?;
    let want: Vec<String> = want.iter().cloned().chain(["done".to_owned()]).collect();
    ensure_eq!(crate::buffer_path::shape(report.last_batch()), want, "buffer-path batch: {}", report.last_batch());
    Ok(report)
}

/// [`expect_batch`] for a udmabuf shown on the display of `node` alone: the renderer and the
/// CPU read it directly, the display's path is `display`, then the `rest` of the lines
/// (`{dev}` in them is the display's `major:minor`).
pub(crate) fn expect_udmabuf_batch(
    cohere: &mut Cohere,
    report_file: &std::path::Path,
    node: &str,
    display: &str,
    rest: &[&str],
) -> Result<ClientReport, String> {
    let dev = crate::buffer_path::dev_of(node)?;
    let mut want = vec!["consumer render: direct (coherent)".to_owned(), format!("consumer display {dev}: {display}")];
    want.push("consumer cpu: direct (coherent)".into());
    want.extend(rest.iter().map(|l| l.replace("{dev}", &dev)));
    expect_batch(cohere, report_file, &want)
}

fn kms_vkms_udmabuf_goes_direct_to_a_plane() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let node = vkms_node()?;
    let (mut cohere, report, report_file) = start_with_client_report(&["--kiosk", "--drm-device", &node], &["1024", "768"], &[])?;
    // The client hears that its buffer went on a plane as it is.
    let rest = ["presented: zero_copy (coherent), 0 bytes copied"];
    let paths = expect_udmabuf_batch(&mut cohere, &report_file, &node, "direct (coherent)", &rest)?;
    ensure_eq!(paths.zero_copy_presented, 1, "presentation feedback with the zero_copy flag");
    check_vkms_crc(&mut cohere, &test_image(1024, 768), "the client's image")?;
    let stopped = cohere.stop()?;
    ensure_eq!(stopped.status, Some(0), "exit status after SIGTERM");
    let plan = window_plan(&stopped.stats, "udmabuf")?;
    ensure_eq!(plan.path_of("(vkms)"), Some(PlanPath::Direct), "vkms scanout: {plan:?}");
    let c = output_counters(&stopped, VKMS_OUTPUT)?;
    if c.zero_copy_elements == 0 || c.composited_elements != 0 || c.bytes_copied != 0 {
        return Err(format!("expected zero-copy only: {c:?}"));
    }
    // The surface's dma-buf feedback offers a scanout tranche for vkms, then the render one.
    if !report.feedback.iter().any(|l| l == "feedback: tranche_flags(Value(TrancheFlags(Scanout)))") {
        return Err(format!("no scanout tranche in the surface feedback: {:?}", report.feedback));
    }
    Ok(())
}

/// A udmabuf made with y_invert (rows stored bottom to top) on vkms: vkms's CRC is the
/// client's image upright. It is composited: on a plane, smithay's reflection for the flip
/// makes vkms mirror columns (the CRC of that is the image turned half round).
fn kms_y_inverted_udmabuf_shows_upright_on_vkms() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let node = vkms_node()?;
    let env = [("COHERE_CLIENT_Y_INVERT", "1")];
    let (mut cohere, _, report) = start_with_client_report(&["--kiosk", "--drm-device", &node], &["1024", "768"], &env)?;
    cohere.wait_client(&report, "the buffer presented", |r| r.presented >= 1)?;
    let upright = check_vkms_crc(&mut cohere, &test_image(1024, 768), "the client's image, upright");
    let stopped = cohere.stop()?;
    if let Err(e) = upright {
        let img = test_image(1024, 768);
        let rows: Vec<u32> = img.chunks(1024).rev().flatten().copied().collect();
        let cols: Vec<u32> = img.chunks(1024).flat_map(|r| r.iter().rev()).copied().collect();
        let both: Vec<u32> = img.iter().rev().copied().collect();
        let [r, c, b] = [&rows, &cols, &both].map(|i| vkms_crc_xrgb8888(i));
        return Err(format!("{e}; rows flipped {r:#x}, columns flipped {c:#x}, both {b:#x}; {:?}", output_counters(&stopped, VKMS_OUTPUT)));
    }
    let c = output_counters(&stopped, VKMS_OUTPUT)?;
    if c.zero_copy_elements != 0 || c.composited_elements == 0 || c.bytes_copied != 0 {
        return Err(format!("expected the buffer composited without copies: {c:?}"));
    }
    Ok(())
}

/// The desktop of [`kms_desktop_window_goes_on_an_overlay_plane`]: background, the focused
/// title bar and a `cw`x`ch` test-image window at (32, 56), on a 1024x768 screen.
fn desktop_with_one_window(cw: u32, ch: u32) -> Vec<u32> {
    let (w, h) = (1024u32, 768u32);
    let window = test_image(cw, ch);
    let rgb = |c: [f32; 4]| ((c[0] * 255.0).round() as u32) << 16 | ((c[1] * 255.0).round() as u32) << 8 | (c[2] * 255.0).round() as u32;
    let (bg, bar) = (rgb(cohere::render::DESKTOP_BACKGROUND), rgb(cohere::render::TITLEBAR_FOCUSED));
    (0..w * h)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            match (x.checked_sub(32).filter(|x| *x < cw), y) {
                (Some(dx), 56..) if y - 56 < ch => window[((y - 56) * cw + dx) as usize],
                (Some(_), 32..=55) => bar,
                _ => bg,
            }
        })
        .collect()
}

/// A desktop window's udmabuf goes zero-copy on one of vkms's overlay planes above the
/// composited background and title bar. vkms blends the planes itself, so its CRC of the
/// whole screen must equal the CRC of the expected picture computed here.
fn kms_desktop_window_goes_on_an_overlay_plane() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let node = vkms_node()?;
    let (cw, ch) = (256u32, 128u32);
    let (mut cohere, _) =
        start_with_client(&["--desktop", "--drm-device", &node], &[&cw.to_string(), &ch.to_string(), "overlay", "desktop"], &[])?;
    // The window was focused as it was mapped, so the frame that first showed it has the
    // focused title bar.
    check_vkms_crc(&mut cohere, &desktop_with_one_window(cw, ch), "background, title bar, window")?;
    let stopped = cohere.stop()?;
    let c = output_counters(&stopped, VKMS_OUTPUT)?;
    if stopped.status != Some(0) || c.zero_copy_elements == 0 {
        return Err(format!("exit {:?}, {c:?}: the window wasn't scanned out from its buffer", stopped.status));
    }
    Ok(())
}

/// cohere on virtio-gpu with the test client full screen (1280x800): its card and output as
/// this boot has them, and the primary plane read back while cohere shows the client.
struct VirtioRun {
    cohere: Cohere,
    card: String,
    output: String,
    screen: (u32, u32, Vec<u32>),
    /// virtio-gpu's node, and the client's report file.
    node: String,
    report_file: PathBuf,
}

impl VirtioRun {
    fn start(env: &[(&str, &str)]) -> Result<VirtioRun, String> {
        // Only look the node up: an open card node of ours would be DRM master and lock cohere out.
        let node = Card::open_driver("virtio_gpu").check("virtio-gpu")?.path.display().to_string();
        let (mut cohere, _, report_file) = start_with_client_report(&["--kiosk", "--drm-device", &node], &["1280", "800"], env)?;
        let stats = cohere.wait("the virtio-gpu device", |s| s.devices.iter().any(|d| d.driver == "virtio_gpu"))?;
        let device = stats.devices.iter().find(|d| d.driver == "virtio_gpu").ok_or("virtio-gpu")?;
        let (card, output) = (device.card.clone(), device.outputs.first().cloned().ok_or("virtio-gpu has no output")?);
        let screen =
            cohere.readback(&output, || Card::open_driver("virtio_gpu").check("virtio-gpu")?.read_primary_plane().check("readback"))?;
        Ok(VirtioRun { cohere, card, output, screen, node, report_file })
    }
}

/// `cohere inspect --live --once --json` on the running compositor's statistics file.
fn live_view(cohere: &Cohere) -> Result<Stats, String> {
    let live = Command::new(env!("CARGO_BIN_EXE_cohere"))
        .args(["inspect", "--live", "--once", "--json", "--stats"])
        .arg(&cohere.stats_file)
        .output()
        .check("inspect --live")?;
    serde_json::from_slice(&live.stdout).map_err(|e| format!("inspect --live JSON: {e}: {}", String::from_utf8_lossy(&live.stderr)))
}

fn kms_virtio_gpu_composites_the_foreign_buffer() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let VirtioRun { mut cohere, card, output, screen: (w, h, pixels), node, report_file } = VirtioRun::start(&[])?;
    cohere.wait("a composited frame", |s| s.output(&output).is_some_and(|c| c.composited_elements >= 1))?;
    // The client hears why: virtio-gpu can't import its buffer, and where to allocate instead.
    let rest = ["presented: composited (cannot_import), 0 bytes copied", "hint allocate_from_scanout_device {dev}"];
    let paths = expect_udmabuf_batch(&mut cohere, &report_file, &node, "composite (cannot_import)", &rest)?;
    ensure_eq!(paths.zero_copy_presented, 0, "presentation feedback with the zero_copy flag");
    let live = live_view(&cohere)?;
    let stopped = cohere.stop()?;
    ensure_eq!((w, h), (1280, 800), "virtio-gpu mode");
    let wrong = pixels.iter().zip(test_image(w, h)).filter(|(a, b)| **a != *b).count();
    ensure_eq!(wrong, 0, "pixels on virtio-gpu that differ from the client's image");
    // inspect --live shows what the statistics say: composited on this output, and the plan.
    let composited = live.output(&output).map_or(0, |c| c.composited_elements);
    let plan = window_plan(&live, "udmabuf")?;
    let virtio = plan.consumers.iter().find(|c| c.label.contains(&format!("scanout {card} "))).ok_or(format!("no {card} in {plan:?}"))?;
    if composited == 0 || virtio.path != PlanPath::Composite {
        return Err(format!("inspect --live: composited {composited}, {card} {:?}: {}", virtio.path, summary(&live)));
    }
    // The udmabuf is cached memory pixman may read itself: composited, not copied.
    let c = output_counters(&stopped, &output)?;
    if stopped.status != Some(0) || c.zero_copy_elements != 0 || c.composited_elements == 0 || c.bytes_copied != 0 {
        return Err(format!("exit {:?}, expected composition: {c:?}", stopped.status));
    }
    Ok(())
}

/// A full-screen vgem buffer ("drm" exporter) on virtio-gpu: virtio-gpu can't import it and
/// pixman mustn't read GPU memory on every repaint, so the plan says CpuCopy for both. The
/// primary plane shows the client's image exactly, and the counters say copied and composited.
fn kms_virtio_gpu_shows_a_vgem_buffer_through_the_cpu_copy() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let VirtioRun { mut cohere, output, screen: (w, h, pixels), node, report_file, .. } =
        VirtioRun::start(&[("COHERE_CLIENT_SOURCE", "vgem")])?;
    let dev = crate::buffer_path::dev_of(&node)?;
    let want = [
        "consumer render: cpu_copy (cpu_renderer_uncached)".to_owned(),
        format!("consumer display {dev}: cpu_copy (cannot_import)"),
        "consumer cpu: direct (coherent)".into(),
        format!("presented: copied (cpu_renderer_uncached), {} bytes copied", 1280 * 800 * 4),
        format!("hint allocate_from_scanout_device {dev}"),
        "hint allocate_cached".into(),
    ];
    let paths = expect_batch(&mut cohere, &report_file, &want)?;
    ensure_eq!(paths.zero_copy_presented, 0, "presentations with the zero_copy flag");
    // The commit was presented, so its copy had landed: the live view counts it.
    let live = live_view(&cohere)?;
    let stopped = cohere.stop()?;
    ensure_eq!((live.cpu_copies, live.bytes_copied), (1, 1280 * 800 * 4), "inspect --live: cpu copies and bytes");
    let wrong = pixels.iter().zip(test_image(w, h)).filter(|(a, b)| **a != *b).count();
    ensure_eq!(((w, h), wrong), ((1280, 800), 0), "mode, and pixels that differ from the client's image");
    let plan = window_plan(&stopped.stats, "udmabuf")?;
    ensure_eq!((plan.path(Access::Sample), plan.path_of("(virtio_gpu)")), (Some(PlanPath::CpuCopy), Some(PlanPath::CpuCopy)), "{plan:?}");
    let c = output_counters(&stopped, &output)?;
    if stopped.status != Some(0) || c.zero_copy_elements != 0 || c.composited_elements == 0 || c.bytes_copied != 1280 * 800 * 4 {
        return Err(format!("exit {:?}: {c:?}", stopped.status));
    }
    Ok(())
}

/// README command 1 asks this before choosing KMS over the headless demo.
fn kms_check_kms_lists_the_displays() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let check = Command::new(env!("CARGO_BIN_EXE_cohere")).arg("check-kms").output().check("check-kms")?;
    let said = String::from_utf8_lossy(&check.stdout).into_owned();
    if check.status.code() != Some(0) || said.trim() != "KMS available: Virtual-1, Virtual-2" {
        return Err(format!("check-kms: {:?} {said}", check.status.code()));
    }
    Ok(())
}

/// The app is a shell that runs weston-simple-shm until the test kills it, then exits 5:
/// cohere (kiosk) shows the client centred on black, then exits with 5.
fn kms_kiosk_weston_simple_shm_and_exit_status() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let pidfile = scratch("simple-shm", "pid");
    let app = format!("weston-simple-shm & echo $! > {}; wait $!; exit 5", pidfile.display());
    let mut cohere = Cohere::start(&["--kiosk", "--drm-device", &vkms_node()?], &["sh", "-c", &app], &[])?;
    cohere.wait("window \"simple-shm\" shown", |s| s.window("simple-shm").is_some_and(|w| w.surface.frames_shown >= 1))?;
    let (w, h, pixels) =
        cohere.readback(VKMS_OUTPUT, || Card::open_driver("vkms").check("vkms")?.read_primary_plane().check("readback"))?;
    // weston-simple-shm stays 250x250: centred on black in kiosk mode.
    let (x0, y0) = ((w - 250) / 2, (h - 250) / 2);
    let mut bbox = (u32::MAX, u32::MAX, 0, 0);
    let mut colours = std::collections::HashSet::new();
    for (i, p) in pixels.iter().enumerate() {
        let (x, y) = (i as u32 % w, i as u32 / w);
        if *p != 0 {
            bbox = (bbox.0.min(x), bbox.1.min(y), bbox.2.max(x + 1), bbox.3.max(y + 1));
            colours.insert(*p);
        }
    }
    let pid: i32 = wait_for("the app's pid file", || {
        std::fs::read_to_string(&pidfile).map_err(|e| e.to_string())?.trim().parse().map_err(|e: std::num::ParseIntError| e.to_string())
    })?;
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid).ok_or("pid")?, rustix::process::Signal::TERM).check("kill")?;
    let stopped = cohere.finish()?;
    if bbox != (x0, y0, x0 + 250, y0 + 250) || colours.len() < 200 {
        return Err(format!("weston-simple-shm on vkms: content box {bbox:?}, {} colours", colours.len()));
    }
    ensure_eq!((stopped.status, stopped.stats.exit.as_deref()), (Some(5), Some("AppExited(5)")), "kiosk exit:\n{}", stopped.log);
    Ok(())
}

/// weston-simple-dmabuf-egl on vkms: Mesa 22.3's kms_swrast allocates dumb buffers with the
/// implicit modifier, which cohere accepts as linear because every device in the VM lays them
/// out linearly. They are "drm" dma-bufs, so pixman gets them through the CpuCopy executor.
/// The 256x256 window is centred on black (kiosk) and its frames keep changing on screen, with
/// the square upright.
fn kms_weston_simple_dmabuf_egl_on_vkms_is_copied_and_shown() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let node = vkms_node()?;
    // Its buffers are y_invert ones, which cohere composites (never on a plane): the window is
    // in the frame cohere draws, where the test looks at it.
    let mut cohere = Cohere::start(&["--kiosk", "--drm-device", &node], &["weston-simple-dmabuf-egl", "-d", &node], &[])?;
    let title = "simple-dmabuf-egl";
    cohere.wait("weston-simple-dmabuf-egl's window shown", |s| s.window(title).is_some_and(|w| w.surface.frames_shown >= 1))?;
    let mut frames = std::collections::HashSet::new();
    let mut readbacks = 0;
    wait_for("three distinct frames of the window", || {
        let (w, h, pixels) =
            cohere.readback(VKMS_OUTPUT, || Card::open_driver("vkms").check("vkms")?.read_primary_plane().check("readback"))?;
        readbacks += 1;
        let (x0, y0) = ((w - 256) / 2, (h - 256) / 2);
        let inside = |x: u32, y: u32| (x0..x0 + 256).contains(&x) && (y0..y0 + 256).contains(&y);
        let mut lit = 0;
        for (i, p) in pixels.iter().enumerate() {
            let (x, y) = (i as u32 % w, i as u32 / w);
            if !inside(x, y) && *p != 0 {
                return Ok(Err(format!("pixel ({x},{y}) = {p:#x} outside the centred window is not black")));
            }
            lit += usize::from(inside(x, y) && *p != 0);
        }
        // The client draws a 128x128 gradient square that moves inside its black window, into
        // buffers it creates with y_invert: the copy must show it upright.
        let upright = if lit >= 128 * 128 / 2 { crate::gles::upright_square(&(w, h, pixels.clone())) } else { Err("no square".into()) };
        if upright.is_ok() {
            frames.insert(pixels);
        }
        if frames.len() >= 3 {
            Ok(Ok(()))
        } else {
            Err(format!("{} distinct upright frames in {readbacks} readbacks; last: {upright:?}", frames.len()))
        }
    })??;
    let stopped = cohere.stop()?;
    ensure_eq!(stopped.status, Some(0), "exit status after SIGTERM");
    let window = stopped.stats.window(title).ok_or("window gone")?;
    ensure_eq!(window.surface.buffer_format.as_deref(), Some("XR24 Linear"), "its buffers (implicit modifier read as linear)");
    let plan = window_plan(&stopped.stats, title)?;
    ensure_eq!(plan.path(Access::Sample), Some(PlanPath::CpuCopy), "render path: {plan:?}");
    let c = output_counters(&stopped, VKMS_OUTPUT)?;
    if c.bytes_copied < 256 * 256 * 4 || c.composited_elements == 0 {
        return Err(format!("expected copies and composition: {c:?}"));
    }
    Ok(())
}

/// udevd, once per boot: libinput sees uinput devices, and cohere hotplug, only through it.
fn start_udevd() -> Result<(), String> {
    static STARTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if STARTED.get().is_some() {
        return Ok(());
    }
    Command::new("modprobe").arg("uinput").status().check("modprobe uinput")?;
    Command::new("/lib/systemd/systemd-udevd").arg("--daemon").status().check("starting udevd")?;
    wait_for("udevd's control socket", || if PathBuf::from("/run/udev/control").exists() { Ok(()) } else { Err("not yet".into()) })?;
    let settled = Command::new("udevadm").args(["settle", "--timeout=60"]).status().check("udevadm settle")?;
    if !settled.success() {
        return Err(format!("udevadm settle: {settled}"));
    }
    let _ = STARTED.set(());
    Ok(())
}

/// Unbinding virtio-gpu from its PCI driver removes the DRM device (udev "remove"); binding it
/// again adds a new one. Outputs and the coherency facts follow, cohere keeps serving clients,
/// and exits cleanly.
fn kms_hotplug_removes_and_adds_outputs() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    start_udevd()?;
    let mut cohere = Cohere::start(&[], &[], &[])?;
    let virtio = |s: &Stats| s.devices.iter().find(|d| d.driver == "virtio_gpu").map(|d| d.card.clone());
    let before = cohere.wait("virtio-gpu and vkms driven", |s| virtio(s).is_some() && s.outputs.len() == 2)?;
    let old_card = virtio(&before).ok_or("virtio-gpu")?;
    let pci = "0000:00:04.0";
    std::fs::write("/sys/bus/pci/drivers/virtio-pci/unbind", pci).check("unbinding virtio-gpu")?;
    cohere.wait("virtio-gpu and its output gone, facts probed again", |s| {
        virtio(s).is_none()
            && s.outputs.len() == 1
            && s.plans_recomputed >= 1
            && !s.coherency_devices.iter().any(|d| d.driver == "virtio_gpu")
    })?;
    std::fs::write("/sys/bus/pci/drivers/virtio-pci/bind", pci).check("binding virtio-gpu")?;
    let after = cohere.wait("virtio-gpu back as a new card, probed, with its output", |s| {
        virtio(s).is_some_and(|c| c != old_card)
            && s.outputs.len() == 2
            && s.coherency_devices.iter().any(|d| d.driver == "virtio_gpu" && Some(&d.card) == virtio(s).as_ref())
    })?;
    let client = cohere.client("wayland-info", &[], &[])?;
    let (_, text) = run_to_exit(client, "wayland-info")?;
    let outputs = text.matches("interface: 'wl_output',").count();
    let stopped = cohere.stop()?;
    if outputs != 2 || !text.contains("width: 1280 px, height: 800 px") {
        return Err(format!("after hotplug ({}) wayland-info shows {outputs} outputs:\n{text}", summary(&after)));
    }
    ensure_eq!(stopped.status, Some(0), "cohere exit after hotplug");
    Ok(())
}

/// A uinput tablet (libinput, through udevd) clicks on the lower of two overlapping desktop
/// windows: it gets keyboard focus and comes to the top.
fn kms_libinput_click_focuses_the_window_under_the_pointer() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    start_udevd()?;
    let me = me()?;
    let mut cohere = Cohere::start(&["--desktop", "--drm-device", &vkms_node()?], &[], &[])?;
    // a, then b, each mapped and focused as it comes: a at (32, 56), b at (64, 88), both 64x64.
    let _a = cohere.client(&me, &[CLIENT_MODE, "64", "64", "a", "desktop"], &[])?;
    cohere.wait("window a shown and focused", |s| s.window("a").is_some_and(|w| w.surface.frames_shown >= 1 && w.focused))?;
    let _b = cohere.client(&me, &[CLIENT_MODE, "64", "64", "b", "desktop"], &[])?;
    cohere.wait("window b shown and focused", |s| s.window("b").is_some_and(|w| w.surface.frames_shown >= 1 && w.focused))?;
    let mut tablet = cohere::testkit::uinput::Tablet::new(1024, 768).check("uinput tablet")?;
    cohere.wait("libinput to add the tablet", |s| s.input_devices.iter().any(|d| d == "cohere-tablet"))?;
    // (40, 60) is on a only.
    tablet.click(40, 60).check("click")?;
    let focused = cohere.wait("window a focused by the click", |s| s.window("a").is_some_and(|w| w.focused))?;
    let stopped = cohere.stop()?;
    let top = focused.windows.last().and_then(|w| w.title.clone());
    ensure_eq!(top.as_deref(), Some("a"), "the clicked window is on top");
    ensure_eq!(stopped.status, Some(0), "cohere exit");
    Ok(())
}

/// Once a pointer device moves the pointer, cohere draws its arrow there, on vkms's cursor
/// plane. vkms blends that plane into its CRC: the screen must be the desktop with the arrow's
/// black outline and white fill at the pointer, exactly.
fn kms_pointer_shows_the_arrow_on_the_cursor_plane() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    start_udevd()?;
    let (cw, ch) = (256u32, 128u32);
    let (mut cohere, _) =
        start_with_client(&["--desktop", "--drm-device", &vkms_node()?], &[&cw.to_string(), &ch.to_string(), "cursor", "desktop"], &[])?;
    let mut tablet = cohere::testkit::uinput::Tablet::new(1024, 768).check("uinput tablet")?;
    cohere.wait("libinput to add the tablet", |s| s.input_devices.iter().any(|d| d == "cohere-tablet"))?;
    let (px, py) = (600u32, 400u32);
    tablet.move_to(px as i32, py as i32).check("move")?;
    // Frames are queued one at a time: once every queued frame has flipped, the one with the
    // cursor is on screen.
    cohere.wait("a frame with the cursor on its plane, flipped", |s| {
        s.output(VKMS_OUTPUT).is_some_and(|c| c.cursor_plane_frames >= 1 && c.flips == c.queued)
    })?;
    let mut expected = desktop_with_one_window(cw, ch);
    let arrow = cohere::cursor::arrow_pixels();
    for (y, row) in arrow.iter().enumerate() {
        for (x, px_colour) in row.iter().enumerate() {
            if let Some(c) = px_colour {
                expected[((py + y as u32) * 1024 + px + x as u32) as usize] = *c;
            }
        }
    }
    check_vkms_crc(&mut cohere, &expected, &format!("desktop with the arrow at {px},{py}"))?;
    let stopped = cohere.stop()?;
    ensure_eq!(stopped.status, Some(0), "cohere exit");
    Ok(())
}
