//! Live statistics: what the compositor is doing, as JSON data that `cohere inspect --live`,
//! monitoring and the tests read. The running compositor writes a snapshot every
//! [`INTERVAL`] (atomically: a temporary file and a rename), and a last one when it stops
//! (`running: false`, with the reason). Where:
//! - `--stats FILE` or `COHERE_STATS=FILE`: that file, kept after exit;
//! - otherwise, with a listening socket, `$XDG_RUNTIME_DIR/<socket>.cohere-stats.json`, removed
//!   when cohere exits.
//!
//! Answers "why isn't my video zero-copy?" while it plays: per-output frames, planes and
//! copies, every window with its buffer's plan, and the plan counters.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::coherency::{Access, BufferPlan, ConsumerId, Path as PlanPath};
use crate::core::OutputCounters;
use crate::State;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::wayland::compositor::with_states;
use std::sync::atomic::Ordering;

/// How often the running compositor writes a snapshot.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// The environment variable that names the stats file, like `--stats`.
pub const ENV: &str = "COHERE_STATS";

/// One snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// The compositor's process id.
    pub pid: u32,
    /// Grows by one with every snapshot written.
    pub serial: u64,
    /// `false` in the snapshot written as the compositor stopped.
    pub running: bool,
    /// Why it stopped (the last snapshot only).
    #[serde(default)]
    pub exit: Option<String>,
    /// Connected clients.
    pub clients: u64,
    /// Per output.
    pub outputs: Vec<OutputStats>,
    /// DRM devices driven (KMS only).
    pub devices: Vec<DeviceStats>,
    /// Input devices, by name, as the input backend announced them.
    pub input_devices: Vec<String>,
    /// Mapped windows, bottom to top.
    pub windows: Vec<WindowStats>,
    /// Buffers planned at import.
    pub buffers_planned: u64,
    /// Buffers refused (no consumer could show them).
    pub buffers_rejected: u64,
    /// Decisions made at import, per consumer access and path.
    pub decisions: Vec<DecisionCount>,
    /// Each live client dma-buf and its plan.
    pub live_buffers: Vec<BufferStats>,
    /// CPU copies landed and their bytes, over all surfaces.
    pub cpu_copies: u64,
    /// Bytes the CPU copies read.
    pub bytes_copied: u64,
    /// Microseconds the copy thread spent on those copies.
    #[serde(default)]
    pub cpu_copy_thread_us: u64,
    /// Microseconds their commits were held, from the commit to the copy in the shadow.
    #[serde(default)]
    pub cpu_copy_held_us: u64,
    /// Commits that waited for their buffer's acquire fence.
    pub commits_held_for_fences: u64,
    /// Commits cohere holds right now (fences, copies).
    pub commits_waiting: u64,
    /// Screenshots written (`--screenshot`, SIGUSR1).
    pub screenshots: u64,
    /// The DRM devices the coherency model knows (probed at start and after every hotplug).
    pub coherency_devices: Vec<KnownDevice>,
    /// Times the machine was probed again and every live plan recomputed (hotplug).
    pub plans_recomputed: u64,
    /// Commits of DirectWithMaintenance buffers whose caches were written back before scanout.
    pub maintenances: u64,
    /// The renderer that composites, and why it was chosen.
    pub renderer: String,
    /// Why that renderer.
    pub renderer_reason: String,
    /// Whether linux-drm-syncobj-v1 is offered, and why.
    pub explicit_sync: String,
    /// Timelines clients imported through it, and those whose syncobj handle still exists.
    pub timelines_imported: u64,
    /// Of those, the ones whose handle still exists.
    pub timelines_alive: u64,
    /// Buffers released, per path, with how long they were held.
    pub releases: Vec<ReleaseStats>,
    /// Buffers (applied commits) not released yet.
    pub buffers_held: u64,
    /// Times SIGHUP (or an embedder) reloaded the quirk database and overrides.
    #[serde(default)]
    pub config_reloads: u64,
    /// Reloads refused because a file was broken (the running configuration stayed).
    #[serde(default)]
    pub config_reload_failures: u64,
    /// Batches of cohere-buffer-path-v1 events sent (`None`: not offered).
    #[serde(default)]
    pub buffer_path_batches: Option<u64>,
}

/// Releases on one path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReleaseStats {
    /// The path.
    pub path: crate::path::release::ReleasePath,
    #[serde(flatten)]
    /// Its releases.
    pub counter: crate::path::release::ReleaseCounter,
}

/// A device as the coherency model knows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KnownDevice {
    /// The card (`card1`).
    pub card: String,
    /// Its driver.
    pub driver: String,
    /// Has displays.
    pub kms: bool,
}

