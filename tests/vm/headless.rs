//! `cohere --headless` with real dma-bufs: the test client's buffers on screen pixel for pixel,
//! their plans, the damage-only CPU copy, and acquire fences holding commits. Each test waits
//! on the client's report and cohere's statistics, takes its screenshot with SIGUSR1 once the
//! client says its commit was presented, and stops cohere with SIGTERM.

use cohere::coherency::{Access, Path as PlanPath};

use crate::client_mode::{CLIENT_MODE, CLIENT_SIZE};
use crate::cohere::{scratch, ClientReport, Cohere, Stopped};
use crate::tests::{alt_image, ensure_eq, frame_image, test_image, Check, TestFn};

pub fn all() -> Vec<(&'static str, TestFn)> {
    vec![
        ("cohere_headless_shows_a_udmabuf_wl_buffer_exactly", cohere_headless_shows_a_udmabuf_wl_buffer_exactly),
        (
            "override_makes_vkms_scanout_use_maintenance_and_pixels_stay_exact",
            override_makes_vkms_scanout_use_maintenance_and_pixels_stay_exact,
        ),
        ("cpu_copy_copies_only_the_damage_of_a_vgem_buffer", cpu_copy_copies_only_the_damage_of_a_vgem_buffer),
        ("rewritten_buffers_show_their_new_content", || rewritten_buffers_show_their_new_content(&[], &[])),
        ("y_inverted_buffers_show_upright", || y_inverted_buffers_show_upright(&[], &[])),
        ("acquire_fence_holds_the_commit_until_it_signals", acquire_fence_holds_the_commit_until_it_signals),
        ("a_disconnect_frees_a_pending_fence_wait", a_disconnect_frees_a_pending_fence_wait),
    ]
}

/// One headless run with the test client as cohere's app.
pub(crate) struct ClientRun<'a> {
    /// More arguments for cohere.
    pub extra: &'a [&'a str],
    /// Environment for the client (COHERE_CLIENT_SOURCE, _DAMAGE, _FENCE).
    pub env: &'a [(&'a str, &'a str)],
    /// The client's report must say this many presentations before the screenshot.
    pub presented: u32,
}

/// Runs `cohere --headless --kiosk` with the test client, waits until the client's commits
/// were presented, checks a screenshot against `expected` pixel for pixel, and stops cohere.
pub(crate) fn run_with_client(run: ClientRun<'_>, expected: &[u32]) -> Result<(ClientReport, Stopped), String> {
    let shot = scratch("shot", "png");
    let report_file = scratch("client", "json");
    let (cw, ch) = CLIENT_SIZE;
    let me = std::env::current_exe().check("current exe")?;
    let me = me.to_str().ok_or("exe path")?;
    let size = format!("{cw}x{ch}");
    let shot_arg = shot.to_str().ok_or("path")?;
    let mut args = vec!["--headless", "--kiosk", "--size", &size, "--screenshot", shot_arg, "--after-frames", "0"];
    args.extend_from_slice(run.extra);
    let report_env = report_file.to_str().ok_or("path")?;
    let mut env = vec![("COHERE_CLIENT_REPORT", report_env)];
    env.extend_from_slice(run.env);
    let mut cohere = Cohere::start(&args, &[me, CLIENT_MODE], &env)?;
    let want = run.presented;
    let report = cohere.wait_client(&report_file, &format!("the client's {want} presentations"), |r| r.presented >= want)?;
    let (w, h, rgba) = cohere.screenshot(&shot)?;
    let stopped = cohere.stop()?;
    ensure_eq!((w, h), (cw as u32, ch as u32), "screenshot size");
    compare(&rgba, w, expected).map_err(|e| format!("{e}\ncohere's log:\n{}", stopped.log))?;
    let _ = std::fs::remove_file(&shot);
    Ok((report, stopped))
}

/// Every pixel of an RGBA screenshot `w` wide against XRGB `expected`.
pub fn compare(rgba: &[u8], w: u32, expected: &[u32]) -> Result<(), String> {
    let mut wrong = 0;
    let mut first = None;
    for (i, (px, want)) in rgba.chunks_exact(4).zip(expected).enumerate() {
        let want = [(want >> 16) as u8, (want >> 8) as u8, *want as u8, 0xff];
        if px != want {
            wrong += 1;
            first.get_or_insert((i as u32 % w, i as u32 / w, px.to_vec(), want));
        }
    }
    if rgba.len() / 4 != expected.len() || wrong != 0 {
        return Err(format!("{wrong} of {} screenshot pixels differ from the client's buffer (first: {first:?})", expected.len()));
    }
    Ok(())
}

