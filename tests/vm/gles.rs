//! GPU composition (the "GPU blit" fallback) with GLES, headless and on KMS, on real dma-bufs:
//! Mesa 25's llvmpipe on the EGL device platform (from bookworm-backports, unpacked into the VM
//! cache; bookworm's Mesa 22.3 can't import dma-bufs) is the GPU here. The plan names the GLES
//! renderer as the consumer that reads a buffer directly; nothing is copied through the CPU.

use std::process::Command;

use cohere::coherency::{Access, Path as PlanPath};
use cohere::testkit::Card;

use crate::client_mode::{CLIENT_MODE, CLIENT_SIZE};
use crate::cohere::{scratch, summary, Cohere};
use crate::headless::compare;
use crate::kms::{check_vkms_crc, output_counters, start_with_client, vkms_node, window_plan, VKMS_OUTPUT};
use crate::tests::{ensure_eq, test_image, Check, TestFn};

pub fn all() -> Vec<(&'static str, TestFn)> {
    vec![
        ("gles_headless_reads_udmabuf_and_vgem_buffers_directly", gles_headless_reads_udmabuf_and_vgem_buffers_directly),
        ("renderer_auto_picks_pixman_with_software_gl_and_says_why", renderer_auto_picks_pixman_with_software_gl_and_says_why),
        ("gles_rewritten_buffers_show_their_new_content", gles_rewritten_buffers_show_their_new_content),
        ("gles_y_inverted_buffers_show_upright", gles_y_inverted_buffers_show_upright),
    ]
}

pub fn kms() -> Vec<(usize, &'static str, TestFn)> {
    vec![
        (1, "gles_composites_a_udmabuf_on_virtio_gpu", gles_composites_a_udmabuf_on_virtio_gpu),
        (1, "gles_on_vkms_composites_or_scans_out_as_planned", gles_on_vkms_composites_or_scans_out_as_planned),
        (1, "gles_shows_weston_simple_dmabuf_egl_on_vkms", gles_shows_weston_simple_dmabuf_egl_on_vkms),
        (1, "gles_on_vkms_composites_every_new_frame", gles_on_vkms_composites_every_new_frame),
    ]
}

