//! Import cost, a benchmark run by name (`scripts/bench-vm.sh import`), never by the suite: one
//! real udmabuf imported again and again over linux-dmabuf (`create_immed`, then a
//! `wl_display.sync` round trip), once through cohere's params validation and plan
//! (`ImportState` with `CoherencyState::plan_import` as the import hook, as an embedder without
//! a renderer writes it), once through smithay 0.7's own linux-dmabuf (`DmabufState`, whose
//! handler accepts every buffer). Same process, same client code, same socket kind, batches
//! interleaved so both sides see the same machine. It prints the time per import and the ratio;
//! it asserts only that every import succeeded on both sides, so the figures are for buffers
//! that really were created (and, for cohere, planned).

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohere::coherency::{CoherencyOptions, CoherencyState, ProbeOptions, RendererChoice};
use cohere::import::{ImportConfig, ImportHandler, ImportRejected, ImportState};
use cohere::testkit::udmabuf;
use smithay::backend::allocator::dmabuf::{Dmabuf, DmabufFlags};
use smithay::backend::allocator::{Fourcc, Modifier};
use smithay::reexports::wayland_server::backend::{ClientData, ClientId, DisconnectReason};
use smithay::reexports::wayland_server::protocol::wl_buffer::WlBuffer;
use smithay::reexports::wayland_server::Display;
use smithay::wayland::buffer::BufferHandler;

use crate::import_tests::harness::{self, Client, Flags};
use crate::tests::{ensure_eq, Check, TestFn};

pub fn benches() -> Vec<(&'static str, TestFn)> {
    vec![("bench_import_cost", bench_import_cost)]
}

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
/// Imports per timed batch, and batches per side.
const BATCH: u32 = 200;
const BATCHES: usize = 9;

/// cohere's side: validation in `ImportState`, then the hook.
struct CohereSide {
    import: ImportState,
    coherency: CoherencyState,
    hook: Hook,
    /// Time spent in the hook, over every import.
    in_hook: Duration,
}

/// What cohere's import hook does after validation.
#[derive(Clone, Copy)]
enum Hook {
    /// Plans the buffer (what cohere does).
    Plan,
    /// Accepts it, to show what validation alone costs.
    Accept,
}

impl BufferHandler for CohereSide {
    fn buffer_destroyed(&mut self, _: &WlBuffer) {}
}

impl ImportHandler for CohereSide {
    fn import_state(&mut self) -> &mut ImportState {
        &mut self.import
    }
    fn import_buffer(&mut self, dmabuf: &Dmabuf) -> Result<(), ImportRejected> {
        let start = Instant::now();
        let result = match self.hook {
            Hook::Plan => self.coherency.plan_import(dmabuf).map(|_| ()).map_err(ImportRejected),
            Hook::Accept => Ok(()),
        };
        self.in_hook += start.elapsed();
        result
    }
}

cohere::delegate_import!(CohereSide);

/// smithay's own linux-dmabuf, the baseline.
mod smithay_side {
    use smithay::backend::allocator::dmabuf::Dmabuf;
    use smithay::reexports::wayland_server::protocol::wl_buffer::WlBuffer;
    use smithay::wayland::buffer::BufferHandler;
    use smithay::wayland::dmabuf::{DmabufGlobal, DmabufHandler, DmabufState, ImportNotifier};

    pub struct SmithaySide {
        pub dmabuf: DmabufState,
        pub imported: u64,
    }

    impl BufferHandler for SmithaySide {
        fn buffer_destroyed(&mut self, _: &WlBuffer) {}
    }

    impl DmabufHandler for SmithaySide {
        fn dmabuf_state(&mut self) -> &mut DmabufState {
            &mut self.dmabuf
        }
        fn dmabuf_imported(&mut self, _: &DmabufGlobal, _: Dmabuf, notifier: ImportNotifier) {
            self.imported += 1;
            let _ = notifier.successful::<SmithaySide>();
        }
    }

    smithay::delegate_dmabuf!(SmithaySide);
}
use smithay_side::SmithaySide;

struct NoData;
impl ClientData for NoData {
    fn initialized(&self, _: ClientId) {}
    fn disconnected(&self, _: ClientId, _: DisconnectReason) {}
}

/// One server with one connected client.
struct Bench<S: 'static> {
    display: Display<S>,
    state: S,
    client: Client,
}