/// The plan of the client's window from the last statistics.
fn window_plan(stopped: &Stopped, title: &str) -> Result<cohere::stats::PlanStats, String> {
    let window = stopped.stats.window(title).ok_or_else(|| format!("no window {title:?}: {}", crate::cohere::summary(&stopped.stats)))?;
    window.surface.plan.clone().ok_or_else(|| format!("window {title:?} has no plan: {window:?}"))
}

fn cohere_headless_shows_a_udmabuf_wl_buffer_exactly() -> Result<(), String> {
    let (cw, ch) = (CLIENT_SIZE.0 as u32, CLIENT_SIZE.1 as u32);
    let (_, stopped) = run_with_client(ClientRun { extra: &[], env: &[], presented: 1 }, &test_image(cw, ch))?;
    let plan = window_plan(&stopped, "udmabuf")?;
    // In the VM: cached udmabuf memory, vkms scans out from snooped memory, virtio-gpu can't
    // import it (the CPU renderer composites it for that display).
    ensure_eq!(plan.path(Access::Sample), Some(PlanPath::Direct), "render: {plan:?}");
    ensure_eq!(plan.path_of("(vkms)"), Some(PlanPath::Direct), "vkms scanout: {plan:?}");
    ensure_eq!(plan.path_of("(virtio_gpu)"), Some(PlanPath::Composite), "virtio-gpu scanout: {plan:?}");
    ensure_eq!(stopped.status, Some(0), "exit status after SIGTERM");
    Ok(())
}

fn override_makes_vkms_scanout_use_maintenance_and_pixels_stay_exact() -> Result<(), String> {
    let config = scratch("override", "toml");
    std::fs::write(&config, "# vkms scanout treated as noncoherent for cached exporters\n[driver.vkms]\nscanout_snoops = false\n")
        .check("config")?;
    let config_arg = config.to_str().ok_or("path")?;
    let (cw, ch) = (CLIENT_SIZE.0 as u32, CLIENT_SIZE.1 as u32);
    let run = ClientRun { extra: &["--config", config_arg], env: &[], presented: 1 };
    let (_, stopped) = run_with_client(run, &test_image(cw, ch))?;
    let plan = window_plan(&stopped, "udmabuf")?;
    let vkms = plan.consumers.iter().find(|c| c.label.contains("(vkms)")).ok_or("no vkms consumer")?;
    ensure_eq!(vkms.path, PlanPath::DirectWithMaintenance, "vkms with the override: {plan:?}");
    let source = format!("doesn't snoop (override {}:3)", config.display());
    if !vkms.reason.contains(&source) {
        return Err(format!("the reason doesn't cite the override ({source}): {}", vkms.reason));
    }
    // The per-path counters: each buffer's vkms scanout with maintenance.
    let s = &stopped.stats;
    // The client makes its two buffers (the second for tests that commit one) up front.
    ensure_eq!((s.buffers_planned, s.buffers_rejected), (2, 0), "buffers planned and rejected");
    ensure_eq!(
        (
            s.decisions_of(Access::Scanout, PlanPath::DirectWithMaintenance),
            s.decisions_of(Access::Scanout, PlanPath::Composite),
            s.decisions_of(Access::Sample, PlanPath::Direct)
        ),
        (2, 2, 2),
        "decisions {:?}",
        s.decisions
    );
    Ok(())
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
    let (_, stopped) = run_with_client(ClientRun { extra: &[], env: &env, presented: 2 }, &expected)?;
    let plan = window_plan(&stopped, "udmabuf")?;
    ensure_eq!(plan.path(Access::Sample), Some(PlanPath::CpuCopy), "render path of a vgem buffer: {plan:?}");
    let s = &stopped.stats;
    ensure_eq!((s.cpu_copies, s.bytes_copied), (2, u64::from(cw * ch * 4 + w * h * 4)), "copies and bytes");
    Ok(())
}

/// A client that reuses its buffers, as real ones do: each is rewritten once cohere released it,
/// and the screen must show the newest frame exactly. A renderer that kept an import of a
/// buffer's old content would show a stale frame. `extra` and `env` go to cohere (a renderer
/// choice, Mesa's environment).
pub(crate) fn rewritten_buffers_show_their_new_content(extra: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let (cw, ch) = (CLIENT_SIZE.0 as u32, CLIENT_SIZE.1 as u32);
    for source in ["udmabuf", "vgem"] {
        let mut all = vec![("COHERE_CLIENT_SOURCE", source), ("COHERE_CLIENT_FRAMES", "4"), ("COHERE_CLIENT_REWRITE", "1")];
        all.extend_from_slice(env);
        let run = ClientRun { extra, env: &all, presented: 5 };
        run_with_client(run, &frame_image(cw, ch, 4)).map_err(|e| format!("{source}: {e}"))?;
    }
    Ok(())
}

