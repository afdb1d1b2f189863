//! The coherency model: facts about buffers and the machine, the quirk database with user
//! overrides, and the per-consumer plan (DESIGN.md §1).
//!
//! Data flows one way: [`fdinfo`] and [`probe`](mod@probe) gather facts, [`quirks`] supplies what the
//! kernel can't tell, [`plan`](mod@plan) decides, and [`report`] prints it all for `cohere inspect`.

pub mod facts;
pub mod fdinfo;
pub mod hint;
pub mod plan;
pub mod probe;
pub mod quirks;
pub mod report;

pub use facts::{
    Access, ConsumerFacts, ConsumerId, DeviceFacts, DeviceId, ExporterFacts, Fact, MachineFacts, MemoryType, RendererFacts, Source,
};
pub(crate) use fdinfo::keep_fdinfo_dir;
pub use fdinfo::{DmabufFdInfo, FdInfoError};
pub use hint::{plan_hints, scanout_format_hint, Advice, Hint};
pub use plan::{plan, BufferPlan, ConsumerPlan, Decision, Path, Why};
pub use probe::{probe, ProbeOptions, RendererChoice};
pub use quirks::{Layer, QuirkError, Quirks};

/// Counts of decisions made at import, per consumer access and path.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PlanCounters {
    /// Buffers planned.
    pub buffers: u64,
    /// Buffers refused because no consumer could show them.
    pub rejected: u64,
    /// (access, path) → count.
    pub decisions: std::collections::BTreeMap<(Access, Path), u64>,
}

impl PlanCounters {
    /// Counts the decisions of a new plan.
    pub fn record(&mut self, plan: &BufferPlan) {
        self.buffers += 1;
        if plan.rejection().is_some() {
            self.rejected += 1;
        }
        for c in plan.consumers() {
            *self.decisions.entry((c.consumer.access(), c.path())).or_default() += 1;
        }
    }

