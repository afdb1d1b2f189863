//! cohere on KMS in the VM: vkms (atomic, accepts foreign dma-bufs) and virtio-gpu (refuses
//! them). Pixels are checked through vkms CRC and by reading back the primary plane.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cohere::testkit::vkms::{vkms_crc_xrgb8888, Vkms};
use cohere::testkit::Card;

use crate::tests::{test_image, Check, TestFn, CLIENT_MODE};

/// (boot, name, test): each runs a KMS compositor that holds the display, so they run one
/// after another, grouped into boots of under 10 s.
pub fn all() -> Vec<(usize, &'static str, TestFn)> {
    vec![
        (1, "kms_vkms_udmabuf_goes_direct_to_a_plane", kms_vkms_udmabuf_goes_direct_to_a_plane),
        (1, "kms_override_composites_instead_with_exact_pixels", kms_override_composites_instead_with_exact_pixels),
        (2, "kms_virtio_gpu_composites_the_foreign_buffer", kms_virtio_gpu_composites_the_foreign_buffer),
        (2, "kms_virtio_gpu_shows_a_vgem_buffer_through_the_cpu_copy", kms_virtio_gpu_shows_a_vgem_buffer_through_the_cpu_copy),
        (2, "kms_desktop_window_goes_on_an_overlay_plane", kms_desktop_window_goes_on_an_overlay_plane),
        (3, "kms_check_kms_lists_the_displays", kms_check_kms_lists_the_displays),
        (3, "kms_kiosk_weston_simple_shm_and_exit_status", kms_kiosk_weston_simple_shm_and_exit_status),
        (4, "kms_hotplug_removes_and_adds_outputs", kms_hotplug_removes_and_adds_outputs),
        (5, "kms_libinput_click_focuses_the_window_under_the_pointer", kms_libinput_click_focuses_the_window_under_the_pointer),
        (5, "kms_pointer_shows_the_arrow_on_the_cursor_plane", kms_pointer_shows_the_arrow_on_the_cursor_plane),
        (6, "kms_weston_simple_dmabuf_egl_on_vkms_is_copied_and_shown", kms_weston_simple_dmabuf_egl_on_vkms_is_copied_and_shown),
    ]
}

/// A running `cohere` on KMS and its stderr lines as they arrive.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Running {
    fn start(args: &[&str], app: &[&str]) -> Result<Running, String> {
        Self::start_env(args, app, &[])
    }

    /// `start`, with extra environment for cohere and so for its app.
    fn start_env(args: &[&str], app: &[&str], env: &[(&str, &str)]) -> Result<Running, String> {
        let shell = if args.contains(&"--desktop") { "--desktop" } else { "--kiosk" };
        let mut child = Command::new(env!("CARGO_BIN_EXE_cohere"))
            .arg(shell)
            .args(args.iter().filter(|a| **a != "--desktop"))
            .arg("--")
            .args(app)
            .env("RUST_LOG", "warn,cohere=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .check("starting cohere")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Running { child, lines, log: Vec::new() })
    }

    /// Waits for a log line containing `needle` (10 s at most).
    fn wait_for(&mut self, needle: &str) -> Result<String, String> {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(10)) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(_) => return Err(format!("no {needle:?} in cohere's log:\n{}", self.log.join("\n"))),
            }
        }
    }

    /// Waits for cohere to exit and returns (status, whole log).
    fn finish(mut self) -> Result<(Option<i32>, String), String> {
        let status = self.child.wait().check("waiting for cohere")?;
        self.log.extend(self.lines.try_iter());
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.log.push(line);
        }
        Ok((status.code(), self.log.join("\n")))
    }
}

fn me() -> Result<String, String> {
    Ok(std::env::current_exe().check("current exe")?.display().to_string())
}

/// The `output counters` line for `output` from the exit log: (zero_copy, composited).
fn counters(log: &str, output: &str) -> Result<(u64, u64), String> {
    Ok((counter(log, output, "zero_copy")?, counter(log, output, "composited")?))
}

