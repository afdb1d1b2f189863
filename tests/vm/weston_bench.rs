//! cohere against Weston 14, a benchmark run by name (`scripts/bench-vm.sh weston`), never by
//! the suite. Both compositors run headless at 1280x720 with their kiosk shell, one after the
//! other, each with the same client: the test client ([`crate::client_mode`]) showing a
//! 1280x720 window from two buffers (udmabufs, or wl_shm with `COHERE_CLIENT_SOURCE=shm`), each
//! frame committed once the previous one was presented, declaring either the whole buffer
//! damaged ("full") or a 128x128 square that moves each frame ("rect"). What is measured is the
//! compositor's CPU time per presented frame, every thread of its process counted (llvmpipe's
//! and cohere's copy threads included), over the frames after a warm-up, and the frame rate.
//! Each cell prints one `weston-bench` line; scripts/bench-vm.sh takes the median over boots.
//!
//! Weston 14.0.2 and its libwayland 1.23 come from bookworm-backports, unpacked into the VM
//! cache by `tests/vm/vm.sh setup-weston14`; GL on both sides is Mesa 25's llvmpipe.
//! Cells Weston can't run (its Pixman renderer offers no linux-dmabuf) are not listed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client_mode::CLIENT_MODE;
use crate::cohere::{scratch, wait_for, ClientReport, Cohere};
use crate::gles::mesa25;
use crate::kms::me;
use crate::tests::{Check, TestFn};

pub fn benches() -> Vec<(&'static str, TestFn)> {
    vec![
        ("bench_weston_pixman_shm_full", || cell(Renderer::Pixman, Source::Shm, Damage::Full)),
        ("bench_weston_pixman_shm_rect", || cell(Renderer::Pixman, Source::Shm, Damage::Rect)),
        ("bench_weston_gl_shm_full", || cell(Renderer::Gl, Source::Shm, Damage::Full)),
        ("bench_weston_gl_shm_rect", || cell(Renderer::Gl, Source::Shm, Damage::Rect)),
        ("bench_weston_gl_udmabuf_full", || cell(Renderer::Gl, Source::Udmabuf, Damage::Full)),
        ("bench_weston_gl_udmabuf_rect", || cell(Renderer::Gl, Source::Udmabuf, Damage::Rect)),
    ]
}

const SIZE: (u32, u32) = (1280, 720);
/// Frames presented before the measurement starts (start-up, first imports, shader builds).
const WARMUP: usize = 20;
/// Frames measured, at most...
const MEASURED: usize = 240;
/// ...within this window after the warm-up (what software GL manages with full damage under
/// TCG is a few frames a second)...
const WINDOW: Duration = Duration::from_secs(60);
/// ...and at least these.
const MIN_MEASURED: usize = 30;

#[derive(Clone, Copy, Debug)]
enum Renderer {
    Pixman,
    Gl,
}

#[derive(Clone, Copy, Debug)]
enum Source {
    Shm,
    Udmabuf,
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    Full,
    Rect,
}

/// One compositor's figures for one cell.
struct Measure {
    /// Compositor CPU time per presented frame.
    cpu_per_frame: Duration,
    /// Presented frames per second.
    fps: f64,
}

fn cell(renderer: Renderer, source: Source, damage: Damage) -> Result<(), String> {
    let name = format!("{}/{}/{}", label(renderer), label(source), label(damage)).to_lowercase();
    let ours = cohere(renderer, source, damage).map_err(|e| format!("cohere, {name}: {e}"))?;
    let theirs = match weston(renderer, source, damage) {
        Ok(theirs) => theirs,
        // Weston 14's GL renderer on the surfaceless EGL platform can't import a udmabuf: a
        // figure for cohere alone, and why there is none for Weston.
        Err(e) if e.contains("importing the supplied dmabufs failed") => {
            println!(
                "weston-bench {name}: cohere {:.3} ms/frame at {:.1} fps, weston14 can't import the client's dma-bufs (linux-dmabuf error 7)",
                ms(ours.cpu_per_frame),
                ours.fps
            );
            return Ok(());
        }
        Err(e) => return Err(format!("weston 14, {name}: {e}")),
    };
    println!(
        "weston-bench {name}: cohere {:.3} ms/frame at {:.1} fps, weston14 {:.3} ms/frame at {:.1} fps, cpu ratio {:.2}",
        ms(ours.cpu_per_frame),
        ours.fps,
        ms(theirs.cpu_per_frame),
        theirs.fps,
        ours.cpu_per_frame.as_secs_f64() / theirs.cpu_per_frame.as_secs_f64()
    );
    Ok(())
}