    /// Takes back what [`PlanCounters::record`] counted for `plan` (it was planned again).
    fn unrecord(&mut self, plan: &BufferPlan) {
        self.buffers = self.buffers.saturating_sub(1);
        if plan.rejection().is_some() {
            self.rejected = self.rejected.saturating_sub(1);
        }
        for c in plan.consumers() {
            if let Some(n) = self.decisions.get_mut(&(c.consumer.access(), c.path())) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// How many decisions gave `path` to consumers with `access`.
    pub fn count(&self, access: Access, path: Path) -> u64 {
        self.decisions.get(&(access, path)).copied().unwrap_or(0)
    }
}

/// Plans of live buffers, computed once at import and recomputed only when the machine facts
/// change (hotplug). Held weakly: a buffer's entry goes when its last reference does.
#[derive(Debug, Default)]
pub struct PlanCache {
    entries: Vec<Entry>,
    verdicts: Verdicts,
    /// Each exporter's plan on the current facts, made at its first import; dropped with the
    /// entries' plans whenever those are made again ([`PlanCache::recompute`],
    /// [`PlanCache::reload`]).
    by_exporter: std::collections::HashMap<String, std::sync::Arc<Planned>>,
}

/// The plans' answers to the two questions asked where no plan cache is at hand: may the
/// renderer read this buffer itself (asked by [`crate::path::guard::Guarded`]), and may this
/// display scan it out (asked by [`crate::path::direct::ScanoutFilter`]). Buffers are known by
/// their identity, never by `Dmabuf::node()` (which smithay's MultiRenderer rewrites) or by a
/// name. A cheap handle: clones share the answers, which the [`PlanCache`] keeps current.
#[derive(Debug, Clone, Default)]
pub struct Verdicts(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<smithay::backend::allocator::dmabuf::WeakDmabuf, Verdict>>>);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Verdict {
    /// The renderer reads the buffer itself (Direct or DirectWithMaintenance).
    render_reads: bool,
    /// The displays whose planes may take it (Direct or DirectWithMaintenance).
    scanout: Vec<DeviceId>,
}

impl Verdicts {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<smithay::backend::allocator::dmabuf::WeakDmabuf, Verdict>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the renderer may import `dmabuf` and read it itself. A buffer without a plan
    /// (not a client's, or not planned by cohere) is not cohere's to refuse.
    pub fn render_may_read(&self, dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf) -> bool {
        self.lock().get(&dmabuf.weak()).map_or(true, |v| v.render_reads)
    }

    /// Whether the planes of display `device` may scan `dmabuf` out. Only planned buffers may.
    pub fn scanout_allowed(&self, dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf, device: DeviceId) -> bool {
        self.lock().get(&dmabuf.weak()).is_some_and(|v| v.scanout.contains(&device))
    }

    fn set(&self, dmabuf: &smithay::backend::allocator::dmabuf::WeakDmabuf, plan: &BufferPlan) {
        let scanout = plan
            .scanout
            .iter()
            .filter(|c| c.path().reads_buffer())
            .filter_map(|c| match c.consumer {
                ConsumerId::Scanout(d) => Some(d),
                _ => None,
            })
            .collect();
        self.lock().insert(dmabuf.clone(), Verdict { render_reads: plan.render.path().reads_buffer(), scanout });
    }

    fn prune(&self) {
        self.lock().retain(|buffer, _| buffer.upgrade().is_some());
    }
}

/// One exporter's plan on one machine, shared by every buffer from that exporter: the plan
/// is a pure function of the exporter's facts and the machine's, so buffers from the same
/// exporter share it instead of formatting the same reasons again at every import.
#[derive(Debug)]
struct Planned {
    exporter: ExporterFacts,
    plan: BufferPlan,
}

impl Planned {
    fn compute(exporter: ExporterFacts, machine: &MachineFacts) -> std::sync::Arc<Self> {
        let plan = BufferPlan::compute(&exporter, machine);
        std::sync::Arc::new(Self { exporter, plan })
    }
}

#[derive(Debug)]
struct Entry {
    buffer: smithay::backend::allocator::dmabuf::WeakDmabuf,
    planned: std::sync::Arc<Planned>,
    /// The renderer couldn't import this buffer (why): it is planned without the renderer.
    render_import_failed: Option<String>,
}

impl Entry {
    fn new(dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf, planned: std::sync::Arc<Planned>) -> Self {
        Self { buffer: dmabuf.weak(), planned, render_import_failed: None }
    }

    fn plan(&self) -> &BufferPlan {
        &self.planned.plan
    }

    /// Plans the buffer again against `machine` (with the renderer left out when it couldn't
    /// import the buffer), from `exporter`.
    fn replan(&mut self, exporter: ExporterFacts, machine: &MachineFacts) {
        self.planned = Planned::compute(exporter, &self.machine(machine));
    }

    fn machine<'a>(&self, machine: &'a MachineFacts) -> std::borrow::Cow<'a, MachineFacts> {
        match &self.render_import_failed {
            Some(why) => std::borrow::Cow::Owned(machine.without_render_import(why.clone())),
            None => std::borrow::Cow::Borrowed(machine),
        }
    }
}

impl PlanCache {
    /// Plans `dmabuf`, a buffer from `exporter`, on `machine` and keeps the plan.
    pub fn insert(&mut self, dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf, exporter: ExporterFacts, machine: &MachineFacts) {
        self.push(Entry::new(dmabuf, Planned::compute(exporter, machine)));
    }

    /// The plan of buffers from `info`'s exporter, made at the first such import since the
    /// facts last changed.
    fn planned(&mut self, info: &DmabufFdInfo, quirks: &Quirks, machine: &MachineFacts) -> std::sync::Arc<Planned> {
        if let Some(planned) = self.by_exporter.get(&info.exp_name) {
            return planned.clone();
        }
        let planned = Planned::compute(ExporterFacts::from_fdinfo(info, quirks), machine);
        self.by_exporter.insert(info.exp_name.clone(), planned.clone());
        planned
    }

    fn push(&mut self, entry: Entry) {
        self.prune();
        self.verdicts.set(&entry.buffer, entry.plan());
        self.entries.push(entry);
    }

    /// The plans' answers, for framebuffer exporters and renderers (see [`Verdicts`]).
    pub fn verdicts(&self) -> Verdicts {
        self.verdicts.clone()
    }

    fn entry_mut(&mut self, dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf) -> Option<&mut Entry> {
        let weak = dmabuf.weak();
        self.entries.iter_mut().find(|e| e.buffer == weak)
    }