/// One field of the `output counters` line for `output` in the exit log.
fn counter(log: &str, output: &str, name: &str) -> Result<u64, String> {
    let line = log
        .lines()
        .find(|l| l.contains("output counters") && l.contains(&format!("output=\"{output}\"")))
        .ok_or(format!("no counters for {output}:\n{log}"))?;
    let value = line.split(&format!("{name}=")).nth(1).and_then(|v| v.split_whitespace().next()?.parse().ok());
    value.ok_or(format!("no {name} in {line}"))
}

/// vkms's CRC of what it shows must be the CRC of the client's image.
fn check_vkms_crc(size: (u32, u32)) -> Result<(), String> {
    let card = Card::open_driver("vkms").check("vkms")?;
    let kms = Vkms::new(&card).check("vkms")?;
    let expected = vkms_crc_xrgb8888(&test_image(size.0, size.1));
    let crcs = kms.crcs(3).check("crc")?;
    if crcs.iter().all(|c| *c == expected) {
        Ok(())
    } else {
        Err(format!("vkms CRCs {crcs:x?}, expected {expected:#x} (the client's image)"))
    }
}

fn kms_vkms_udmabuf_goes_direct_to_a_plane() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let me = me()?;
    let mut run = Running::start(&["--drm-device", &vkms_node()?, "--exit-after-frames", "50"], &[&me, CLIENT_MODE, "1024", "768"])?;
    run.wait_for("udmabuf buffer presented")?;
    check_vkms_crc((1024, 768))?;
    let (status, log) = run.finish()?;
    if status != Some(0) {
        return Err(format!("cohere exit {status:?}:\n{log}"));
    }
    if !log.contains("(vkms): Direct,") {
        return Err(format!("plan not Direct for vkms:\n{log}"));
    }
    let (zero_copy, composited) = counters(&log, "Virtual-1")?;
    let copied = counter(&log, "Virtual-1", "bytes_copied")?;
    if zero_copy == 0 || composited != 0 || copied != 0 {
        return Err(format!("expected zero-copy only, got zero_copy={zero_copy} composited={composited} bytes_copied={copied}"));
    }
    // The surface's dma-buf feedback offers a scanout tranche for vkms, then the render one.
    if !log.contains("udmabuf client feedback: tranche_flags(Value(TrancheFlags(Scanout)))") {
        return Err(format!("no scanout tranche in the surface feedback:\n{log}"));
    }
    Ok(())
}

fn kms_override_composites_instead_with_exact_pixels() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let config = "/tmp/cohere-kms-override.toml";
    std::fs::write(config, "[driver.vkms]\nscanout_snoops = false\n").check("config")?;
    let me = me()?;
    let mut run = Running::start(
        &["--drm-device", &vkms_node()?, "--config", config, "--exit-after-frames", "50"],
        &[&me, CLIENT_MODE, "1024", "768"],
    )?;
    run.wait_for("udmabuf buffer presented")?;
    check_vkms_crc((1024, 768))?;
    let (status, log) = run.finish()?;
    if status != Some(0) || !log.contains("(vkms): DirectWithMaintenance") {
        return Err(format!("cohere exit {status:?} or plan unchanged:\n{log}"));
    }
    let (zero_copy, composited) = counters(&log, "Virtual-1")?;
    let copied = counter(&log, "Virtual-1", "bytes_copied")?;
    if zero_copy != 0 || composited == 0 || copied != 0 {
        return Err(format!("expected composition only, got zero_copy={zero_copy} composited={composited} bytes_copied={copied}"));
    }
    // A buffer the plan keeps off the planes gets only the render tranche.
    if !log.contains("udmabuf client feedback: done") || log.contains("TrancheFlags(Scanout)") {
        return Err(format!("surface feedback should be render-only:\n{log}"));
    }
    Ok(())
}

/// cohere on virtio-gpu with the test client full screen (1280x800), its card and output names
/// as this boot has them (a hotplug test in the same boot renumbers them), and the primary
/// plane once the client's buffer was presented.
struct VirtioRun {
    run: Running,
    card: String,
    output: String,
    screen: (u32, u32, Vec<u32>),
}

