//! Composition of one damaged window into a 1920x1080 output: GLES (on the EGL device this
//! machine has: llvmpipe here, the GPU elsewhere) against Pixman, and against the CPU copy of
//! the same damage, in the same run, for a full-frame update and a 10% rectangle. Each frame
//! redraws only the damage (smithay's damage tracker with buffer age 1), as cohere does.
//! Prints each case's time as a ratio of Pixman's after criterion's report.
//!
//! The window is a memory buffer here (this machine has no dma-bufs); in cohere a composited
//! dma-buf is imported once and sampled the same way.

use std::time::{Duration, Instant};

use cohere::path::cpu_copy::{copy_rects, Plane, Reads};
use criterion::{black_box, criterion_group, Criterion};
use smithay::backend::allocator::Fourcc;
use smithay::backend::renderer::damage::OutputDamageTracker;
use smithay::backend::renderer::element::memory::{MemoryRenderBuffer, MemoryRenderBufferRenderElement};
use smithay::backend::renderer::element::Kind;
use smithay::backend::renderer::gles::{GlesRenderbuffer, GlesRenderer};
use smithay::backend::renderer::pixman::PixmanRenderer;
use smithay::reexports::pixman;

type Image = pixman::Image<'static, 'static>;
use smithay::backend::renderer::{Bind, ImportMem, Offscreen, Renderer, Texture};
use smithay::utils::{Buffer, Rectangle, Size, Transform};

const W: i32 = 1920;
const H: i32 = 1080;

fn cases() -> Vec<(&'static str, Rectangle<i32, Buffer>)> {
    vec![("full frame", Rectangle::from_size((W, H).into())), ("10% rectangle", Rectangle::new((400, 300).into(), (607, 342).into()))]
}

/// One renderer drawing the window into an offscreen target, damage-limited.
struct Scene<R: Renderer, T> {
    renderer: R,
    target: T,
    tracker: OutputDamageTracker,
    window: MemoryRenderBuffer,
    frame: u8,
}

impl<R, T> Scene<R, T>
where
    R: Renderer + ImportMem + Bind<T> + Offscreen<T>,
    R::TextureId: Texture + Clone + Send + 'static,
    R::Error: std::fmt::Debug,
{
    fn new(mut renderer: R, format: Fourcc) -> Self {
        let size: Size<i32, Buffer> = (W, H).into();
        let target = renderer.create_buffer(format, size).expect("offscreen target");
        let tracker = OutputDamageTracker::new((W, H), 1.0, Transform::Normal);
        let window = MemoryRenderBuffer::new(Fourcc::Xrgb8888, (W, H), 1, Transform::Normal, None);
        Self { renderer, target, tracker, window, frame: 0 }
    }

    /// The client draws `damage` anew, then one frame is composited.
    fn frame(&mut self, damage: Rectangle<i32, Buffer>) {
        self.frame = self.frame.wrapping_add(1);
        let value = self.frame;
        let mut ctx = self.window.render();
        let _ = ctx.draw(|bytes: &mut [u8]| -> Result<Vec<Rectangle<i32, Buffer>>, ()> {
            for y in damage.loc.y..damage.loc.y + damage.size.h {
                let row = (y * W * 4) as usize;
                bytes[row + (damage.loc.x * 4) as usize..row + ((damage.loc.x + damage.size.w) * 4) as usize].fill(value);
            }
            Ok(vec![damage])
        });
        drop(ctx);
        let element =
            MemoryRenderBufferRenderElement::from_buffer(&mut self.renderer, (0.0, 0.0), &self.window, None, None, None, Kind::Unspecified)
                .expect("window texture");
        let mut framebuffer = self.renderer.bind(&mut self.target).expect("bind");
        let result = self.tracker.render_output(&mut self.renderer, &mut framebuffer, 1, &[element], [0.0, 0.0, 0.0, 1.0]).expect("render");
        let _ = result.sync.wait();
    }
}

fn gles() -> Option<GlesRenderer> {
    let candidates = cohere::backend::renderer::probe(true);
    let device = candidates.first()?;
    let egl = cohere::backend::renderer::egl_device(device)?;
    cohere::backend::renderer::gles_on(&egl).ok()
}

fn copy(src: &[u8], dst: &mut [u8], rect: Rectangle<i32, Buffer>) {
    let stride = (W * 4) as usize;
    copy_rects(&Plane { bytes: src, offset: 0, stride }, &mut Plane { bytes: dst, offset: 0, stride }, &[rect], 4, Reads::Cached);
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("composite 1920x1080");
    let mut pixman: Scene<PixmanRenderer, Image> = Scene::new(PixmanRenderer::new().expect("pixman"), Fourcc::Argb8888);
    let mut gl: Option<Scene<GlesRenderer, GlesRenderbuffer>> = gles().map(|r| Scene::new(r, Fourcc::Abgr8888));
    let src = vec![0x5au8; (W * H * 4) as usize];
    let mut dst = vec![0u8; (W * H * 4) as usize];
    for (name, rect) in cases() {
        group.bench_function(format!("pixman {name}"), |b| b.iter(|| pixman.frame(black_box(rect))));
        if let Some(gl) = gl.as_mut() {
            group.bench_function(format!("gles {name}"), |b| b.iter(|| gl.frame(black_box(rect))));
        }
        group.bench_function(format!("cpu copy {name}"), |b| b.iter(|| copy(black_box(&src), &mut dst, black_box(rect))));
    }
    group.finish();
}

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
    let mut pixman: Scene<PixmanRenderer, Image> = Scene::new(PixmanRenderer::new().expect("pixman"), Fourcc::Argb8888);
    let mut gl: Option<Scene<GlesRenderer, GlesRenderbuffer>> = gles().map(|r| Scene::new(r, Fourcc::Abgr8888));
    let gl_name = gl.as_mut().map(|s| cohere::backend::renderer::gl_renderer_string(&mut s.renderer)).unwrap_or_default();
    let src = vec![0x5au8; (W * H * 4) as usize];
    let mut dst = vec![0u8; (W * H * 4) as usize];
    println!("\nper frame, as a ratio of Pixman's time for the same damage (same run; GLES on {gl_name:?}):");
    println!("  {:<14} {:>14} {:>22} {:>22}", "damage", "pixman", "gles", "cpu copy of damage");
    for (name, rect) in cases() {
        let p = median(60, || pixman.frame(rect));
        let g = gl.as_mut().map(|gl| median(60, || gl.frame(rect)));
        let c = median(60, || copy(&src, &mut dst, rect));
        let fmt = |t: Duration| format!("{:.3} ms {:.2}x", t.as_secs_f64() * 1e3, t.as_secs_f64() / p.as_secs_f64());
        let g = g.map_or_else(|| "no EGL device".to_owned(), fmt);
        println!("  {name:<14} {:>11.3} ms {g:>22} {:>22}", p.as_secs_f64() * 1e3, fmt(c));
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratios();
}