fn label(value: impl std::fmt::Debug) -> String {
    format!("{value:?}")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn cohere(renderer: Renderer, source: Source, damage: Damage) -> Result<Measure, String> {
    let mesa = match renderer {
        Renderer::Gl => mesa25()?,
        Renderer::Pixman => Vec::new(),
    };
    let env: Vec<(&str, &str)> = mesa.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let size = format!("{}x{}", SIZE.0, SIZE.1);
    let renderer = match renderer {
        Renderer::Pixman => "pixman",
        Renderer::Gl => "gles",
    };
    // Statistics on tmpfs, as cohere keeps them by default (XDG_RUNTIME_DIR).
    let runtime = std::env::var("XDG_RUNTIME_DIR").check("XDG_RUNTIME_DIR")?;
    let stats = scratch("bench-stats", "json").file_name().map(|name| Path::new(&runtime).join(name)).ok_or("stats file name")?;
    let args = ["--headless", "--kiosk", "--renderer", renderer, "--size", &size];
    let mut cohere = Cohere::start_with_stats(stats, &args, &[], &env)?;
    // Its first statistics come once it listens.
    cohere.wait("cohere to run", |_| true)?;
    let socket = cohere.socket.clone();
    let measured = measure(cohere.pid(), &socket, source, damage);
    let stopped = cohere.stop();
    let measure = measured?;
    stopped?;
    Ok(measure)
}

fn weston(renderer: Renderer, source: Source, damage: Damage) -> Result<Measure, String> {
    let root = std::env::var("COHERE_WESTON14").check("COHERE_WESTON14 (set by tests/vm/vm.sh)")?;
    let lib = format!("{root}/usr/lib/x86_64-linux-gnu");
    let weston = Path::new(&root).join("usr/bin/weston");
    if !weston.exists() {
        return Err(format!("Weston 14 isn't unpacked under {root}: run tests/vm/vm.sh setup-weston14"));
    }
    // Weston looks for its modules where Debian installs them; WESTON_MODULE_MAP points it at
    // the unpacked ones.
    let modules = [
        ("headless-backend.so", format!("{lib}/libweston-14/headless-backend.so")),
        ("gl-renderer.so", format!("{lib}/libweston-14/gl-renderer.so")),
        ("kiosk-shell.so", format!("{lib}/weston/kiosk-shell.so")),
    ];
    let map: Vec<String> = modules.iter().map(|(name, path)| format!("{name}={path}")).collect();
    let mut library_path = format!("{lib}:{lib}/weston");
    let mut env: Vec<(String, String)> = vec![("WESTON_MODULE_MAP".into(), map.join(";"))];
    if let Renderer::Gl = renderer {
        for (key, value) in mesa25()? {
            match key.as_str() {
                "LD_LIBRARY_PATH" => library_path = format!("{library_path}:{value}"),
                _ => env.push((key, value)),
            }
        }
    }
    env.push(("LD_LIBRARY_PATH".into(), library_path));
    let socket = scratch("weston14", "sock").file_name().and_then(|n| n.to_str()).ok_or("socket name")?.to_owned();
    let log = scratch("weston14", "log");
    let renderer_arg = match renderer {
        Renderer::Pixman => "--renderer=pixman",
        Renderer::Gl => "--renderer=gl",
    };
    let mut child = Command::new(&weston)
        .args(["--backend=headless", renderer_arg, "--shell=kiosk", "--no-config", "--idle-time=0"])
        .arg(format!("--width={}", SIZE.0))
        .arg(format!("--height={}", SIZE.1))
        .arg(format!("--socket={socket}"))
        .arg(format!("--log={}", log.display()))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .check("starting weston 14")?;
    let runtime = std::env::var("XDG_RUNTIME_DIR").check("XDG_RUNTIME_DIR")?;
    let ready = wait_for("weston 14's socket", || match child.try_wait() {
        Ok(Some(status)) => Ok(Err(format!("weston 14 exited ({status}): {}", read(&log)))),
        _ if Path::new(&runtime).join(&socket).exists() => Ok(Ok(())),
        _ => Err("no socket yet".into()),
    });
    let measured = match ready {
        Ok(Ok(())) => measure(child.id(), &socket, source, damage).map_err(|e| format!("{e}\nweston's log:\n{}", read(&log))),
        Ok(Err(e)) | Err(e) => Err(e),
    };
    stop(&mut child);
    let _ = std::fs::remove_file(&log);
    measured
}

fn read(file: &Path) -> String {
    std::fs::read_to_string(file).unwrap_or_default()
}

fn stop(child: &mut Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let _ = child.wait();
}

/// Runs the client against the compositor `pid` listening on `socket`: the compositor's CPU
/// time and the wall time over [`MEASURED`] frames after [`WARMUP`].
fn measure(pid: u32, socket: &str, source: Source, damage: Damage) -> Result<Measure, String> {
    let report = scratch("bench-client", "json");
    let stderr = scratch("bench-client", "log");
    let frames = (WARMUP + MEASURED + 10).to_string();
    let mut client = Command::new(me()?);
    client
        .args([CLIENT_MODE, &SIZE.0.to_string(), &SIZE.1.to_string(), "bench"])
        .env("WAYLAND_DISPLAY", socket)
        .env("COHERE_CLIENT_REPORT", &report)
        .env("COHERE_CLIENT_FRAMES", &frames)
        .env(
            "COHERE_CLIENT_SOURCE",
            match source {
                Source::Shm => "shm",
                Source::Udmabuf => "udmabuf",
            },
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).check("client log")?);
    if let Damage::Rect = damage {
        client.env("COHERE_CLIENT_FRAME_DAMAGE", "128,128");
    }
    let mut client = client.spawn().check("starting the client")?;
    let result = (|| {
        let (start_frames, start_cpu, start) = at_frame(&mut client, &report, &stderr, WARMUP, pid, None)?;
        let (end_frames, end_cpu, end) = at_frame(&mut client, &report, &stderr, WARMUP + MEASURED, pid, Some(start + WINDOW))?;
        let frames = end_frames - start_frames;
        if frames < MIN_MEASURED {
            return Err(format!("only {frames} frames presented in {} s", WINDOW.as_secs()));
        }
        Ok(Measure { cpu_per_frame: end_cpu.saturating_sub(start_cpu) / frames as u32, fps: frames as f64 / (end - start).as_secs_f64() })
    })();
    let _ = client.kill();
    let _ = client.wait();
    let _ = std::fs::remove_file(&report);
    let _ = std::fs::remove_file(&stderr);
    result
}