/// One output's counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputStats {
    /// The output's name.
    pub name: String,
    #[serde(flatten)]
    /// Its counters.
    pub counters: OutputCounters,
}

/// A DRM device the KMS backend drives.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceStats {
    /// The card (`card1`).
    pub card: String,
    /// Its driver.
    pub driver: String,
    /// Its outputs.
    pub outputs: Vec<String>,
}

/// A mapped window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WindowStats {
    /// Its title.
    pub title: Option<String>,
    /// Its app id.
    pub app_id: Option<String>,
    /// Has keyboard focus.
    pub focused: bool,
    /// Position and size in the global space (logical pixels).
    pub geometry: (i32, i32, i32, i32),
    /// Its main (toplevel) surface.
    #[serde(flatten)]
    pub surface: SurfaceStats,
    /// Its subsurfaces (a video player's video, for example), in tree order.
    #[serde(default)]
    pub subsurfaces: Vec<SurfaceStats>,
}

/// One surface of a window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SurfaceStats {
    /// Frames (on any output) that showed this surface: on a plane or drawn.
    pub frames_shown: u64,
    /// Its current buffer, when it has one: `shm`, or a dma-buf's exporter.
    pub buffer: Option<String>,
    /// Its dma-buf's format and modifier as cohere took them (`XR24 Linear`).
    #[serde(default)]
    pub buffer_format: Option<String>,
    /// Its dma-buf's plan, when it has one.
    pub plan: Option<PlanStats>,
}

impl WindowStats {
    /// The window's surfaces, main first.
    pub fn surfaces(&self) -> impl Iterator<Item = &SurfaceStats> {
        std::iter::once(&self.surface).chain(&self.subsurfaces)
    }
}

/// (access, path) → count.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DecisionCount {
    /// Which kind of consumer.
    pub access: Access,
    /// Which path.
    pub path: PlanPath,
    /// How many decisions.
    pub count: u64,
}

/// A live client dma-buf.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BufferStats {
    /// Its exporter.
    pub exporter: String,
    /// Its plan.
    pub plan: PlanStats,
}

/// A plan as data: each consumer's path, with its label and reason for people.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlanStats {
    /// Each consumer's decision.
    pub consumers: Vec<ConsumerStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
/// One consumer's decision.
pub struct ConsumerStats {
    /// Who.
    pub consumer: ConsumerId,
    /// Its label for people.
    pub label: String,
    /// The path.
    pub path: PlanPath,
    /// Why.
    pub reason: String,
}

impl From<&BufferPlan> for PlanStats {
    fn from(plan: &BufferPlan) -> Self {
        let consumers = plan
            .consumers()
            .map(|c| ConsumerStats { consumer: c.consumer, label: c.label.clone(), path: c.path(), reason: c.decision.reason.clone() })
            .collect();
        Self { consumers }
    }
}

impl PlanStats {
    /// The path of the first consumer with `access`, e.g. the renderer's.
    pub fn path(&self, access: Access) -> Option<PlanPath> {
        self.consumers.iter().find(|c| c.consumer.access() == access).map(|c| c.path)
    }

    /// The path of the consumer labelled with `label_part` in it (tests and people look up
    /// displays by driver name this way; cohere itself never does).
    pub fn path_of(&self, label_part: &str) -> Option<PlanPath> {
        self.consumers.iter().find(|c| c.label.contains(label_part)).map(|c| c.path)
    }
}

/// Where the stats of the compositor on `socket` live when no file was named.
pub fn path_for(socket: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")?;
    Some(Path::new(&dir).join(format!("{socket}.cohere-stats.json")))
}