    /// `dmabuf`'s plan, if it has one.
    pub fn get(&self, dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf) -> Option<&BufferPlan> {
        let weak = dmabuf.weak();
        self.entries.iter().find(|e| e.buffer == weak).map(Entry::plan)
    }

    /// `dmabuf`'s plan for the displays among `displays` only (those a compositor drives),
    /// and what the client could change about it ([`hint::plan_hints`]), when it has a plan.
    pub fn plan_for_displays(
        &self,
        dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf,
        machine: &MachineFacts,
        displays: &[DeviceId],
    ) -> Option<(BufferPlan, Vec<Advice>)> {
        let weak = dmabuf.weak();
        let entry = self.entries.iter().find(|e| e.buffer == weak)?;
        let plan = entry.plan().for_displays(displays);
        let hints = plan_hints(&entry.planned.exporter, &entry.machine(machine), &plan);
        Some((plan, hints))
    }

    /// How the renderer gets `dmabuf`'s pixels, when it has a plan.
    pub fn render_path(&self, dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf) -> Option<Path> {
        self.get(dmabuf).map(|p| p.render.path())
    }

    /// Drops entries whose buffer is gone.
    pub fn prune(&mut self) {
        self.entries.retain(|e| e.buffer.upgrade().is_some());
        self.verdicts.prune();
    }

    /// Entries, live or not yet pruned.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The buffers alive now, with their plans.
    pub fn live(&self) -> impl Iterator<Item = (smithay::backend::allocator::dmabuf::Dmabuf, &BufferPlan)> {
        self.entries.iter().filter_map(|e| Some((e.buffer.upgrade()?, e.plan())))
    }

    /// The plans of the buffers alive now.
    pub fn live_plans(&self) -> impl Iterator<Item = &BufferPlan> {
        self.entries.iter().filter(|e| e.buffer.upgrade().is_some()).map(Entry::plan)
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Recomputes every live buffer's plan against new machine facts (after hotplug).
    pub fn recompute(&mut self, machine: &MachineFacts) {
        self.prune();
        self.by_exporter.clear();
        for entry in &mut self.entries {
            entry.replan(entry.planned.exporter.clone(), machine);
            self.verdicts.set(&entry.buffer, entry.plan());
        }
    }

    /// Looks every live buffer's exporter up again in `quirks` (after a reload of the
    /// configuration), then recomputes its plan.
    pub fn reload(&mut self, machine: &MachineFacts, quirks: &Quirks) {
        self.prune();
        self.by_exporter.clear();
        for entry in &mut self.entries {
            entry.replan(ExporterFacts::lookup(entry.planned.exporter.name.clone(), quirks), machine);
            self.verdicts.set(&entry.buffer, entry.plan());
        }
    }
}

/// Where the quirk database and the user's overrides come from.
#[derive(Debug, Clone, Default)]
pub struct CoherencyOptions {
    /// Replaces the built-in database (resources/coherency.toml).
    pub quirks_file: Option<std::path::PathBuf>,
    /// The user's config file with overrides; `None` uses [`default_config_path`] if it exists.
    pub config_file: Option<std::path::PathBuf>,
}

/// `$XDG_CONFIG_HOME/cohere/config.toml` (or `~/.config/cohere/config.toml`).
pub fn default_config_path() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".config")))?;
    Some(base.join("cohere/config.toml"))
}

impl CoherencyOptions {
    /// Loads the database and overrides; any error names the file, line and field.
    pub fn load(&self) -> Result<Quirks, QuirkError> {
        let mut quirks = match &self.quirks_file {
            Some(path) => {
                let mut q = Quirks::empty();
                q.push_file(path, Layer::Database)?;
                q
            }
            None => Quirks::builtin()?,
        };
        let config = self.config_file.clone().or_else(|| default_config_path().filter(|p| p.exists()));
        if let Some(path) = config {
            quirks.push_file(&path, Layer::Override)?;
            tracing::info!(config = %path.display(), "coherency overrides loaded");
        }
        Ok(quirks)
    }
}