impl<S: 'static> Bench<S> {
    fn connect(display: Display<S>, state: S) -> Result<Self, String> {
        let (server, client) = UnixStream::pair().check("socket pair")?;
        display.handle().insert_client(server, Arc::new(NoData)).check("insert client")?;
        let mut bench = Bench { display, state, client: Client::new(client) };
        bench.roundtrip()?;
        let (name, _) = bench.client.state.global.ok_or("no zwp_linux_dmabuf_v1 global")?;
        bench.client.dmabuf = Some(bench.client.registry.bind(name, 3, &bench.client.qh, ()));
        bench.roundtrip()?;
        Ok(bench)
    }

    /// wl_display.sync, pumping both sides until it is answered.
    fn roundtrip(&mut self) -> Result<(), String> {
        let done = self.client.state.syncs;
        let _cb = self.client.conn.display().sync(&self.client.qh, ());
        for _ in 0..1000 {
            let _ = self.client.conn.flush();
            self.display.dispatch_clients(&mut self.state).check("server dispatch")?;
            self.display.flush_clients().check("server flush")?;
            self.client.read();
            if let Some(err) = self.client.error() {
                return Err(format!("protocol error: {err:?}"));
            }
            if self.client.state.syncs > done {
                return Ok(());
            }
        }
        Err("a wl_display.sync was never answered".into())
    }

    /// `count` imports of `fd`, each answered before the next: the time per import.
    fn imports(&mut self, fd: std::os::fd::BorrowedFd<'_>, count: u32) -> Result<Duration, String> {
        let start = Instant::now();
        for _ in 0..count {
            let params = self.client.params(0);
            harness::add(&params, fd, 0, 0, WIDTH * 4, 0);
            let buffer = params.create_immed(WIDTH as i32, HEIGHT as i32, Fourcc::Xrgb8888 as u32, Flags::empty(), &self.client.qh, ());
            params.destroy();
            buffer.destroy();
            self.roundtrip()?;
        }
        Ok(start.elapsed() / count)
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn bench_import_cost() -> Result<(), String> {
    let buffer = udmabuf((WIDTH * HEIGHT * 4) as usize).check("udmabuf")?;
    let fd = buffer.as_fd();

    let mut cohere = cohere_side(Hook::Plan)?;
    let mut validation = cohere_side(Hook::Accept)?;

    let display = Display::<SmithaySide>::new().check("display")?;
    let mut state = SmithaySide { dmabuf: smithay::wayland::dmabuf::DmabufState::new(), imported: 0 };
    let _global = state.dmabuf.create_global::<SmithaySide>(&display.handle(), harness::test_formats());
    let mut smithay = Bench::connect(display, state)?;

    // Warm both up (allocations, page faults), then interleave the timed batches.
    cohere.imports(fd, BATCH)?;
    validation.imports(fd, BATCH)?;
    smithay.imports(fd, BATCH)?;
    let (mut ours, mut validated, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..BATCHES {
        ours.push(cohere.imports(fd, BATCH)?);
        validated.push(validation.imports(fd, BATCH)?);
        theirs.push(smithay.imports(fd, BATCH)?);
    }
    let imports = u64::from(BATCH) * (BATCHES as u64 + 1);
    let planned = cohere.state.coherency.counters.buffers;
    ensure_eq!(planned, imports, "buffers cohere planned");
    ensure_eq!(cohere.state.coherency.counters.rejected, 0, "buffers cohere refused");
    ensure_eq!(smithay.state.imported, imports, "buffers smithay imported");
    ensure_eq!(cohere.client.state.failed.len(), 0, "cohere's failed answers");

    let in_hook = cohere.state.in_hook / imports as u32;
    let (fdinfo, plan) = parts(&buffer, &mut cohere.state.coherency)?;
    let (ours, validated, theirs) = (median(ours), median(validated), median(theirs));
    println!(
        "import cost: cohere {:.1} us, smithay {:.1} us per buffer (create_immed and a round trip, median of {BATCHES} batches of {BATCH}): {:.2}x",
        ours.as_secs_f64() * 1e6,
        theirs.as_secs_f64() * 1e6,
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
    println!(
        "  cohere's validation alone (the hook accepts without a plan): {:.1} us, {:.2}x",
        validated.as_secs_f64() * 1e6,
        validated.as_secs_f64() / theirs.as_secs_f64()
    );
    println!("  of cohere's: the hook that plans, as it ran in those imports: {:.1} us", in_hook.as_secs_f64() * 1e6);
    println!(
        "  of cohere's: the plan {:.1} us, of which reading the fd's fdinfo (its exporter) {:.1} us",
        plan.as_secs_f64() * 1e6,
        fdinfo.as_secs_f64() * 1e6
    );
    Ok(())
}

fn cohere_side(hook: Hook) -> Result<Bench<CohereSide>, String> {
    let display = Display::<CohereSide>::new().check("display")?;
    let config = ImportConfig { formats: harness::test_formats(), main_device: None, implicit_modifier: Default::default() };
    let import = ImportState::new::<CohereSide>(&display.handle(), config).check("cohere's linux-dmabuf")?;
    let quirks = CoherencyOptions::default().load().check("the built-in quirk database")?;
    let coherency = CoherencyState::new(quirks, &ProbeOptions::live(RendererChoice::Cpu("pixman".into())));
    Bench::connect(display, CohereSide { import, coherency, hook, in_hook: Duration::ZERO })
}

/// What two parts of cohere's import cost on their own, per buffer: reading the fd's fdinfo,
/// and `plan_import` of a ready `Dmabuf`.
fn parts(buffer: &cohere::testkit::MappedDmabuf, coherency: &mut CoherencyState) -> Result<(Duration, Duration), String> {
    let mut fdinfo = Vec::new();
    let mut plan = Vec::new();
    for _ in 0..BATCHES {
        let start = Instant::now();
        for _ in 0..BATCH {
            cohere::coherency::DmabufFdInfo::read(buffer.as_fd()).check("fdinfo")?;
        }
        fdinfo.push(start.elapsed() / BATCH);
        let mut dmabufs = Vec::new();
        for _ in 0..BATCH {
            let fd = buffer.fd.try_clone().check("dup")?;
            let mut builder = Dmabuf::builder((WIDTH as i32, HEIGHT as i32), Fourcc::Xrgb8888, Modifier::Linear, DmabufFlags::empty());
            builder.add_plane(fd, 0, 0, WIDTH * 4);
            dmabufs.push(builder.build().ok_or("a dmabuf")?);
        }
        let start = Instant::now();
        for dmabuf in &dmabufs {
            coherency.plan_import(dmabuf)?;
        }
        plan.push(start.elapsed() / BATCH);
    }
    Ok((median(fdinfo), median(plan)))
}