/// The environment that puts Mesa 25 (unpacked by tests/vm/vm.sh) in front of Debian's.
pub fn mesa25() -> Result<Vec<(String, String)>, String> {
    let root = std::env::var("COHERE_MESA25").check("COHERE_MESA25 (set by tests/vm/vm.sh)")?;
    let lib = format!("{root}/usr/lib/x86_64-linux-gnu");
    if !std::path::Path::new(&lib).join("libEGL_mesa.so.0").exists() {
        return Err(format!("Mesa 25 isn't unpacked under {root}: run tests/vm/vm.sh setup"));
    }
    Ok(vec![
        ("LD_LIBRARY_PATH".into(), lib.clone()),
        ("LIBGL_DRIVERS_PATH".into(), format!("{lib}/dri")),
        ("GBM_BACKENDS_PATH".into(), format!("{lib}/gbm")),
        ("__EGL_VENDOR_LIBRARY_FILENAMES".into(), format!("{root}/usr/share/glvnd/egl_vendor.d/50_mesa.json")),
        // llvmpipe's 256-bit (AVX2) code faults under this VM's TCG: sampling a 1280x720
        // udmabuf, a vpgatherdd in its JIT code read 2 GiB below the texture (a lane index of
        // INT_MIN, as a masked-off lane would hold), every time in some runs and never in
        // others. With 128-bit vectors it doesn't, and TCG runs it about twice as fast.
        ("LP_NATIVE_VECTOR_WIDTH".into(), "128".into()),
    ])
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// `cohere --headless --renderer gles` with a udmabuf, then a vgem buffer: the screenshot is the
/// client's image exactly, the plan has the GLES renderer read each buffer directly, and
/// nothing is copied.
fn gles_headless_reads_udmabuf_and_vgem_buffers_directly() -> Result<(), String> {
    let mesa = mesa25()?;
    let (cw, ch) = CLIENT_SIZE;
    for source in ["udmabuf", "vgem"] {
        let what = |e: String| format!("{source}: {e}");
        let shot = scratch("gles", "png");
        let report = scratch("client", "json");
        let (size, shot_arg, report_arg) = (format!("{cw}x{ch}"), shot.display().to_string(), report.display().to_string());
        let mut env = env_refs(&mesa);
        env.extend([("COHERE_CLIENT_SOURCE", source), ("COHERE_CLIENT_REPORT", report_arg.as_str())]);
        let me = std::env::current_exe().check("exe")?.display().to_string();
        let args = ["--headless", "--kiosk", "--renderer", "gles", "--size", &size, "--screenshot", &shot_arg, "--after-frames", "0"];
        let mut cohere = Cohere::start(&args, &[&me, CLIENT_MODE], &env)?;
        cohere.wait_client(&report, "the buffer presented", |r| r.presented >= 1).map_err(what)?;
        let (w, _, rgba) = cohere.screenshot(&shot).map_err(what)?;
        compare(&rgba, w, &test_image(cw as u32, ch as u32)).map_err(what)?;
        let stopped = cohere.stop().map_err(what)?;
        let s = &stopped.stats;
        if !s.renderer.starts_with("render (gles: llvmpipe") {
            return Err(what(format!("renderer {:?} ({})", s.renderer, s.renderer_reason)));
        }
        let plan = window_plan(s, "udmabuf").map_err(what)?;
        ensure_eq!(plan.path(Access::Sample), Some(PlanPath::Direct), "{source}: the GLES renderer reads the buffer itself: {plan:?}");
        ensure_eq!((s.cpu_copies, s.bytes_copied), (0, 0), "{source}: copies and bytes copied");
    }
    Ok(())
}

/// Buffers the client rewrites after each release, composited by GLES: every frame's content.
fn gles_rewritten_buffers_show_their_new_content() -> Result<(), String> {
    let mesa = mesa25()?;
    crate::headless::rewritten_buffers_show_their_new_content(&["--renderer", "gles"], &env_refs(&mesa))
}

/// y_invert buffers composited by GLES show upright, every frame (smithay issue #2150).
fn gles_y_inverted_buffers_show_upright() -> Result<(), String> {
    let mesa = mesa25()?;
    crate::headless::y_inverted_buffers_show_upright(&["--renderer", "gles"], &env_refs(&mesa))
}

/// In the VM the only GL is software (llvmpipe behind virtio-gpu's render node): `auto` picks
/// Pixman, and cohere and `cohere inspect` say why.
fn renderer_auto_picks_pixman_with_software_gl_and_says_why() -> Result<(), String> {
    let mesa = mesa25()?;
    let inspect = Command::new(env!("CARGO_BIN_EXE_cohere")).arg("inspect").envs(env_refs(&mesa)).output().check("inspect")?;
    let text = String::from_utf8_lossy(&inspect.stdout).into_owned();
    let want = "renderer: pixman (CPU)\n    chosen because no hardware GPU for GLES: /dev/dri/renderD";
    if !text.contains(want) || !text.contains("renders in software") {
        return Err(format!("inspect doesn't say why pixman:\n{text}"));
    }
    let mut cohere = Cohere::start(&["--headless"], &[], &env_refs(&mesa))?;
    let stats = cohere.wait("statistics", |_| true)?;
    cohere.stop()?;
    ensure_eq!(stats.renderer, "render (pixman)", "auto's renderer ({})", stats.renderer_reason);
    if !stats.renderer_reason.contains("renders in software") {
        return Err(format!("the reason: {}", stats.renderer_reason));
    }
    Ok(())
}

/// virtio-gpu refuses foreign dma-bufs, so a udmabuf can't go on its plane: GLES composites it
/// into virtio-gpu's own scanout buffer (rendering on one device, llvmpipe, scanning out on
/// another), exactly, and nothing is copied.
fn gles_composites_a_udmabuf_on_virtio_gpu() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let mesa = mesa25()?;
    let node = Card::open_driver("virtio_gpu").check("virtio-gpu")?.path.display().to_string();
    let (mut cohere, _) = start_with_client(&["--kiosk", "--renderer", "gles", "--drm-device", &node], &["1280", "800"], &env_refs(&mesa))?;
    let stats = cohere.wait("the virtio-gpu output", |s| s.devices.iter().any(|d| d.driver == "virtio_gpu"))?;
    let output = stats.devices.iter().find(|d| d.driver == "virtio_gpu").and_then(|d| d.outputs.first().cloned()).ok_or("no output")?;
    let (w, h, pixels) =
        cohere.readback(&output, || Card::open_driver("virtio_gpu").check("virtio-gpu")?.read_primary_plane().check("readback"))?;
    let stopped = cohere.stop()?;
    ensure_eq!((w, h), (1280, 800), "virtio-gpu mode");
    let wrong = pixels.iter().zip(test_image(w, h)).filter(|(a, b)| **a != *b).count();
    ensure_eq!(wrong, 0, "pixels GLES composited on virtio-gpu that differ from the client's image");
    let plan = window_plan(&stopped.stats, "udmabuf")?;
    ensure_eq!((plan.path(Access::Sample), plan.path_of("(virtio_gpu)")), (Some(PlanPath::Direct), Some(PlanPath::Composite)), "{plan:?}");
    if !plan.consumers.iter().any(|c| c.label.starts_with("render (gles: llvmpipe")) {
        return Err(format!("the renderer isn't GLES: {plan:?}"));
    }
    let c = output_counters(&stopped, &output)?;
    if c.composited_elements == 0 || c.zero_copy_elements != 0 || c.bytes_copied != 0 || stopped.stats.bytes_copied != 0 {
        return Err(format!("expected GLES composition without copies: {c:?}, {}", summary(&stopped.stats)));
    }
    Ok(())
}