/// The model as a running compositor holds it: facts, overrides, cached plans and counters.
#[derive(Debug)]
pub struct CoherencyState {
    /// The quirk database with the user's overrides (replaced only by [`CoherencyState::reload`]).
    quirks: Quirks,
    /// The machine's facts (probed again only by [`CoherencyState::devices_changed`] and
    /// [`CoherencyState::reload`], which plan every buffer again: what keeps the plans true).
    machine: MachineFacts,
    /// The plans of live buffers.
    pub plans: PlanCache,
    /// Decisions made at import.
    pub counters: PlanCounters,
    /// Times [`CoherencyState::devices_changed`] probed again.
    pub reprobes: u64,
    /// Times [`CoherencyState::reload`] took a new configuration.
    pub reloads: u64,
    probe_options: ProbeOptions,
}

impl CoherencyState {
    /// Probes the machine (see [`ProbeOptions`]) with `quirks`.
    pub fn new(quirks: Quirks, probe_options: &ProbeOptions) -> Self {
        let machine = probe(probe_options, &quirks);
        Self::log_facts(&machine);
        Self {
            quirks,
            machine,
            plans: PlanCache::default(),
            counters: PlanCounters::default(),
            reprobes: 0,
            reloads: 0,
            probe_options: probe_options.clone(),
        }
    }

    /// The machine's facts.
    pub fn machine(&self) -> &MachineFacts {
        &self.machine
    }

    /// The quirk database with the user's overrides.
    pub fn quirks(&self) -> &Quirks {
        &self.quirks
    }

    /// The devices changed (hotplug): probe the machine again and recompute the plan of every
    /// live buffer against the new facts.
    pub fn devices_changed(&mut self) {
        self.machine = probe(&self.probe_options, &self.quirks);
        Self::log_facts(&self.machine);
        self.plans.recompute(&self.machine);
        self.reprobes += 1;
        tracing::info!(buffers = self.plans.len(), "plans recomputed after a device change");
    }

    /// A new quirk database and overrides: probe the machine again with them, look every live
    /// buffer's exporter up again and recompute its plan.
    pub fn reload(&mut self, quirks: Quirks) {
        self.quirks = quirks;
        self.machine = probe(&self.probe_options, &self.quirks);
        Self::log_facts(&self.machine);
        self.plans.reload(&self.machine, &self.quirks);
        self.reloads += 1;
        tracing::info!(buffers = self.plans.len(), "plans recomputed with the reloaded configuration");
    }

    fn log_facts(machine: &MachineFacts) {
        for d in &machine.devices {
            tracing::info!(
                card = %d.name, driver = %d.driver.value, render_snoops = %d.render_snoops, scanout_snoops = %d.scanout_snoops,
                imports_foreign = %d.imports_foreign, "coherency facts"
            );
        }
    }

    /// Plans a newly imported buffer and caches the plan; `Err(reason)` when no consumer can
    /// show it, which becomes `failed` for the client.
    pub fn plan_import(&mut self, dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf) -> Result<&BufferPlan, String> {
        let fd = dmabuf.handles().next().ok_or("a dma-buf without planes")?;
        let info = DmabufFdInfo::read(fd).map_err(|e| e.to_string())?;
        let planned = self.planned(&info);
        let plan = &planned.plan;
        self.counters.record(plan);
        // Formatting the reasons costs more than planning: only when someone reads them.
        if tracing::enabled!(tracing::Level::DEBUG) {
            let format = smithay::backend::allocator::Buffer::format(dmabuf);
            let reasons: Vec<String> = plan.decisions().map(|(c, d)| format!("{c}: {d}")).collect();
            tracing::debug!(
                exporter = %info.exp_name, size = info.size, fourcc = %format.code, modifier = ?format.modifier,
                plan = %plan, reasons = %reasons.join("; "), "buffer plan"
            );
        }
        if let Some(why) = plan.rejection() {
            return Err(why);
        }
        self.plans.push(Entry::new(dmabuf, planned));
        self.plans.get(dmabuf).ok_or_else(|| "plan cache lost the entry".into())
    }

    /// The plan of buffers from `info`'s exporter on these facts.
    fn planned(&mut self, info: &DmabufFdInfo) -> std::sync::Arc<Planned> {
        self.plans.planned(info, &self.quirks, &self.machine)
    }

