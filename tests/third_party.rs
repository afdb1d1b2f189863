//! Real third-party clients (Debian's weston and wayland-utils packages) against the real
//! `cohere` binary, checked by what wayland-info reports and by screenshot pixels.

#[path = "common/cohere.rs"]
#[allow(dead_code)]
mod cohere;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::cohere::Cohere;

fn runtime_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cohere-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    dir
}

fn cohere(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cohere"))
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime_dir())
        .env_remove("WAYLAND_DISPLAY")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("cohere runs")
}

fn require(tool: &str) {
    let found = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false);
    assert!(found, "{tool} is not installed: the README's setup installs it (weston / wayland-utils)");
}

struct Png {
    width: u32,
    height: u32,
    rgba: Vec<u8>,
}

impl Png {
    /// A screenshot of cohere's primary output, taken once `title`'s window was part of a
    /// frame; cohere is stopped afterwards.
    fn of_window(args: &[&str], app: &[&str], title: &str) -> Result<Png, String> {
        let path = cohere::scratch("shot", "png");
        let path_arg = path.to_str().ok_or("path")?;
        let mut all = args.to_vec();
        all.extend(["--screenshot", path_arg, "--after-frames", "0"]);
        let dir = runtime_dir();
        let mut cohere = Cohere::start(&all, app, &[("XDG_RUNTIME_DIR", dir.to_str().ok_or("dir")?), ("RUST_LOG", "warn")])?;
        cohere.wait(&format!("window {title:?} shown"), |s| s.window(title).is_some_and(|w| w.surface.frames_shown >= 1))?;
        let (width, height, rgba) = cohere.screenshot(&path)?;
        let stopped = cohere.stop()?;
        let _ = std::fs::remove_file(&path);
        if stopped.status != Some(0) {
            return Err(format!("cohere exit {:?} after SIGTERM:\n{}", stopped.status, stopped.log));
        }
        Ok(Png { width, height, rgba })
    }