/// Once the client reports at least `frames` presented, or at `window_end` with what it
/// reported by then: (frames presented, the compositor's CPU time, now).
fn at_frame(
    client: &mut Child,
    report: &Path,
    stderr: &Path,
    frames: usize,
    pid: u32,
    window_end: Option<Instant>,
) -> Result<(usize, Duration, Instant), String> {
    let presented = wait_for(&format!("{frames} frames presented to the client"), || {
        if let Ok(Some(status)) = client.try_wait() {
            return Ok(Err(format!("the client exited ({status}): {}", read(stderr))));
        }
        let presented = ClientReport::read(report).map(|r| r.presented as usize);
        match presented {
            Some(n) if n >= frames || window_end.is_some_and(|end| Instant::now() >= end) => Ok(Ok(n)),
            n => Err(format!("{n:?} presented")),
        }
    })??;
    Ok((presented, cpu_time(pid)?, Instant::now()))
}

/// CPU time of every thread of process `pid` so far (schedstat, in nanoseconds).
fn cpu_time(pid: u32) -> Result<Duration, String> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).check("the compositor's threads")? {
        let path = task.check("a thread")?.path().join("schedstat");
        // A thread that ended since the listing took its time with it; the rest still count.
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        total += text.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).ok_or(format!("{}: {text:?}", path.display()))?;
    }
    Ok(Duration::from_nanos(total))
}