    /// The renderer couldn't import `dmabuf` (`why`): plans it again without the renderer,
    /// which gives a CPU copy where the CPU can map the buffer. `Err` when no consumer can show
    /// it then.
    pub fn render_cannot_import(
        &mut self,
        dmabuf: &smithay::backend::allocator::dmabuf::Dmabuf,
        why: String,
    ) -> Result<&BufferPlan, String> {
        let machine = &self.machine;
        let Some(entry) = self.plans.entry_mut(dmabuf) else { return Err("the buffer has no plan".into()) };
        entry.render_import_failed = Some(why);
        let old = entry.planned.clone();
        entry.replan(old.exporter.clone(), machine);
        let plan = entry.plan().clone();
        let buffer = entry.buffer.clone();
        self.plans.verdicts.set(&buffer, &plan);
        self.counters.unrecord(&old.plan);
        self.counters.record(&plan);
        tracing::debug!(plan = %plan, "buffer planned again: the renderer can't import it");
        match plan.rejection() {
            Some(why) => Err(why),
            None => self.plans.get(dmabuf).ok_or_else(|| "plan cache lost the entry".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smithay::backend::allocator::dmabuf::{Dmabuf, DmabufFlags};
    use smithay::backend::allocator::{Fourcc, Modifier};

    fn vm(quirks: &Quirks) -> MachineFacts {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs/vm");
        probe(&ProbeOptions::sysfs(root, RendererChoice::Cpu("pixman".into())), quirks)
    }

    fn scanout_vkms(plan: &BufferPlan) -> Path {
        // card1 is vkms in the VM fixture (sysfs dev 226:1).
        plan.scanout_path(DeviceId(rustix::fs::makedev(226, 1))).unwrap_or(Path::Reject)
    }

    #[test]
    fn cached_plans_are_recomputed_when_facts_change_and_dropped_with_their_buffer() {
        let quirks = Quirks::builtin().unwrap();
        let memfd = rustix::fs::memfd_create("plan", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let mut builder = Dmabuf::builder((16, 16), Fourcc::Xrgb8888, Modifier::Linear, DmabufFlags::empty());
        builder.add_plane(memfd, 0, 0, 64);
        let dmabuf = builder.build().unwrap();
        let exporter = ExporterFacts::lookup(Fact::new("udmabuf".into(), Source::Fdinfo), &quirks);
        let mut cache = PlanCache::default();
        cache.insert(&dmabuf, exporter, &vm(&quirks));
        assert_eq!(scanout_vkms(cache.get(&dmabuf).unwrap()), Path::Direct);

        // The same machine, but vkms now known not to snoop (as after a hotplug re-probe).
        let mut changed = Quirks::builtin().unwrap();
        changed.push("o.toml", "[driver.vkms]\nscanout_snoops = false\n", Layer::Override).unwrap();
        cache.recompute(&vm(&changed));
        assert_eq!(scanout_vkms(cache.get(&dmabuf).unwrap()), Path::DirectWithMaintenance);

        drop(dmabuf);
        cache.prune();
        assert!(cache.is_empty(), "a buffer's plan goes with the buffer");
    }

    #[test]
    fn exporter_plans_are_shared_until_the_facts_change() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs/vm");
        let options = ProbeOptions::sysfs(root, RendererChoice::Cpu("pixman".into()));
        let mut state = CoherencyState::new(Quirks::builtin().unwrap(), &options);
        let info = |exp_name: &str| DmabufFdInfo { size: 4096, count: 1, exp_name: exp_name.into(), name: None };
        let vkms = DeviceId(rustix::fs::makedev(226, 1));

        let first = state.planned(&info("udmabuf"));
        assert!(std::sync::Arc::ptr_eq(&first, &state.planned(&info("udmabuf"))), "one exporter, one plan");
        assert!(!std::sync::Arc::ptr_eq(&first, &state.planned(&info("system"))), "each exporter its own");
        assert_eq!(first.plan.scanout_path(vkms), Some(Path::Direct));

        // New overrides: buffers imported from now on are planned with them.
        let mut changed = Quirks::builtin().unwrap();
        changed.push("o.toml", "[driver.vkms]\nscanout_snoops = false\n", Layer::Override).unwrap();
        state.reload(changed);
        let reloaded = state.planned(&info("udmabuf"));
        assert_eq!(reloaded.plan.scanout_path(vkms), Some(Path::DirectWithMaintenance));

        // A device change probes again, and plans again.
        state.devices_changed();
        assert!(!std::sync::Arc::ptr_eq(&reloaded, &state.planned(&info("udmabuf"))), "a re-probe plans again");
    }
}
