//! Tests that run inside the VM. Each asserts exact values from real kernel objects.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use cohere::coherency::DmabufFdInfo;
use cohere::sync::{export_sync_file, import_sync_file, DmabufAccess};
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
        ("cohere_headless_shows_a_udmabuf_wl_buffer_exactly", cohere_headless_shows_a_udmabuf_wl_buffer_exactly),
        (
            "override_makes_vkms_scanout_use_maintenance_and_pixels_stay_exact",
            override_makes_vkms_scanout_use_maintenance_and_pixels_stay_exact,
        ),
        ("cohere_inspect_reports_the_real_devices", cohere_inspect_reports_the_real_devices),
        ("weston_simple_dmabuf_feedback_receives_cohere_feedback", weston_simple_dmabuf_feedback_receives_cohere_feedback),
        ("cpu_copy_copies_only_the_damage_of_a_vgem_buffer", cpu_copy_copies_only_the_damage_of_a_vgem_buffer),
        ("acquire_fence_holds_the_commit_until_it_signals", acquire_fence_holds_the_commit_until_it_signals),
        ("a_disconnect_frees_a_pending_fence_wait", a_disconnect_frees_a_pending_fence_wait),
    ]
}

/// Turns any error into the test's failure message, with context.
pub trait Check<T> {
    fn check(self, what: &str) -> Result<T, String>;
}

impl<T, E: std::fmt::Display> Check<T> for Result<T, E> {
    fn check(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($msg:tt)+) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err(format!("{}: left {:?} != right {:?}", format!($($msg)+), l, r));
        }
    }};
}

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

pub const CLIENT_MODE: &str = "--cohere-udmabuf-client";
const CLIENT_SIZE: (i32, i32) = (256, 128);

/// Runs `cohere --headless --kiosk` with the udmabuf client, checks the screenshot pixel for
/// pixel and returns cohere's log (RUST_LOG=cohere=debug).
fn run_cohere_with_udmabuf_client(extra: &[&str], shot: &str) -> Result<String, String> {
    let expected = test_image(CLIENT_SIZE.0 as u32, CLIENT_SIZE.1 as u32);
    run_cohere_with_client(ClientRun { extra, env: &[], shot, frames: 240, presented: "udmabuf buffer presented" }, &expected)
}

/// One headless run of cohere with the test client as its app.
struct ClientRun<'a> {
    extra: &'a [&'a str],
    /// Environment for the client (COHERE_CLIENT_SOURCE, COHERE_CLIENT_DAMAGE).
    env: &'a [(&'a str, &'a str)],
    shot: &'a str,
    /// The screenshot is taken, and cohere exits, after this many frames at 480 Hz.
    frames: u32,
    /// The client's line that must precede the screenshot.
    presented: &'a str,
}

fn run_cohere_with_client(run: ClientRun<'_>, expected: &[u32]) -> Result<String, String> {
    let me = std::env::current_exe().check("current exe")?;
    let frames = run.frames.to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_cohere"))
        .args(["--headless", "--kiosk", "--size", &format!("{}x{}", CLIENT_SIZE.0, CLIENT_SIZE.1)])
        .args(["--refresh", "480", "--screenshot", run.shot])
        .args(["--after-frames", &frames, "--exit-after-frames", &frames])
        .args(run.extra)
        .arg("--")
        .arg(me)
        .arg(CLIENT_MODE)
        .env("RUST_LOG", "warn,cohere=debug")
        .envs(run.env.iter().copied())
        .output()
        .check("running cohere")?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure_eq!(out.status.code(), Some(0), "cohere exit status; stderr:\n{stderr}");
    let (Some(presented), Some(shot)) = (stderr.find(run.presented), stderr.find("screenshot written")) else {
        return Err(format!("no {:?} or no screenshot:\n{stderr}", run.presented));
    };
    if presented > shot {
        return Err(format!("the screenshot was taken before {:?}:\n{stderr}", run.presented));
    }
    let file = std::fs::File::open(run.shot).check("screenshot")?;
    let mut reader = png::Decoder::new(file).read_info().check("png")?;
    let mut rgba = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut rgba).check("png frame")?;
    ensure_eq!((info.width, info.height), (CLIENT_SIZE.0 as u32, CLIENT_SIZE.1 as u32), "screenshot size");
    let mut wrong = 0;
    let mut first = None;
    for (i, (px, want)) in rgba.chunks_exact(4).zip(expected).enumerate() {
        let want = [(want >> 16) as u8, (want >> 8) as u8, *want as u8, 0xff];
        if px != want {
            wrong += 1;
            first.get_or_insert((i as i32 % CLIENT_SIZE.0, i as i32 / CLIENT_SIZE.0, px.to_vec(), want));
        }
    }
    ensure_eq!(wrong, 0, "screenshot pixels that differ from the client's buffer contents (first: {first:?})");
    Ok(stderr)
}