impl VirtioRun {
    fn start(socket: &str, env: &[(&str, &str)]) -> Result<VirtioRun, String> {
        // Only look the node up: an open card node of ours would be DRM master and lock cohere out.
        let node = Card::open_driver("virtio_gpu").check("virtio-gpu")?.path.display().to_string();
        let me = me()?;
        let mut run = Running::start_env(
            &["--drm-device", &node, "--socket", socket, "--exit-after-frames", "150"],
            &[&me, CLIENT_MODE, "1280", "800"],
            env,
        )?;
        let added = run.wait_for("KMS output")?;
        let field = |name: &str| added.split(&format!("{name}=\"")).nth(1).and_then(|v| v.split('"').next()).map(str::to_owned);
        let (card, output) = (field("card").ok_or("card name")?, field("output").ok_or("output name")?);
        run.wait_for("udmabuf buffer presented")?;
        // Give the flip a frame to land, then read what the primary plane scans out.
        std::thread::sleep(Duration::from_millis(50));
        let screen = Card::open_driver("virtio_gpu").check("virtio-gpu")?.read_primary_plane().check("virtio-gpu readback")?;
        Ok(VirtioRun { run, card, output, screen })
    }
}

/// `cohere inspect --live --once` for the compositor on `socket`, after the next stats write
/// (once a second).
fn live_view(socket: &str) -> Result<String, String> {
    std::thread::sleep(Duration::from_millis(1100));
    let live = Command::new(env!("CARGO_BIN_EXE_cohere"))
        .args(["inspect", "--live", "--once", "--socket", socket])
        .output()
        .check("inspect --live")?;
    Ok(format!("{}{}", String::from_utf8_lossy(&live.stdout), String::from_utf8_lossy(&live.stderr)))
}

fn kms_virtio_gpu_composites_the_foreign_buffer() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let VirtioRun { run, card: card_name, output, screen: (w, h, pixels) } = VirtioRun::start("kmslive", &[])?;
    let live = live_view("kmslive")?;
    let composited_now =
        live.lines().find(|l| l.starts_with(&output)).and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok()).unwrap_or(0);
    if composited_now == 0 || !live.contains(&format!("scanout {card_name} (virtio_gpu): Composite")) {
        let (_, log) = run.finish()?;
        return Err(format!("inspect --live:\n{live}\ncohere:\n{log}"));
    }
    let (status, log) = run.finish()?;
    if (w, h) != (1280, 800) {
        return Err(format!("virtio-gpu mode {w}x{h}"));
    }
    let wrong = pixels.iter().zip(test_image(w, h)).filter(|(a, b)| **a != *b).count();
    if wrong != 0 {
        return Err(format!("{wrong} of {} pixels on virtio-gpu differ from the client's image", w * h));
    }
    if status != Some(0) || !log.contains("(virtio_gpu): Composite") {
        return Err(format!("cohere exit {status:?} or plan not Composite:\n{log}"));
    }
    // The udmabuf is cached memory pixman may read itself: composited, not copied.
    let (zero_copy, composited) = counters(&log, &output)?;
    let copied = counter(&log, &output, "bytes_copied")?;
    if zero_copy != 0 || composited == 0 || copied != 0 {
        return Err(format!("expected composition, got zero_copy={zero_copy} composited={composited} bytes_copied={copied}"));
    }
    Ok(())
}

/// A full-screen vgem buffer ("drm" exporter) on virtio-gpu: virtio-gpu can't import it and
/// pixman mustn't read GPU memory on every repaint, so the plan says CpuCopy for both. The
/// primary plane shows the client's image exactly, and the counters say copied and composited.
fn kms_virtio_gpu_shows_a_vgem_buffer_through_the_cpu_copy() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let VirtioRun { run, output, screen: (w, h, pixels), .. } = VirtioRun::start("kmscopy", &[("COHERE_CLIENT_SOURCE", "vgem")])?;
    // The live view counts the copy while cohere runs.
    let live = live_view("kmscopy")?;
    let (status, log) = run.finish()?;
    if !live.contains("cpu copies 1 (4096000 bytes)") {
        return Err(format!("inspect --live:\n{live}"));
    }
    let wrong = pixels.iter().zip(test_image(w, h)).filter(|(a, b)| **a != *b).count();
    if (w, h) != (1280, 800) || wrong != 0 {
        return Err(format!("{w}x{h}: {wrong} pixels differ from the client's image\n{log}"));
    }
    let plan = log.lines().find(|l| l.contains("buffer plan") && l.contains("exporter=drm")).ok_or(format!("no drm plan:\n{log}"))?;
    if !plan.contains("render (pixman): CpuCopy") || !plan.contains("(virtio_gpu): CpuCopy") {
        return Err(format!("plan: {plan}"));
    }
    let (zero_copy, composited) = counters(&log, &output)?;
    let copied = counter(&log, &output, "bytes_copied")?;
    if status != Some(0) || zero_copy != 0 || composited == 0 || copied != 1280 * 800 * 4 {
        return Err(format!("exit {status:?}, zero_copy={zero_copy} composited={composited} bytes_copied={copied}:\n{log}"));
    }
    Ok(())
}

