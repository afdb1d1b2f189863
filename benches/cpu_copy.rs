//! The CpuCopy executor's copy of damage (one pass, from the client's buffer straight into the
//! shadow, as the copy thread does it) against memcpy of a whole frame, the baseline measured in
//! the same run. A 1920x1080 XRGB8888 frame: the whole frame as one rectangle, a 10% rectangle
//! (a video in a window), and 64 scattered 32x32 tiles (a terminal). Prints each case's time as
//! a ratio of the memcpy baseline after criterion's own report, with plain loads (cached
//! sources) and with the streaming loads used for write-combined or uncached sources.
//!
//! The source here is ordinary cached memory (this machine can't make write-combined memory
//! without a device); in cohere it is a SYNC-bracketed mapping of the client's dma-buf, whose
//! cost on uncached memory is the reason to copy only the damage.

use std::time::{Duration, Instant};

use cohere::path::cpu_copy::{copy_rects, Plane, Reads};
use criterion::{black_box, criterion_group, Criterion};
use smithay::utils::{Buffer, Rectangle};

const W: usize = 1920;
const H: usize = 1080;
const CPP: usize = 4;

fn cases() -> Vec<(&'static str, Vec<Rectangle<i32, Buffer>>)> {
    let full = vec![Rectangle::from_size((W as i32, H as i32).into())];
    let tenth = vec![Rectangle::new((400, 300).into(), (607, 342).into())];
    let tiles = (0..64).map(|i| Rectangle::new(((i % 16) * 112 + 8, (i / 16) * 256 + 16).into(), (32, 32).into())).collect();
    vec![("full frame", full), ("10% rectangle", tenth), ("64 tiles 32x32", tiles)]
}

/// The copy thread's work for one commit: `rects` of `src` into the shadow `dst`.
fn copy(src: &[u8], dst: &mut [u8], rects: &[Rectangle<i32, Buffer>], reads: Reads) -> u64 {
    let mut dst = Plane { bytes: dst, offset: 0, stride: W * CPP };
    copy_rects(&Plane { bytes: src, offset: 0, stride: W * CPP }, &mut dst, rects, CPP, reads)
}

fn bench(c: &mut Criterion) {
    let src: Vec<u8> = (0..W * H * CPP).map(|i| (i * 7 % 251) as u8).collect();
    let mut dst = vec![0u8; W * H * CPP];
    let mut group = c.benchmark_group("cpu_copy 1920x1080");
    group.bench_function("memcpy whole frame (baseline)", |b| b.iter(|| dst.copy_from_slice(black_box(&src))));
    for (name, rects) in cases() {
        group.bench_function(name, |b| b.iter(|| copy(black_box(&src), &mut dst, black_box(&rects), Reads::Cached)));
    }
    group.finish();
}

/// Median time of `f` over `runs` runs.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn ratios() {
    let src: Vec<u8> = (0..W * H * CPP).map(|i| (i * 7 % 251) as u8).collect();
    let mut dst = vec![0u8; W * H * CPP];
    let baseline = median(200, || dst.copy_from_slice(black_box(&src)));
    println!("\nratios to memcpy of the whole frame ({:.3} ms), same run:", baseline.as_secs_f64() * 1e3);
    println!("  {:<16} {:>9}  {:>18}  {:>18}", "damage", "bytes", "plain loads", "streaming loads");
    let ratio = |t: Duration| format!("{:.3} ms {:.3}x", t.as_secs_f64() * 1e3, t.as_secs_f64() / baseline.as_secs_f64());
    for (name, rects) in cases() {
        let mut bytes = 0;
        let plain = median(200, || bytes = copy(black_box(&src), &mut dst, black_box(&rects), Reads::Cached));
        let streaming = median(200, || bytes = copy(black_box(&src), &mut dst, black_box(&rects), Reads::Streaming));
        println!("  {name:<16} {bytes:>9}  {:>18}  {:>18}", ratio(plain), ratio(streaming));
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratios();
}