/// On vkms with GLES: a udmabuf goes on a plane when the plan allows it, and when vkms doesn't
/// snoop and udmabuf can't sync attachments (overrides), GLES composites it instead. vkms's CRC
/// is the client's image both ways.
fn gles_on_vkms_composites_or_scans_out_as_planned() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let mesa = mesa25()?;
    let node = vkms_node()?;
    let config_arg = crate::maintenance::composite_on_vkms()?;
    for overridden in [false, true] {
        let what = |e: String| format!("{}: {e}", if overridden { "with the override" } else { "without the override" });
        let mut args = vec!["--kiosk", "--renderer", "gles", "--drm-device", node.as_str()];
        if overridden {
            args.extend(["--config", config_arg.as_str()]);
        }
        let (mut cohere, _) = start_with_client(&args, &["1024", "768"], &env_refs(&mesa)).map_err(what)?;
        check_vkms_crc(&mut cohere, &test_image(1024, 768), "the client's image").map_err(what)?;
        let stopped = cohere.stop().map_err(what)?;
        let plan = window_plan(&stopped.stats, "udmabuf").map_err(what)?;
        let c = output_counters(&stopped, VKMS_OUTPUT).map_err(what)?;
        let (want_path, composited) = if overridden { (PlanPath::Composite, true) } else { (PlanPath::Direct, false) };
        ensure_eq!(plan.path_of("(vkms)"), Some(want_path), "{}: {plan:?}", what(String::new()));
        if (c.composited_elements > 0) != composited || (c.zero_copy_elements > 0) == composited || c.bytes_copied != 0 {
            return Err(what(format!("expected {}: {c:?}", if composited { "GLES composition" } else { "zero-copy scanout" })));
        }
    }
    Ok(())
}