/// A desktop window's udmabuf goes zero-copy on one of vkms's overlay planes above the
/// composited background and title bar. vkms blends the planes itself, so its CRC of the
/// whole screen must equal the CRC of the expected picture computed here.
fn kms_desktop_window_goes_on_an_overlay_plane() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let me = me()?;
    let (cw, ch) = (256u32, 128u32);
    let mut run = Running::start(
        &["--desktop", "--drm-device", &vkms_node()?, "--exit-after-frames", "60"],
        &[&me, CLIENT_MODE, &cw.to_string(), &ch.to_string(), "overlay", "desktop"],
    )?;
    run.wait_for("udmabuf buffer presented")?;
    std::thread::sleep(Duration::from_millis(100));
    // The first window cascades to (32, 56), its focused title bar the 24 rows above it.
    let expected = desktop_with_one_window(cw, ch);
    let (status, log) = finish_showing(run, &expected, "background, title bar, window")?;
    let (zero_copy, _) = counters(&log, "Virtual-1")?;
    if status != Some(0) || zero_copy == 0 {
        return Err(format!("exit {status:?}, zero_copy={zero_copy}: the window wasn't scanned out from its buffer\n{log}"));
    }
    Ok(())
}

/// Checks that vkms's CRC of the screen is the CRC of `expected` (1024x768 XRGB), then waits for
/// cohere to exit: (status, log).
fn finish_showing(run: Running, expected: &[u32], what: &str) -> Result<(Option<i32>, String), String> {
    let want = vkms_crc_xrgb8888(expected);
    let crcs = {
        let card = Card::open_driver("vkms").check("vkms")?;
        Vkms::new(&card).check("vkms")?.crcs(3).check("crc")?
    };
    let (status, log) = run.finish()?;
    if crcs.iter().any(|c| *c != want) {
        return Err(format!("vkms CRCs {crcs:x?}, expected {want:#x} ({what}):\n{log}"));
    }
    Ok((status, log))
}