impl Stats {
    /// A snapshot of `state`.
    pub fn collect<B: Backend>(state: &State<B>) -> Self {
        let core = &state.core;
        let coherency = state.backend.coherency();
        let outputs = core
            .outputs()
            .map(|o| OutputStats { name: o.name(), counters: core.output_counters.get(o).copied().unwrap_or_default() })
            .collect();
        let plans = &coherency.plans;
        let focus = core.seat.get_keyboard().and_then(|k| k.current_focus());
        let windows = core.space.elements().map(|w| window_stats(core, plans, w, focus.as_ref())).collect();
        Self {
            pid: std::process::id(),
            serial: 0,
            running: true,
            exit: None,
            clients: core.clients(),
            outputs,
            devices: state.backend.device_stats(),
            input_devices: core.input_devices.clone(),
            windows,
            buffers_planned: coherency.counters.buffers,
            buffers_rejected: coherency.counters.rejected,
            decisions: coherency.counters.decisions.iter().map(|(&(access, path), &count)| DecisionCount { access, path, count }).collect(),
            live_buffers: plans.live_plans().map(|p| BufferStats { exporter: p.exporter.clone(), plan: p.into() }).collect(),
            cpu_copies: core.commits.counters.cpu_copies,
            bytes_copied: core.commits.counters.bytes_copied,
            cpu_copy_thread_us: core.commits.counters.copy_thread_us,
            cpu_copy_held_us: core.commits.counters.copy_held_us,
            commits_held_for_fences: core.commits.counters.fence_waits,
            commits_waiting: core.commits.waiting() as u64,
            screenshots: core.control.screenshots_written,
            coherency_devices: coherency
                .machine()
                .devices
                .iter()
                .map(|d| KnownDevice { card: d.name.clone(), driver: d.driver.value.clone(), kms: d.kms })
                .collect(),
            plans_recomputed: coherency.reprobes,
            maintenances: core.commits.counters.maintenances,
            renderer: coherency.machine().render_consumer().name,
            renderer_reason: coherency.machine().renderer_reason.clone().unwrap_or_default(),
            explicit_sync: match &core.syncobj {
                Some(_) => coherency.machine().explicit_sync_verdict(),
                None => format!("not offered ({})", coherency.machine().explicit_sync_verdict()),
            },
            timelines_imported: core.syncobj.as_ref().map_or(0, |s| s.timelines_imported),
            timelines_alive: core.syncobj.as_ref().map_or(0, |s| s.device().timelines_alive()),
            releases: core.commits.releases.counters.iter().map(|(&path, &counter)| ReleaseStats { path, counter }).collect(),
            buffers_held: core.commits.releases.pending() as u64,
            config_reloads: coherency.reloads,
            config_reload_failures: core.config_reload_failures,
            buffer_path_batches: core.buffer_path.as_ref().map(|b| b.batches_sent),
        }
    }

    /// Writes to `path` through a temporary file and a rename, so readers never see half.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(tmp, path)
    }

    /// Reads a snapshot `write` wrote.
    pub fn read(path: &Path) -> std::io::Result<Self> {
        serde_json::from_slice(&std::fs::read(path)?).map_err(std::io::Error::other)
    }

    /// The output named `name`.
    pub fn output(&self, name: &str) -> Option<&OutputCounters> {
        self.outputs.iter().find(|o| o.name == name).map(|o| &o.counters)
    }

    /// The first window titled `title`.
    pub fn window(&self, title: &str) -> Option<&WindowStats> {
        self.windows.iter().find(|w| w.title.as_deref() == Some(title))
    }

    /// How many decisions gave `path` to consumers with `access`.
    pub fn decisions_of(&self, access: Access, path: PlanPath) -> u64 {
        self.decisions.iter().find(|d| d.access == access && d.path == path).map_or(0, |d| d.count)
    }

    /// The text `inspect --live` prints.
    pub fn text(&self) -> String {
        let mut out = String::from("output            frames   flips  zero-copy  composited  bytes-copied  cursor-plane\n");
        for o in &self.outputs {
            let c = &o.counters;
            out += &format!(
                "{:<16} {:>7} {:>7} {:>10} {:>11} {:>13} {:>13}\n",
                o.name, c.frames, c.flips, c.zero_copy_elements, c.composited_elements, c.bytes_copied, c.cursor_plane_frames
            );
        }
        for d in &self.devices {
            out += &format!("{}: {} ({})\n", d.card, d.driver, d.outputs.join(", "));
        }
        out += &format!(
            "\ncpu copies {} ({} bytes), commits held for fences {}, commits waiting now {}\n",
            self.cpu_copies, self.bytes_copied, self.commits_held_for_fences, self.commits_waiting
        );
        out += &format!("renderer: {} ({})\n", self.renderer, self.renderer_reason);
        out += &format!("explicit sync: {}, {} timelines imported\n", self.explicit_sync, self.timelines_imported);
        out += &format!("cache maintenance before scanout: {} commits\n", self.maintenances);
        out += &format!("buffers held now {}; released:\n", self.buffers_held);
        for r in &self.releases {
            let c = &r.counter;
            let mean = c.held_total_us.checked_div(c.releases).unwrap_or(0);
            out += &format!(
                "  {:<22} {:>7} ({} by release point), held {:.1} ms on average, {:.1} ms at most\n",
                format!("{:?}", r.path),
                c.releases,
                c.release_points,
                mean as f64 / 1000.0,
                c.held_max_us as f64 / 1000.0
            );
        }
        out += &format!("\nbuffers planned {}, rejected {}\n", self.buffers_planned, self.buffers_rejected);
        for d in &self.decisions {
            out += &format!("  {:<32} {}\n", format!("{}:{}", d.access, d.path), d.count);
        }
        out += "\nwindows:\n";
        for w in &self.windows {
            let focus = if w.focused { " (focused)" } else { "" };
            out += &format!("  {:?}{focus}:\n", w.title.as_deref().unwrap_or(""));
            for s in w.surfaces() {
                let buffer = s.buffer.as_deref().unwrap_or("no buffer");
                let format = s.buffer_format.as_deref().map(|f| format!(" {f}")).unwrap_or_default();
                out += &format!("    {buffer}{format}, shown in {} frames\n", s.frames_shown);
            }
        }
        out += "\nlive buffers:\n";
        for b in &self.live_buffers {
            let paths: Vec<String> = b.plan.consumers.iter().map(|c| format!("{}: {}", c.label, c.path)).collect();
            out += &format!("  {}: {}\n", b.exporter, paths.join(", "));
        }
        out
    }
}