/// Buffers created with y_invert store their rows bottom to top; the client rewrites them
/// frame after frame (every commit attaches one). The screen must show each frame upright,
/// exactly: read directly (udmabuf) and through the CPU copy (vgem with Pixman). smithay's
/// GLES renderer, handed the flag, drew the first row stretched down the window.
pub(crate) fn y_inverted_buffers_show_upright(extra: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let (cw, ch) = (CLIENT_SIZE.0 as u32, CLIENT_SIZE.1 as u32);
    for source in ["udmabuf", "vgem"] {
        let mut all = vec![
            ("COHERE_CLIENT_SOURCE", source),
            ("COHERE_CLIENT_Y_INVERT", "1"),
            ("COHERE_CLIENT_FRAMES", "4"),
            ("COHERE_CLIENT_REWRITE", "1"),
        ];
        all.extend_from_slice(env);
        let run = ClientRun { extra, env: &all, presented: 5 };
        run_with_client(run, &frame_image(cw, ch, 4)).map_err(|e| format!("{source}: {e}"))?;
    }
    Ok(())
}

/// A commit whose buffer carries an unsignalled write fence is not shown, and the compositor
/// keeps answering the client meanwhile; once the fence signals the commit applies and the
/// screen shows the new buffer exactly. Without the wait, pixman would read the buffer (or
/// block the event loop in DMA_BUF_IOCTL_SYNC) while the "device" still writes it.
fn acquire_fence_holds_the_commit_until_it_signals() -> Result<(), String> {
    let (cw, ch) = (CLIENT_SIZE.0 as u32, CLIENT_SIZE.1 as u32);
    let damage = format!("0,0,{cw},{ch}");
    // A udmabuf pixman reads itself, and a vgem buffer it copies: the copy starts only once
    // the fence has signalled.
    for (source, copies) in [("udmabuf", 0), ("vgem", 2)] {
        let env = [("COHERE_CLIENT_DAMAGE", damage.as_str()), ("COHERE_CLIENT_FENCE", "400"), ("COHERE_CLIENT_SOURCE", source)];
        let (report, stopped) =
            run_with_client(ClientRun { extra: &[], env: &env, presented: 2 }, &alt_image(cw, ch)).map_err(|e| format!("{source}: {e}"))?;
        if report.held_roundtrips == 0 {
            return Err(format!("{source}: no roundtrip was answered while the commit waited: {report:?}"));
        }
        ensure_eq!((stopped.stats.commits_held_for_fences, stopped.stats.cpu_copies), (1, copies), "{source}: commits held, copies");
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
    let me = me.to_str().ok_or("exe path")?;
    let (cw, ch) = CLIENT_SIZE;
    let report_file = scratch("client", "json");
    let go = scratch("disconnect", "go");
    let damage = format!("0,0,{cw},{ch}");
    let hold = format!("until:{}", go.display());
    let env = [
        ("COHERE_CLIENT_REPORT", report_file.to_str().ok_or("path")?),
        ("COHERE_CLIENT_DAMAGE", damage.as_str()),
        ("COHERE_CLIENT_FENCE", hold.as_str()),
        ("COHERE_CLIENT_THEN", "disconnect"),
    ];
    let size = format!("{cw}x{ch}");
    let mut cohere = Cohere::start(&["--headless", "--kiosk", "--size", &size], &[me, CLIENT_MODE], &env)?;
    let held = cohere.wait("a commit held for its fence", |s| s.commits_waiting == 1 && s.commits_held_for_fences == 1)?;
    let fds_held = sync_files_of(cohere.pid())?;
    // The CPU copy has its own thread (comm is cut to 15 bytes).
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", cohere.pid()))
        .check("/proc/pid/task")?
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect();
    if !threads.iter().any(|t| t == "cohere-cpu-copy") {
        return Err(format!("no cpu copy thread among {threads:?}"));
    }
    std::fs::write(&go, "").check("telling the client to go")?;
    cohere.wait_client(&report_file, "the client to disconnect", |r| r.disconnected)?;
    cohere.wait("the client gone and its wait freed", |s| s.clients == 0 && s.commits_waiting == 0)?;
    let fds_after = sync_files_of(cohere.pid())?;
    cohere.stop()?;
    ensure_eq!(
        (held.clients, fds_held, fds_after),
        (1, 1, 0),
        "clients, then cohere's sync_file fds while the commit waits and after the client left"
    );
    Ok(())
}
