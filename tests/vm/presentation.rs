//! Presentation on KMS: each `wp_presentation_feedback.presented` carries the page flip's
//! vblank, as the kernel timestamps it, and the flags that promise so.

use std::time::Duration;

use cohere::testkit::Card;
use smithay::reexports::drm::{Device as _, VblankWaitFlags, VblankWaitTarget};
use wayland_protocols::wp::presentation_time::client::wp_presentation_feedback::Kind;

use crate::cohere::PresentedFrame;
use crate::kms::{start_with_client_report, vkms_node};
use crate::tests::{ensure, ensure_eq, Check, TestFn};

pub fn kms() -> Vec<(usize, &'static str, TestFn)> {
    vec![(1, "kms_presentation_feedback_carries_the_flips_vblank", kms_presentation_feedback_carries_the_flips_vblank)]
}

/// Frames the client commits after its first, each after the previous one's presentation.
const FRAMES: usize = 30;

/// How far a presentation time may lie from the vblank the kernel puts at its sequence number:
/// the kernel reports its own vblank times to the microsecond, and vkms's vblanks are exactly
/// one period apart. A time taken when cohere handled the flip event lands later by the event's
/// latency, which on this machine is far more than this.
const ON_THE_VBLANK: Duration = Duration::from_micros(50);

fn kms_presentation_feedback_carries_the_flips_vblank() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let node = vkms_node()?;
    let frames = FRAMES.to_string();
    let env = [("COHERE_CLIENT_FRAMES", frames.as_str())];
    let (mut cohere, _, report_file) = start_with_client_report(&["--kiosk", "--drm-device", &node], &["1024", "768"], &env)?;
    let report = cohere.wait_client(&report_file, "the client's frames presented", |r| r.frames.len() > FRAMES)?;
    // The kernel's vblank counter and time now, asked on a second opening of the card.
    let card = Card::open_driver("vkms").check("vkms")?;
    let now = card.wait_vblank(VblankWaitTarget::Relative(0), VblankWaitFlags::empty(), 0, 0).check("DRM_IOCTL_WAIT_VBLANK")?;
    let kernel = (u64::from(now.frame()), now.time().ok_or("the vblank reply has no time")?);
    let stopped = cohere.stop()?;
    ensure_eq!(stopped.status, Some(0), "exit status after SIGTERM");

    let frames = &report.frames;
    let hardware = Kind::Vsync | Kind::HwClock | Kind::HwCompletion;
    for f in frames {
        ensure!(f.flags & hardware.bits() == hardware.bits(), "flags {:#x} lack VSYNC|HW_CLOCK|HW_COMPLETION: {frames:?}", f.flags);
        // The udmabuf goes on vkms's primary plane as it is.
        ensure!(f.flags & Kind::ZeroCopy.bits() != 0, "flags {:#x} lack ZERO_COPY: {frames:?}", f.flags);
    }
    ensure!(frames.windows(2).all(|w| w[1].seq > w[0].seq && w[1].nanos > w[0].nanos), "sequence and time increase: {frames:?}");
    let (first, last) = (frames[0], frames[frames.len() - 1]);
    let period = (last.nanos - first.nanos) as f64 / (last.seq - first.seq) as f64;
    ensure!((15e6..18e6).contains(&period), "a vblank every {period} ns, not about 60 Hz: {frames:?}");
    // Every frame on the grid of vblanks that the kernel's own answer anchors.
    let (kernel_seq, kernel_time) = kernel;
    ensure!(kernel_seq >= last.seq, "the kernel's vblank counter {kernel_seq} is behind the last presentation {last:?}");
    for f in frames {
        let expected = kernel_time.as_nanos() as f64 - (kernel_seq - f.seq) as f64 * period;
        let off = (f.nanos as f64 - expected).abs();
        let tolerance = ON_THE_VBLANK.as_nanos() as f64;
        ensure!(
            off.total_cmp(&tolerance).is_le(),
            "frame {f:?} is {off:.0} ns off vblank {} (kernel: vblank {kernel_seq} at {kernel_time:?}, period {period:.0} ns)",
            f.seq
        );
    }
    report_pacing(frames);
    Ok(())
}