/// libinput sees uinput devices only through udev: load uinput and run udevd (once per boot).
fn start_udevd_for_uinput() -> Result<(), String> {
    static STARTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if STARTED.get().is_some() {
        return Ok(());
    }
    Command::new("modprobe").arg("uinput").status().check("modprobe uinput")?;
    Command::new("/lib/systemd/systemd-udevd").arg("--daemon").status().check("starting udevd")?;
    std::thread::sleep(Duration::from_millis(300));
    let _ = STARTED.set(());
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

/// Once a pointer device moves the pointer, cohere draws its arrow there, on vkms's cursor
/// plane. vkms blends that plane into its CRC: the screen must be the desktop with the arrow's
/// black outline and white fill at the pointer, exactly.
fn kms_pointer_shows_the_arrow_on_the_cursor_plane() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    start_udevd_for_uinput()?;
    let me = me()?;
    let (cw, ch) = (256u32, 128u32);
    let mut run = Running::start(
        &["--desktop", "--drm-device", &vkms_node()?, "--exit-after-frames", "90"],
        &[&me, CLIENT_MODE, &cw.to_string(), &ch.to_string(), "cursor", "desktop"],
    )?;
    run.wait_for("udmabuf buffer presented")?;
    let mut tablet = cohere::testkit::uinput::Tablet::new(1024, 768).check("uinput tablet")?;
    std::thread::sleep(Duration::from_millis(500));
    let (px, py) = (600u32, 400u32);
    tablet.move_to(px as i32, py as i32).check("move")?;
    std::thread::sleep(Duration::from_millis(200));
    let mut expected = desktop_with_one_window(cw, ch);
    let arrow = cohere::cursor::arrow_pixels();
    for (y, row) in arrow.iter().enumerate() {
        for (x, px_colour) in row.iter().enumerate() {
            if let Some(c) = px_colour {
                expected[((py + y as u32) * 1024 + px + x as u32) as usize] = *c;
            }
        }
    }
    let (status, log) = finish_showing(run, &expected, &format!("desktop with the arrow at {px},{py}"))?;
    let cursor_plane = counter(&log, "Virtual-1", "cursor_plane")?;
    if status != Some(0) || cursor_plane == 0 {
        return Err(format!("exit {status:?}, cursor_plane={cursor_plane}: the arrow wasn't on the cursor plane\n{log}"));
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

fn kms_kiosk_weston_simple_shm_and_exit_status() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    // The app is a shell that runs weston-simple-shm for a while and exits 5: cohere (kiosk)
    // must show the client and then exit with 5.
    let app = "weston-simple-shm & sleep 0.8; kill $!; exit 5";
    let mut run = Running::start(&["--drm-device", &vkms_node()?], &["sh", "-c", app])?;
    run.wait_for("launched app")?;
    std::thread::sleep(Duration::from_millis(500));
    let card = Card::open_driver("vkms").check("vkms")?;
    let (w, h, pixels) = card.read_primary_plane().check("vkms readback")?;
    drop(card);
    let (status, log) = run.finish()?;
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
    if bbox != (x0, y0, x0 + 250, y0 + 250) || colours.len() < 200 {
        return Err(format!("weston-simple-shm on vkms: content box {bbox:?}, {} colours", colours.len()));
    }
    if status != Some(5) {
        return Err(format!("kiosk exit {status:?}, expected the app's 5:\n{log}"));
    }
    Ok(())
}

/// weston-simple-dmabuf-egl on vkms: Mesa 22.3's kms_swrast allocates dumb buffers with the
/// implicit modifier, which cohere accepts as linear because every device in the VM lays them
/// out linearly. They are "drm" dma-bufs, so pixman gets them through the CpuCopy executor.
/// The 256x256 window is centred on black (kiosk) and its frames keep changing on screen.
fn kms_weston_simple_dmabuf_egl_on_vkms_is_copied_and_shown() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let node = vkms_node()?;
    // kms_swrast renders on the CPU under TCG: its first frame takes a second or so, then a
    // dozen frames a second. Wait for the window to light up, then read the screen a few times.
    let mut run = Running::start(&["--drm-device", &node, "--exit-after-frames", "300"], &["weston-simple-dmabuf-egl", "-d", &node])?;
    run.wait_for("dma-buf imported")?;
    let mut frames = std::collections::HashSet::new();
    let mut readbacks = 0;
    for _ in 0..16 {
        std::thread::sleep(Duration::from_millis(250));
        let card = Card::open_driver("vkms").check("vkms")?;
        let (w, h, pixels) = card.read_primary_plane().check("vkms readback")?;
        drop(card);
        readbacks += 1;
        let (x0, y0) = ((w - 256) / 2, (h - 256) / 2);
        let inside = |x: u32, y: u32| (x0..x0 + 256).contains(&x) && (y0..y0 + 256).contains(&y);
        let mut lit = 0;
        for (i, p) in pixels.iter().enumerate() {
            let (x, y) = (i as u32 % w, i as u32 / w);
            if !inside(x, y) && *p != 0 {
                return Err(format!("pixel ({x},{y}) = {p:#x} outside the centred window is not black"));
            }
            lit += usize::from(inside(x, y) && *p != 0);
        }
        // The client draws a 128x128 gradient square that moves inside its black window.
        if lit >= 128 * 128 / 2 {
            frames.insert(pixels);
        }
        if frames.len() >= 3 {
            break;
        }
    }
    let (status, log) = run.finish()?;
    if frames.len() < 2 {
        return Err(format!("{} distinct frames of the window in {readbacks} readbacks:\n{log}", frames.len()));
    }
    if status != Some(0) {
        return Err(format!("cohere exit {status:?}:\n{log}"));
    }
    let plan = log.lines().find(|l| l.contains("buffer plan") && l.contains("exporter=drm")).ok_or(format!("no drm plan:\n{log}"))?;
    if !plan.contains("modifier=Linear") || !plan.contains("render (pixman): CpuCopy") {
        return Err(format!("plan: {plan}"));
    }
    let copied = counter(&log, "Virtual-1", "bytes_copied")?;
    let composited = counter(&log, "Virtual-1", "composited")?;
    if copied < 256 * 256 * 4 || composited == 0 {
        return Err(format!("expected copies and composition: bytes_copied={copied} composited={composited}"));
    }
    Ok(())
}