/// `test_image` with every colour inverted: what the client's second buffer holds.
pub fn alt_image(w: u32, h: u32) -> Vec<u32> {
    test_image(w, h).into_iter().map(|p| !p & 0x00ff_ffff).collect()
}

/// A vgem buffer is a "drm" dma-buf: pixman (a CPU renderer) must not read it on every repaint,
/// so the plan says CpuCopy. The client's second buffer holds a wholly different image but
/// damages one rectangle: exactly that rectangle is copied (counted in bytes) and shown, the
/// rest of the screen keeps the first buffer's copy.
fn cpu_copy_copies_only_the_damage_of_a_vgem_buffer() -> Result<(), String> {
    let (x, y, w, h) = (32u32, 16u32, 64u32, 32u32);
    let (cw, ch) = (CLIENT_SIZE.0 as u32, CLIENT_SIZE.1 as u32);
    let (first, second) = (test_image(cw, ch), alt_image(cw, ch));
    let expected: Vec<u32> = (0..cw * ch)
        .map(|i| {
            let (px, py) = (i % cw, i / cw);
            let inside = (x..x + w).contains(&px) && (y..y + h).contains(&py);
            if inside {
                second[i as usize]
            } else {
                first[i as usize]
            }
        })
        .collect();
    let damage = format!("{x},{y},{w},{h}");
    let env = [("COHERE_CLIENT_SOURCE", "vgem"), ("COHERE_CLIENT_DAMAGE", damage.as_str())];
    let run = ClientRun { extra: &[], env: &env, shot: "/tmp/cohere-cpu-copy.png", frames: 720, presented: "damage presented" };
    let log = run_cohere_with_client(run, &expected)?;
    let plan = log.lines().find(|l| l.contains("buffer plan") && l.contains("exporter=drm")).ok_or(format!("no drm plan:\n{log}"))?;
    if !plan.contains("render (pixman): CpuCopy") {
        return Err(format!("plan: {plan}"));
    }
    let copies = log.lines().find(|l| l.contains("cpu copies")).ok_or(format!("no cpu copies line:\n{log}"))?;
    let want = format!("copies=2 bytes={}", cw * ch * 4 + w * h * 4);
    if !copies.contains(&want) {
        return Err(format!("expected {want}: {copies}"));
    }
    Ok(())
}

/// A udmabuf committed with an unsignalled write fence is not shown, and the compositor keeps
/// answering the client meanwhile; once the fence signals the commit applies and the screen
/// shows the new buffer exactly. Without the wait, pixman would read the buffer (or block the
/// event loop in DMA_BUF_IOCTL_SYNC) while the "device" still writes it.
fn acquire_fence_holds_the_commit_until_it_signals() -> Result<(), String> {
    let (cw, ch) = (CLIENT_SIZE.0 as u32, CLIENT_SIZE.1 as u32);
    let damage = format!("0,0,{cw},{ch}");
    // A udmabuf pixman reads itself, and a vgem buffer it copies: the copy starts only once
    // the fence has signalled.
    for (source, held) in [("udmabuf", "cpu copies copies=0"), ("vgem", "cpu copies copies=2")] {
        let env = [("COHERE_CLIENT_DAMAGE", damage.as_str()), ("COHERE_CLIENT_FENCE", "400"), ("COHERE_CLIENT_SOURCE", source)];
        let shot = format!("/tmp/cohere-fence-{source}.png");
        let run = ClientRun { extra: &[], env: &env, shot: &shot, frames: 960, presented: "damage presented" };
        let log = run_cohere_with_client(run, &alt_image(cw, ch)).map_err(|e| format!("{source}: {e}"))?;
        for want in ["held while fenced", "commit held until its buffer's acquire fence signals", "acquire fences commits_held=1", held] {
            if !log.contains(want) {
                return Err(format!("{source}: {want:?} missing:\n{log}"));
            }
        }
    }
    Ok(())
}