/// How many frames followed their predecessor on the very next vblank (printed, not asserted:
/// pacing under TCG depends on how fast the machine is).
fn report_pacing(frames: &[PresentedFrame]) {
    let consecutive = frames.windows(2).filter(|w| w[1].seq == w[0].seq + 1).count();
    eprintln!("presentation: {consecutive} of {} frames on the next vblank", frames.len().saturating_sub(1));
}

/// Benchmarks, run by name with `--ignored` (`scripts/bench-vm.sh pacing`), never by the suite.
pub fn benches() -> Vec<(&'static str, TestFn)> {
    vec![
        ("bench_pacing_direct", bench_pacing_direct),
        ("bench_pacing_cpu_copy", bench_pacing_cpu_copy),
        ("bench_pacing_cpu_copy_square", bench_pacing_cpu_copy_square),
    ]
}

/// Frames of the pacing benchmark: 10 s at 60 Hz.
const PACED_FRAMES: usize = 600;

/// A udmabuf client on vkms, each frame committed once the previous one was presented: the
/// share of frames presented on the vblank right after their predecessor's.
fn pacing(name: &str, config: &str, damage: Damage) -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let node = vkms_node()?;
    let config_file = crate::cohere::scratch("pacing", "toml");
    std::fs::write(&config_file, config).check("config")?;
    let config_arg = config_file.display().to_string();
    let frames = PACED_FRAMES.to_string();
    let mut env = vec![("COHERE_CLIENT_FRAMES", frames.as_str())];
    if let Damage::Square = damage {
        env.push(("COHERE_CLIENT_FRAME_DAMAGE", "128,128"));
    }
    let args = ["--kiosk", "--drm-device", &node, "--config", &config_arg];
    let (mut cohere, _, report_file) = start_with_client_report(&args, &["1024", "768"], &env)?;
    let report = cohere.wait_client(&report_file, "the paced frames presented", |r| r.frames.len() > PACED_FRAMES)?;
    let stopped = cohere.stop()?;
    let copies = stopped.stats.cpu_copies;
    let per_copy = |us: u64| us as f64 / 1000.0 / copies.max(1) as f64;
    let (thread_ms, held_ms) = (per_copy(stopped.stats.cpu_copy_thread_us), per_copy(stopped.stats.cpu_copy_held_us));
    let frames = &report.frames[1..];
    let consecutive = frames.windows(2).filter(|w| w[1].seq == w[0].seq + 1).count();
    let total = frames.len() - 1;
    let zero_copy = frames.iter().filter(|f| f.flags & Kind::ZeroCopy.bits() != 0).count();
    println!(
        "pacing {name}: {consecutive} of {total} frames on the next vblank ({:.1} %), {zero_copy} of {} zero-copy, {copies} cpu copies (each {thread_ms:.2} ms on the copy thread, its commit held {held_ms:.2} ms)",
        100.0 * consecutive as f64 / total as f64,
        frames.len()
    );
    Ok(())
}

/// What the client declares damaged in each frame.
#[derive(Clone, Copy)]
enum Damage {
    /// The whole 1024x768 buffer.
    Full,
    /// A 128x128 square, somewhere else each frame.
    Square,
}

/// Declared write-combined, the udmabuf is CPU-copied for Pixman before each commit applies
/// (the commit waits for its copy); vkms still scans the buffer out as it is.
const COPIED: &str = "[exporter.udmabuf]\nmemory = \"write-combined\"\n";

fn bench_pacing_direct() -> Result<(), String> {
    pacing("direct", "# the udmabuf goes on vkms's plane as it is\n", Damage::Full)
}

fn bench_pacing_cpu_copy() -> Result<(), String> {
    pacing("cpu copy, full damage", COPIED, Damage::Full)
}

fn bench_pacing_cpu_copy_square() -> Result<(), String> {
    pacing("cpu copy, 128x128 damage", COPIED, Damage::Square)
}