fn window_stats<B: Backend>(
    core: &crate::core::Core<B>,
    plans: &crate::coherency::PlanCache,
    window: &smithay::desktop::Window,
    focus: Option<&WlSurface>,
) -> WindowStats {
    let geometry = core.space.element_geometry(window).unwrap_or_default();
    let mut stats = WindowStats { geometry: (geometry.loc.x, geometry.loc.y, geometry.size.w, geometry.size.h), ..Default::default() };
    let Some(toplevel) = window.toplevel() else { return stats };
    let root = toplevel.wl_surface();
    // The tree first, then each surface on its own: looking into a surface's state inside the
    // tree walk would lock it twice.
    let mut tree = Vec::new();
    window.with_surfaces(|surface, _| tree.push(surface.clone()));
    for surface in &tree {
        let s = surface_stats(plans, surface);
        if surface == root {
            stats.surface = s;
        } else {
            stats.subsurfaces.push(s);
        }
    }
    with_states(root, |states| {
        if let Some(data) = states.data_map.get::<smithay::wayland::shell::xdg::XdgToplevelSurfaceData>() {
            let data = data.lock().unwrap_or_else(|e| e.into_inner());
            stats.title = data.title.clone();
            stats.app_id = data.app_id.clone();
        }
    });
    stats.focused = focus == Some(root);
    stats
}

fn surface_stats(plans: &crate::coherency::PlanCache, surface: &WlSurface) -> SurfaceStats {
    let frames_shown =
        with_states(surface, |states| states.data_map.get::<crate::core::FramesShown>().map_or(0, |c| c.0.load(Ordering::Relaxed)));
    let buffer = smithay::backend::renderer::utils::with_renderer_surface_state(surface, |s| s.buffer().cloned()).flatten();
    let dmabuf = buffer.as_ref().and_then(|b| smithay::wayland::dmabuf::get_dmabuf(b).ok().cloned());
    let planned = dmabuf.as_ref().and_then(|d| plans.get(d));
    let kind = match (&dmabuf, planned) {
        (Some(_), Some(plan)) => plan.exporter.clone(),
        (Some(_), None) => "dma-buf".to_owned(),
        (None, _) => "shm".to_owned(),
    };
    let buffer_format = dmabuf.as_ref().map(|d| {
        let format = smithay::backend::allocator::Buffer::format(d);
        format!("{} {:?}", format.code, format.modifier)
    });
    SurfaceStats { frames_shown, buffer: buffer.map(|_| kind), buffer_format, plan: planned.map(PlanStats::from) }
}

/// Writes a snapshot every [`INTERVAL`] and the last one at exit.
#[derive(Debug)]
pub(crate) struct StatsWriter {
    path: PathBuf,
    /// Remove the file when the compositor goes (the socket-side default); a named file stays.
    remove_at_exit: bool,
    serial: u64,
}

impl StatsWriter {
    pub(crate) fn new(path: PathBuf, remove_at_exit: bool) -> Self {
        Self { path, remove_at_exit, serial: 0 }
    }

    pub(crate) fn write(&mut self, mut stats: Stats) {
        self.serial += 1;
        stats.serial = self.serial;
        if let Err(err) = stats.write(&self.path) {
            tracing::debug!(%err, path = %self.path.display(), "stats not written");
        }
    }

    /// The last snapshot, as the compositor stops.
    pub(crate) fn finish(&mut self, mut stats: Stats, exit: String) {
        stats.running = false;
        stats.exit = Some(exit);
        self.write(stats);
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StatsWriter {
    fn drop(&mut self) {
        if self.remove_at_exit {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