/// The sync_file descriptors process `pid` holds.
fn sync_files_of(pid: u32) -> Result<usize, String> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).check("/proc/pid/fd")?;
    Ok(fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok()).filter(|l| l.to_string_lossy().contains("sync_file")).count())
}

/// A client that leaves while its commit waits on a fence that hasn't signalled (and won't
/// while the test looks) takes the wait with it: cohere drops the fence's event source and its
/// sync_file at once, not when the fence finally signals.
fn a_disconnect_frees_a_pending_fence_wait() -> Result<(), String> {
    let me = std::env::current_exe().check("current exe")?;
    let (cw, ch) = (CLIENT_SIZE.0, CLIENT_SIZE.1);
    let mut child = Command::new(env!("CARGO_BIN_EXE_cohere"))
        .args(["--headless", "--kiosk", "--size", &format!("{cw}x{ch}"), "--exit-after-frames", "240"])
        .arg("--")
        .arg(me)
        .arg(CLIENT_MODE)
        .env("RUST_LOG", "warn,cohere=debug")
        .envs([
            ("COHERE_CLIENT_DAMAGE", format!("0,0,{cw},{ch}")),
            ("COHERE_CLIENT_FENCE", "200".into()),
            ("COHERE_CLIENT_THEN", "disconnect".into()),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .check("starting cohere")?;
    let pid = child.id();
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut log = Vec::new();
    let mut wait_for = |needle: &str| -> Result<(), String> {
        for line in lines.by_ref().map_while(Result::ok) {
            let found = line.contains(needle);
            log.push(line);
            if found {
                return Ok(());
            }
        }
        Err(format!("no {needle:?} in:\n{}", log.join("\n")))
    };
    wait_for("commit held until its buffer's acquire fence signals")?;
    let held = sync_files_of(pid)?;
    // The CPU copy has its own thread (comm is cut to 15 bytes).
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .check("/proc/pid/task")?
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect();
    if !threads.iter().any(|t| t == "cohere-cpu-copy") {
        return Err(format!("no cpu copy thread among {threads:?}"));
    }
    wait_for("client disconnected")?;
    std::thread::sleep(Duration::from_millis(100));
    let after = sync_files_of(pid)?;
    let _ = child.kill();
    let _ = child.wait();
    ensure_eq!((held, after), (1, 0), "cohere's sync_file fds while the commit waits, then after the client left");
    Ok(())
}

/// The import log's plan line for the udmabuf.
fn plan_line(log: &str) -> Result<String, String> {
    log.lines()
        .find(|l| l.contains("buffer plan") && l.contains("exporter=udmabuf"))
        .map(str::to_owned)
        .ok_or_else(|| format!("no 'buffer plan' line for the udmabuf in the log:\n{log}"))
}

fn cohere_headless_shows_a_udmabuf_wl_buffer_exactly() -> Result<(), String> {
    let log = run_cohere_with_udmabuf_client(&[], "/tmp/cohere-udmabuf.png")?;
    let line = plan_line(&log)?;
    // In the VM: cached udmabuf memory, vkms composes on the CPU: direct scanout is possible.
    if !line.contains("(vkms): Direct,") || !line.contains("(virtio_gpu): Composite") {
        return Err(format!("unexpected plan: {line}"));
    }
    Ok(())
}

fn override_makes_vkms_scanout_use_maintenance_and_pixels_stay_exact() -> Result<(), String> {
    let config = "/tmp/cohere-override.toml";
    std::fs::write(config, "# vkms scanout treated as noncoherent for cached exporters\n[driver.vkms]\nscanout_snoops = false\n")
        .check("config")?;
    let log = run_cohere_with_udmabuf_client(&["--config", config], "/tmp/cohere-udmabuf-override.png")?;
    let line = plan_line(&log)?;
    if !line.contains("(vkms): DirectWithMaintenance") || !line.contains("doesn't snoop (override /tmp/cohere-override.toml:3)") {
        return Err(format!("the override did not change the plan: {line}"));
    }
    // The per-path counters at exit: one buffer, its vkms scanout with maintenance.
    let counters = log.lines().find(|l| l.contains("coherency plans made")).ok_or(format!("no counters line:\n{log}"))?;
    for want in ["buffers=1", "rejected=0", "scanout:DirectWithMaintenance=1", "scanout:Composite=1", "render:Direct=1"] {
        if !counters.contains(want) {
            return Err(format!("{want} missing from {counters}"));
        }
    }
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
    if !text.contains("udmabuf:") || !text.contains("PRIME import test") {
        return Err(format!("inspect text:\n{text}"));
    }
    Ok(())
}

/// The client half: runs as cohere's launched app. Shows a udmabuf-backed wl_buffer fullscreen
/// (`test_image` at the configured size, or `W H` given as arguments) and reports on stderr
/// once it has been presented; then waits to be terminated.
/// `W H [TITLE desktop]`: with `desktop`, the window keeps its own size (no configure check).
pub fn udmabuf_client(args: &[String]) -> ExitCode {
    let size = match args {
        [w, h, ..] => (w.parse().unwrap_or(CLIENT_SIZE.0), h.parse().unwrap_or(CLIENT_SIZE.1)),
        _ => CLIENT_SIZE,
    };
    let title = args.get(2).cloned().unwrap_or_else(|| "udmabuf".into());
    let desktop = args.get(3).is_some_and(|a| a == "desktop");
    match run_udmabuf_client(size, &title, desktop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udmabuf client: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_udmabuf_client(size: (i32, i32), title: &str, desktop: bool) -> Result<(), String> {
    let dir = std::env::var("XDG_RUNTIME_DIR").check("XDG_RUNTIME_DIR")?;
    let name = std::env::var("WAYLAND_DISPLAY").check("WAYLAND_DISPLAY")?;
    let stream = UnixStream::connect(PathBuf::from(dir).join(name)).check("connect")?;
    let socket = stream.try_clone().check("socket clone")?;
    let mut client = crate::client::TestClient::new(stream);
    client.blocking_roundtrip().check("registry")?;
    client.bind_globals();
    let window = client.create_window(title);
    client.blocking_roundtrip().check("configure")?;
    let configure = client.ack_last_configure(&window);
    if !desktop {
        ensure_eq!((configure.width, configure.height), size, "kiosk configure");
    }
    let (w, h) = (size.0 as u32, size.1 as u32);
    // COHERE_CLIENT_SOURCE=vgem: a PRIME-exported vgem buffer (fdinfo `drm`); else a udmabuf.
    let vgem = match std::env::var("COHERE_CLIENT_SOURCE").as_deref() {
        Ok("vgem") => Some(Card::open_driver("vgem").check("vgem")?),
        _ => None,
    };
    let make = |pixels: Vec<u32>| -> Result<cohere::testkit::MappedDmabuf, String> {
        let bytes: Vec<u8> = pixels.iter().flat_map(|p| p.to_le_bytes()).collect();
        let buffer = match &vgem {
            Some(card) => vgem_buffer(card, w, h).check("vgem buffer")?,
            None => udmabuf(bytes.len()).check("udmabuf")?,
        };
        buffer.write(&bytes).check("fill")?;
        Ok(buffer)
    };
    let buffer = make(test_image(w, h))?;
    let fourcc = DrmFourcc::Xrgb8888 as u32;
    let wl_buffer = client.dmabuf_buffer(buffer.as_fd(), (size.0, size.1, w * 4), fourcc, 0, 1);
    window.surface.attach(Some(&wl_buffer), 0, 0);
    window.surface.damage_buffer(0, 0, size.0, size.1);
    client.presentation_feedback(&window.surface, 1);
    window.surface.commit();
    loop {
        client.blocking_roundtrip().check("waiting for presentation")?;
        if let Some((_, p)) = client.state.presentations.first() {
            eprintln!("udmabuf buffer presented: {p:?}");
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // COHERE_CLIENT_DAMAGE=x,y,w,h: a second buffer with a different image everywhere, of which
    // only that rectangle is declared damaged.
    let damage: Option<Vec<i32>> =
        std::env::var("COHERE_CLIENT_DAMAGE").ok().map(|d| d.split(',').filter_map(|n| n.parse().ok()).collect());
    let _second = match damage.as_deref() {
        Some(&[x, y, dw, dh]) => {
            let second = make(alt_image(w, h))?;
            // COHERE_CLIENT_FENCE=MS: the second buffer carries an unsignalled write fence (a
            // sw_sync point imported into the dma-buf) for MS milliseconds after its commit.
            let fence_ms: Option<u64> = std::env::var("COHERE_CLIENT_FENCE").ok().and_then(|v| v.parse().ok());
            let timeline = match fence_ms {
                Some(_) => {
                    let timeline = Timeline::new().check("sw_sync timeline")?;
                    let fence = timeline.fence_at(1).check("fence")?;
                    import_sync_file(second.as_fd(), &fence, DmabufAccess::Write).check("IMPORT_SYNC_FILE")?;
                    Some(timeline)
                }
                None => None,
            };
            let wl_second = client.dmabuf_buffer(second.as_fd(), (size.0, size.1, w * 4), fourcc, 0, 1);
            window.surface.attach(Some(&wl_second), 0, 0);
            window.surface.damage_buffer(x, y, dw, dh);
            client.presentation_feedback(&window.surface, 2);
            window.surface.commit();
            if let (Some(ms), Some(timeline)) = (fence_ms, &timeline) {
                let until = std::time::Instant::now() + Duration::from_millis(ms);
                let mut answered = 0;
                while std::time::Instant::now() < until {
                    // The compositor keeps answering while this one commit waits.
                    client.blocking_roundtrip().check("roundtrip while fenced")?;
                    answered += 1;
                    if client.state.presentations.len() >= 2 {
                        return Err("the fenced buffer was presented before its fence signalled".into());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                eprintln!("held while fenced: {answered} roundtrips answered");
                if std::env::var("COHERE_CLIENT_THEN").as_deref() == Ok("disconnect") {
                    // Leave with the fence still unsignalled (this process keeps the timeline).
                    eprintln!("disconnecting with the fence unsignalled");
                    socket.shutdown(std::net::Shutdown::Both).check("shutdown")?;
                    std::thread::sleep(Duration::from_millis(1500));
                    return Ok(());
                }
                timeline.advance(1).check("signal")?;
            }
            while client.state.presentations.len() < 2 {
                client.blocking_roundtrip().check("waiting for the damage's presentation")?;
                std::thread::sleep(Duration::from_millis(5));
            }
            eprintln!("damage presented");
            Some((second, wl_second))
        }
        _ => None,
    };
    // What the compositor now says about this surface (a scanout tranche when the buffer may go
    // on a plane), printed for the tests that run this client.
    if let Some(_feedback) = client.surface_feedback(&window.surface) {
        client.blocking_roundtrip().check("surface feedback")?;
        for line in client.state.transcript.iter().filter(|l| l.starts_with("feedback: ")) {
            eprintln!("udmabuf client {line}");
        }
    }
    // Stay mapped until cohere ends the session.
    while client.blocking_roundtrip().is_ok() {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
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
    let out = Command::new(env!("CARGO_BIN_EXE_cohere"))
        .args(["--headless", "--kiosk", "--refresh", "240", "--exit-after-frames", "120", "--", "weston-simple-dmabuf-feedback"])
        .env("RUST_LOG", "warn")
        .output()
        .check("running cohere")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
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