/// GLES composites (vkms made non-snooping, udmabuf without attachment sync) a client that
/// rewrites its two buffers frame after frame: vkms must show the newest frame, which only
/// holds if every frame GLES draws reaches the scanout buffer.
fn gles_on_vkms_composites_every_new_frame() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let mesa = mesa25()?;
    let node = vkms_node()?;
    let config_arg = crate::maintenance::composite_on_vkms()?;
    let args = ["--kiosk", "--renderer", "gles", "--drm-device", node.as_str(), "--config", config_arg.as_str()];
    let mut env = env_refs(&mesa);
    env.extend([("COHERE_CLIENT_FRAMES", "4"), ("COHERE_CLIENT_REWRITE", "1")]);
    let (mut cohere, _, report) = crate::kms::start_with_client_report(&args, &["1024", "768"], &env)?;
    cohere.wait_client(&report, "the client's five frames presented", |r| r.presented >= 5)?;
    check_vkms_crc(&mut cohere, &crate::tests::frame_image(1024, 768, 4), "the client's newest frame")?;
    let stopped = cohere.stop()?;
    let c = output_counters(&stopped, VKMS_OUTPUT)?;
    if c.composited_elements == 0 || c.zero_copy_elements != 0 {
        return Err(format!("expected GLES composition: {c:?}"));
    }
    Ok(())
}

/// weston-simple-dmabuf-egl built against Mesa 25 (GBM on vkms, with modifiers) runs on cohere
/// composited with GLES: its square shows on vkms, upright. The client draws with GL into
/// buffers it creates with y_invert (GL's rows go bottom to top); its square moves, but is
/// always a 128x128 square with green, yellow, red and blue corners (top left, top right,
/// bottom left, bottom right on screen). That its frames keep changing isn't asked here: how
/// often its llvmpipe-rendered content changes depends on the machine's speed, and
/// `gles_on_vkms_composites_every_new_frame` shows every new frame of a client exactly.
fn gles_shows_weston_simple_dmabuf_egl_on_vkms() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let mesa = mesa25()?;
    let node = vkms_node()?;
    // Its buffers are y_invert ones, which cohere composites (never on a plane): the window is
    // in the frame cohere draws, where the test looks at it.
    let mut cohere = Cohere::start(
        &["--kiosk", "--renderer", "gles", "--drm-device", &node],
        &["weston-simple-dmabuf-egl", "-d", &node],
        &env_refs(&mesa),
    )?;
    let title = "simple-dmabuf-egl";
    cohere.wait("weston-simple-dmabuf-egl's window shown", |s| s.window(title).is_some_and(|w| w.surface.frames_shown >= 1))?;
    // The kiosk is black around and under the client's 256x256 window: the square makes the
    // screen's CRC differ from an all-black screen's, and is the only thing lit in the frame
    // cohere composited (its primary plane's buffer).
    let black = cohere::testkit::vkms::vkms_crc_xrgb8888(&vec![0u32; 1024 * 768]);
    crate::cohere::wait_for("vkms to show the client's square, upright", || {
        let (crcs, frame) = cohere.readback(VKMS_OUTPUT, || {
            let card = Card::open_driver("vkms").check("vkms")?;
            let crcs = cohere::testkit::vkms::Vkms::new(&card).check("vkms")?.crcs(3).check("crc")?;
            Ok((crcs, card.read_primary_plane().check("the primary plane")?))
        })?;
        if crcs.iter().all(|c| *c == black) {
            let now = cohere.stats().map(|s| summary(&s)).unwrap_or_default();
            let client = client_dmabufs(cohere.pid()).unwrap_or_else(|e| e);
            return Err(format!("only black screens; {now}; the client's dma-bufs: {client}"));
        }
        upright_square(&frame)
    })?;
    let later = cohere.wait("statistics", |_| true)?;
    let stopped = cohere.stop()?;
    if !later.renderer.starts_with("render (gles") {
        return Err(format!("renderer {:?}", later.renderer));
    }
    let plan = window_plan(&stopped.stats, title)?;
    ensure_eq!(plan.path(Access::Sample), Some(PlanPath::Direct), "the GLES renderer reads its buffers itself: {plan:?}");
    ensure_eq!(stopped.stats.bytes_copied, 0, "bytes copied");
    Ok(())
}