fn vkms_node() -> Result<String, String> {
    Ok(Card::open_driver("vkms").check("vkms")?.path.display().to_string())
}

/// Unbinding virtio-gpu from its PCI driver removes the DRM device (udev "remove"); binding it
/// again adds a new one. Outputs follow, cohere keeps serving clients, and exits cleanly.
fn kms_hotplug_removes_and_adds_outputs() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    // udev events reach cohere through udevd (the test VM doesn't run one by itself).
    Command::new("/lib/systemd/systemd-udevd").arg("--daemon").status().check("starting udevd")?;
    std::thread::sleep(Duration::from_millis(300));
    let mut run = Running::start(&["--socket", "hotplug", "--exit-after-frames", "120"], &[])?;
    run.wait_for("DRM device added card=\"card2\"")?;
    let pci = "0000:00:04.0";
    std::fs::write("/sys/bus/pci/drivers/virtio-pci/unbind", pci).check("unbinding virtio-gpu")?;
    run.wait_for("output removed output=\"Virtual-2\"")?;
    std::fs::write("/sys/bus/pci/drivers/virtio-pci/bind", pci).check("binding virtio-gpu")?;
    run.wait_for("DRM device added card=\"card3\"")?;
    // The coherency facts follow the devices: the new card is probed and plans recomputed.
    run.wait_for("card=card3 driver=virtio_gpu")?;
    run.wait_for("plans recomputed after a device change")?;
    std::thread::sleep(Duration::from_millis(300));
    let info = Command::new("wayland-info").env("WAYLAND_DISPLAY", "hotplug").output().check("wayland-info")?;
    let text = String::from_utf8_lossy(&info.stdout).into_owned();
    let outputs = text.matches("interface: 'wl_output',").count();
    let (status, log) = run.finish()?;
    if outputs != 2 || !text.contains("width: 1280 px, height: 800 px") {
        return Err(format!("after hotplug wayland-info shows {outputs} outputs:\n{text}"));
    }
    if status != Some(0) {
        return Err(format!("cohere exit {status:?} after hotplug:\n{log}"));
    }
    Ok(())
}

/// A uinput tablet (libinput, through udevd) clicks on the lower of two overlapping desktop
/// windows: it gets keyboard focus and comes to the top.
fn kms_libinput_click_focuses_the_window_under_the_pointer() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    start_udevd_for_uinput()?;
    let me = me()?;
    let app = format!("{me} {CLIENT_MODE} 64 64 a desktop & sleep 0.4; exec {me} {CLIENT_MODE} 64 64 b desktop");
    let mut run = Running::start(&["--desktop", "--drm-device", &vkms_node()?, "--exit-after-frames", "120"], &["sh", "-c", &app])?;
    // a, then b, take focus as they are created (before their titles arrive).
    run.wait_for("focused window")?;
    run.wait_for("focused window")?;
    std::thread::sleep(Duration::from_millis(300));
    // Window a is at (32, 56), b at (64, 88), both 64x64: (40, 60) is on a only.
    let mut tablet = cohere::testkit::uinput::Tablet::new(1024, 768).check("uinput tablet")?;
    std::thread::sleep(Duration::from_millis(500));
    tablet.click(40, 60).check("click")?;
    run.wait_for("focused window title=\"a\"")?;
    let (status, log) = run.finish()?;
    if status != Some(0) {
        return Err(format!("cohere exit {status:?}:\n{log}"));
    }
    Ok(())
}