    fn px(&self, x: u32, y: u32) -> [u8; 4] {
        let i = ((y * self.width + x) * 4) as usize;
        self.rgba[i..i + 4].try_into().unwrap()
    }
    /// Bounding box (x0, y0, x1, y1 exclusive) of pixels that are not `background`.
    fn content_box(&self, background: [u8; 4]) -> (u32, u32, u32, u32) {
        let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
        for y in 0..self.height {
            for x in 0..self.width {
                if self.px(x, y) != background {
                    x0 = x0.min(x);
                    y0 = y0.min(y);
                    x1 = x1.max(x + 1);
                    y1 = y1.max(y + 1);
                }
            }
        }
        (x0, y0, x1, y1)
    }
    fn distinct_colors(&self, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> usize {
        let mut set = std::collections::HashSet::new();
        for y in y0..y1 {
            for x in x0..x1 {
                set.insert(self.px(x, y));
            }
        }
        set.len()
    }
}

const BLACK: [u8; 4] = [0, 0, 0, 255];
const DESKTOP: [u8; 4] = [0x14, 0x17, 0x1c, 255];

#[test]
fn wayland_info_lists_every_global() {
    require("wayland-info");
    let out = cohere(&["--headless", "--kiosk", "--socket", "cohere-test-info", "--", "wayland-info"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "status {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("WAYLAND_DISPLAY=cohere-test-info\n"), "socket name printed first: {stdout:.80}");
    for iface in [
        "wl_compositor",
        "wl_subcompositor",
        "wl_shm",
        "xdg_wm_base",
        "zxdg_decoration_manager_v1",
        "wl_output",
        "zxdg_output_manager_v1",
        "wl_seat",
        "wp_presentation",
        "wp_viewporter",
        "zwp_linux_dmabuf_v1",
    ] {
        assert!(stdout.contains(&format!("interface: '{iface}',")), "wayland-info does not list {iface}:\n{stdout}");
    }
    // wayland-info also describes the output and the seat it found.
    assert!(stdout.contains("width: 1280 px, height: 720 px, refresh: 60.000 Hz"), "{stdout}");
    assert!(stdout.contains("capabilities: pointer keyboard"), "{stdout}");
}

#[test]
fn several_outputs_are_advertised_side_by_side() {
    require("wayland-info");
    let out = cohere(&[
        "--headless",
        "--kiosk",
        "--socket",
        "cohere-test-outputs",
        "--size",
        "640x480",
        "--size",
        "320x200",
        "--refresh",
        "50",
        "--",
        "wayland-info",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.matches("interface: 'wl_output',").count(), 2, "{stdout}");
    assert!(stdout.contains("width: 640 px, height: 480 px, refresh: 50.000 Hz"), "{stdout}");
    assert!(stdout.contains("width: 320 px, height: 200 px, refresh: 50.000 Hz"), "{stdout}");
    // xdg-output: the second output sits to the right of the first.
    assert!(stdout.contains("logical_x: 640, logical_y: 0"), "{stdout}");
}

#[test]
fn weston_simple_shm_kiosk_is_centred_fullscreen() -> Result<(), String> {
    require("weston-simple-shm");
    let png = Png::of_window(&["--headless", "--kiosk"], &["weston-simple-shm"], "simple-shm")?;
    assert_eq!((png.width, png.height), (1280, 720));
    // weston-simple-shm ignores the configured size and stays 250x250; xdg-shell says such a
    // fullscreen surface is centred on its output over a fill, which kiosk mode makes black.
    let bbox = png.content_box(BLACK);
    assert_eq!(bbox, (515, 235, 765, 485), "window centred on black");
    assert!(png.distinct_colors(bbox) > 200, "the client's colour pattern is inside the window");
    Ok(())
}

#[test]
fn weston_simple_shm_desktop_at_own_size() -> Result<(), String> {
    require("weston-simple-shm");
    for renderer in ["pixman", "gles"] {
        let png = Png::of_window(&["--headless", "--desktop", "--renderer", renderer], &["weston-simple-shm"], "simple-shm")?;
        // Title bar (24 px) then the 250x250 window at the first cascade slot.
        assert_eq!(png.content_box(DESKTOP), (32, 32, 282, 306), "{renderer}");
        for x in [32, 100, 281] {
            assert_eq!(png.px(x, 40), [0x33, 0x66, 0xbf, 255], "{renderer}: focused title bar at {x}");
        }
        assert!(png.distinct_colors((32, 56, 282, 306)) > 200, "{renderer}: client pattern");
    }
    Ok(())
}

#[test]
fn kiosk_exits_with_the_app_status() {
    let out = cohere(&["--headless", "--kiosk", "--socket", "cohere-test-exit", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let out = cohere(&["--headless", "--kiosk", "--socket", "cohere-test-exit0", "--", "true"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn bad_invocations_fail_clearly() {
    let out = cohere(&["--headless", "--size", "0x10"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 is outside 1..=16384"));

    let out = cohere(&["--headless", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));

    let out = cohere(&["--headless", "--screenshot", "/nonexistent-dir/shot.png", "--exit-after-frames", "100"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot write screenshot /nonexistent-dir/shot.png"), "{err}");

    // A second compositor on a socket name in use is refused, while the first keeps running.
    let mut first = Command::new(env!("CARGO_BIN_EXE_cohere"))
        .args(["--headless", "--socket", "cohere-test-busy"])
        .env("XDG_RUNTIME_DIR", runtime_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(first.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line, "WAYLAND_DISPLAY=cohere-test-busy\n");
    let out = cohere(&["--headless", "--socket", "cohere-test-busy", "--exit-after-frames", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("socket \"cohere-test-busy\": Requested socket name is already in use"), "{err}");
    assert_eq!(first.try_wait().unwrap(), None, "the first compositor is unaffected");
    first.kill().unwrap();
    first.wait().unwrap();
}

/// examples/embed.rs, a compositor of its own that embeds cohere, shows weston-simple-shm: its
/// window (drawn at the top left, at the client's own 250x250) is on the screenshot.
#[test]
fn the_embedding_example_shows_weston_simple_shm() -> Result<(), String> {
    require("weston-simple-shm");
    let dir = runtime_dir();
    let (status, text, (w, h, rgba)) =
        cohere::run_embed_example(&["weston-simple-shm"], &[("XDG_RUNTIME_DIR", dir.to_str().ok_or("dir")?)])?;
    assert_eq!(status, Some(0), "the example's exit status: {text}");
    assert!(text.contains("frames "), "{text}");
    assert_eq!((w, h), (320, 240));
    // The example clears to 0.1 gray (25): count the window's pixels (those on the 240-row
    // output) that aren't that.
    let clear = [25u8, 25, 25];
    let drawn = (0..h).flat_map(|y| (0..250u32).map(move |x| (x, y))).filter(|&(x, y)| {
        let i = ((y * w + x) * 4) as usize;
        rgba[i..i + 3] != clear
    });
    let count = drawn.count() as u32;
    assert!(count > 250 * h * 9 / 10, "only {count} of the window's pixels are the client's");
    // And right of the window, the clear colour.
    let i = ((100 * w + 300) * 4) as usize;
    assert_eq!(rgba[i..i + 3], clear, "the background");
    Ok(())
}