/// Whether the lit pixels of `frame` are weston-simple-dmabuf-egl's square: 128x128 (give or
/// take the edge pixels of a square at a fractional position), green at its top left, yellow
/// at its top right, red at its bottom left and blue at its bottom right.
pub(crate) fn upright_square((w, _h, pixels): &(u32, u32, Vec<u32>)) -> Result<(), String> {
    let w = *w as usize;
    let lit: Vec<(usize, usize)> = pixels.iter().enumerate().filter(|(_, p)| **p != 0).map(|(i, _)| (i % w, i / w)).collect();
    let (Some(x0), Some(x1)) = (lit.iter().map(|p| p.0).min(), lit.iter().map(|p| p.0).max()) else {
        return Err("nothing lit in cohere's frame".into());
    };
    let (y0, y1) = (lit.iter().map(|p| p.1).min().unwrap_or(0), lit.iter().map(|p| p.1).max().unwrap_or(0));
    let (sw, sh) = (x1 - x0 + 1, y1 - y0 + 1);
    if !(126..=130).contains(&sw) || !(126..=130).contains(&sh) || lit.len() < 126 * 126 {
        return Err(format!("the lit pixels aren't a 128x128 square: {} lit in {sw}x{sh} at ({x0}, {y0})", lit.len()));
    }
    let rgb = |x: usize, y: usize| {
        let p = pixels[y * w + x];
        ((p >> 16) & 0xff, (p >> 8) & 0xff, p & 0xff)
    };
    let corners = [
        ("top left", rgb(x0 + 3, y0 + 3), "green", (|(r, g, b): (u32, u32, u32)| g > 0xc0 && r < 0x40 && b < 0x40) as fn(_) -> bool),
        ("top right", rgb(x1 - 3, y0 + 3), "yellow", |(r, g, b)| r > 0xc0 && g > 0xc0 && b < 0x40),
        ("bottom left", rgb(x0 + 3, y1 - 3), "red", |(r, g, b)| r > 0xc0 && g < 0x40 && b < 0x40),
        ("bottom right", rgb(x1 - 3, y1 - 3), "blue", |(r, g, b)| b > 0xc0 && r < 0x40 && g < 0x40),
    ];
    for (corner, seen, want, is) in corners {
        if !is(seen) {
            return Err(format!("the square's {corner} is {seen:02x?}, not {want} (square {sw}x{sh} at ({x0}, {y0}))"));
        }
    }
    Ok(())
}

/// For a failure message: the non-black pixels in each dma-buf that cohere's app (found as
/// cohere's child) holds, read through a copy of its descriptor (pidfd_getfd).
fn client_dmabufs(cohere: u32) -> Result<String, String> {
    use rustix::process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags};
    let children = std::fs::read_to_string(format!("/proc/{cohere}/task/{cohere}/children")).check("children")?;
    let mut out = Vec::new();
    for pid in children.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        let pidfd = pidfd_open(Pid::from_raw(pid).ok_or("pid")?, PidfdFlags::empty()).check("pidfd_open")?;
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).check("fds")?.flatten() {
            let link = std::fs::read_link(entry.path()).map(|l| l.display().to_string()).unwrap_or_default();
            if !link.contains("dmabuf") {
                continue;
            }
            let Some(n) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let fd = pidfd_getfd(&pidfd, n, PidfdGetfdFlags::empty()).check("pidfd_getfd")?;
            let Ok(len) = rustix::fs::seek(&fd, rustix::fs::SeekFrom::End(0)) else {
                out.push(format!("pid {pid} fd {n} ({link}): no size"));
                continue;
            };
            let len = len as usize;
            // SAFETY: a fresh read-only shared mapping of the whole dma-buf, unmapped below.
            let ptr =
                unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, rustix::mm::ProtFlags::READ, rustix::mm::MapFlags::SHARED, &fd, 0) }
                    .check("mmap")?;
            // SAFETY: ptr is valid for len bytes until munmap.
            let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
            let lit = bytes.chunks_exact(4).filter(|p| p[0] | p[1] | p[2] != 0).count();
            // SAFETY: unmapping what we mapped.
            unsafe { rustix::mm::munmap(ptr, len) }.check("munmap")?;
            out.push(format!("pid {pid} fd {n} ({link}): {lit} of {} non-black", len / 4));
        }
    }
    Ok(out.join(", "))
}
