//! The coherency model on fixture machines (tests/fixtures/sysfs, made by make_sysfs.py):
//! every machine × buffer source gets its path and reason asserted, the plan's invariants hold
//! for arbitrary facts, and bad quirk or config files stop cohere with file, line and field.

use std::path::PathBuf;
use std::process::Command;

use cohere::coherency::{
    plan, probe, report::Report, BufferPlan, ConsumerFacts, ConsumerId, ConsumerPlan, DeviceId, ExporterFacts, Fact, MachineFacts,
    MemoryType, Path, PlanCounters, ProbeOptions, Quirks, RendererChoice, RendererFacts, Source, Why,
};
use cohere::coherency::{plan_hints, Hint};
use proptest::prelude::*;

fn fixture(machine: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs").join(machine)
}

fn machine(name: &str, renderer: RendererChoice) -> MachineFacts {
    let quirks = Quirks::builtin().expect("database");
    probe(&ProbeOptions::sysfs(fixture(name), renderer), &quirks)
}

/// The machine as cohere would run on it: its GPU renders, except in the VM, where cohere
/// renders with pixman.
fn natural(name: &str) -> MachineFacts {
    let renderer = if name == "vm" { RendererChoice::Cpu("pixman".into()) } else { RendererChoice::FirstRenderDevice };
    machine(name, renderer)
}

const SOURCES: [&str; 5] = ["udmabuf", "system", "drm", "videobuf2_vmalloc", "videobuf2_dma_contig"];

/// "exporter | consumer | path | why | reason" for every source on `machine`, then the hints
/// for the client.
fn table(name: &str) -> String {
    let quirks = Quirks::builtin().expect("database");
    let m = natural(name);
    let mut rows = Vec::new();
    for exporter in SOURCES {
        let facts = ExporterFacts::lookup(Fact::new(exporter.into(), Source::Fdinfo), &quirks);
        let plan = BufferPlan::compute(&facts, &m);
        for (consumer, d) in plan.decisions() {
            rows.push(format!("{exporter:<18} | {consumer:<26} | {:<21} | {:<19} | {}", d.path.to_string(), d.why.to_string(), d.reason));
        }
        if let Some(why) = plan.rejection() {
            rows.push(format!("{exporter:<18} | REJECTED: {why}"));
        }
        for advice in plan_hints(&facts, &m, &plan) {
            rows.push(format!("{exporter:<18} | hint {advice}"));
        }
    }
    rows.join("\n")
}

fn path_of(name: &str, exporter: &str, consumer: ConsumerId) -> Path {
    let quirks = Quirks::builtin().expect("database");
    let facts = ExporterFacts::lookup(Fact::new(exporter.into(), Source::Fdinfo), &quirks);
    let plan = BufferPlan::compute(&facts, &natural(name));
    plan.decision(consumer).map(|d| d.path).unwrap_or_else(|| panic!("{consumer:?}"))
}

const RENDER: ConsumerId = ConsumerId::Render;

/// The display engine of /dev/dri/card`n` (the fixtures' sysfs `dev` is 226:n).
fn scanout(n: u32) -> ConsumerId {
    ConsumerId::Scanout(DeviceId(rustix::fs::makedev(226, n)))
}

#[test]
fn x86_laptop_i915_and_amdgpu() {
    let m = natural("x86-laptop");
    let drivers: Vec<&str> = m.devices.iter().map(|d| d.driver.value.as_str()).collect();
    assert_eq!(drivers, ["i915", "amdgpu"]);
    assert!(!m.device_tree);
    insta::assert_snapshot!(table("x86-laptop"));
    // Cached CPU memory: the GPU snoops; the display engines don't, and udmabuf can sync them.
    assert_eq!(path_of("x86-laptop", "udmabuf", RENDER), Path::Direct);
    assert_eq!(path_of("x86-laptop", "udmabuf", scanout(0)), Path::DirectWithMaintenance);
    assert_eq!(path_of("x86-laptop", "videobuf2_vmalloc", scanout(1)), Path::Composite);
}

#[test]
fn imx8_etnaviv_and_dcss_without_dma_coherent() {
    let m = natural("imx8");
    assert!(m.device_tree);
    assert!(m.devices.iter().all(|d| d.dt_dma_coherent.as_ref().is_some_and(|f| !f.value)));
    insta::assert_snapshot!(table("imx8"));
    // The UVC case: CPU-written cached memory, no attachment sync, nothing snoops: CPU copy.
    assert_eq!(path_of("imx8", "videobuf2_vmalloc", RENDER), Path::CpuCopy);
    assert_eq!(path_of("imx8", "videobuf2_vmalloc", scanout(1)), Path::CpuCopy);
    assert_eq!(path_of("imx8", "udmabuf", scanout(1)), Path::DirectWithMaintenance);
}

#[test]
fn rpi_v3d_and_vc4() {
    let m = natural("rpi");
    let drivers: Vec<&str> = m.devices.iter().map(|d| d.driver.value.as_str()).collect();
    assert_eq!(drivers, ["v3d", "vc4"]);
    insta::assert_snapshot!(table("rpi"));
    assert_eq!(path_of("rpi", "system", RENDER), Path::DirectWithMaintenance);
    assert_eq!(path_of("rpi", "drm", scanout(1)), Path::Direct);
}

#[test]
fn vm_vkms_vgem_virtio_gpu() {
    let m = natural("vm");
    let drivers: Vec<&str> = m.devices.iter().map(|d| d.driver.value.as_str()).collect();
    assert_eq!(drivers, ["vgem", "vkms", "virtio_gpu"]);
    let kms: Vec<&str> = m.devices.iter().filter(|d| d.kms).map(|d| d.name.as_str()).collect();
    assert_eq!(kms, ["card1", "card2"], "vgem has no display");
    insta::assert_snapshot!(table("vm"));
    assert_eq!(path_of("vm", "udmabuf", scanout(1)), Path::Direct);
    // virtio-gpu refuses foreign dma-bufs: composited by the (CPU) renderer instead.
    assert_eq!(path_of("vm", "udmabuf", scanout(2)), Path::Composite);
}

/// Implicit-modifier buffers are read as linear only where no device could have tiled them.
#[test]
fn implicit_modifier_is_linear_only_where_every_device_allocates_linearly() {
    let vm = natural("vm").implicit_modifier_linear();
    assert!(vm.value, "{vm}");
    assert!(vm.to_string().contains("vkms") && vm.to_string().contains("virtio_gpu"), "{vm}");
    for name in ["x86-laptop", "imx8", "rpi"] {
        let fact = natural(name).implicit_modifier_linear();
        assert!(!fact.value, "{name}: {fact}");
        assert!(fact.to_string().contains("implicit-modifier layout is unknown"), "{name}: {fact}");
    }
}

#[test]
fn inspect_prints_the_fixture_machine() {
    let out = Command::new(env!("CARGO_BIN_EXE_cohere"))
        .args(["inspect", "--sysfs"])
        .arg(fixture("vm"))
        .args(["--config", "/nonexistent-cohere-config.toml"])
        .output()
        .expect("inspect runs");
    assert_eq!(out.status.code(), Some(1), "a missing --config is an error");
    let out = Command::new(env!("CARGO_BIN_EXE_cohere")).args(["inspect", "--json", "--sysfs"]).arg(fixture("vm")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let drivers: Vec<&str> =
        json["machine"]["devices"].as_array().unwrap().iter().map(|d| d["driver"]["value"].as_str().unwrap()).collect();
    assert_eq!(drivers, ["vgem", "vkms", "virtio_gpu"]);
    assert_eq!(json["machine"]["devices"][2]["imports_foreign"]["value"], false);
    assert_eq!(json["machine"]["devices"][2]["imports_foreign"]["source"]["kind"], "quirk");
}

#[test]
fn bad_config_and_quirk_files_stop_cohere_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[driver.vkms]\nscanout_snoops = false\nrender_snooping = true\n").unwrap();
    let quirks = dir.path().join("quirks.toml");
    std::fs::write(&quirks, "[exporter.udmabuf]\n\nmemory = \"cahced\"\n").unwrap();
    for (flag, file, line, field) in [("--config", &config, 3, "render_snooping"), ("--quirks", &quirks, 3, "memory")] {
        for args in
            [vec!["inspect", "--sysfs", "/nonexistent"], vec!["--headless", "--exit-after-frames", "1", "--socket", "cohere-test-bad"]]
        {
            let out = Command::new(env!("CARGO_BIN_EXE_cohere"))
                .args(&args)
                .arg(flag)
                .arg(file)
                .env("XDG_RUNTIME_DIR", dir.path())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?} {flag}: {err}");
            let want = format!("{}:{line}: field `{field}`", file.display());
            assert!(err.contains(&want), "{args:?} {flag}: wanted {want:?} in {err}");
        }
    }
}

#[test]
fn report_lists_every_database_exporter() {
    let quirks = Quirks::builtin().unwrap();
    let report = Report::new(natural("rpi"), &quirks);
    assert_eq!(report.plans.len(), quirks.exporters().len());
    assert!(report.text().contains("videobuf2_vmalloc:"));
}

fn arb_source() -> impl Strategy<Value = Source> {
    Just(Source::Default { rule: "proptest".into() })
}

fn arb_exporter() -> impl Strategy<Value = ExporterFacts> {
    let memory =
        prop_oneof![Just(MemoryType::Cached), Just(MemoryType::WriteCombined), Just(MemoryType::Uncached), Just(MemoryType::Device)];
    (memory, any::<bool>(), any::<bool>(), arb_source()).prop_map(|(m, sync, map, s)| ExporterFacts {
        name: Fact::new("x".into(), s.clone()),
        memory: Fact::new(m, s.clone()),
        syncs_attachments: Fact::new(sync, s.clone()),
        cpu_mappable: Fact::new(map, s),
    })
}

fn arb_consumer(id: ConsumerId) -> impl Strategy<Value = ConsumerFacts> {
    (any::<bool>(), any::<bool>(), any::<bool>(), arb_source()).prop_map(move |(snoops, imports, cpu, s)| ConsumerFacts {
        id,
        name: "c".into(),
        snoops: Fact::new(snoops, s.clone()),
        imports_foreign: Fact::new(imports, s),
        // Only a renderer can be a CPU one; scanout is always a device.
        through_cpu: cpu && id == ConsumerId::Render,
    })
}

fn arb_displays() -> impl Strategy<Value = Vec<ConsumerFacts>> {
    (0usize..4).prop_flat_map(|n| (0..n).map(|i| arb_consumer(ConsumerId::Scanout(DeviceId(i as u64)))).collect::<Vec<_>>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn plan_invariants(exporter in arb_exporter(), render_c in arb_consumer(RENDER), scan in arb_displays()) {
        let render = plan(&exporter, &render_c, None);
        let mut all = vec![(render_c.clone(), render.clone())];
        for c in &scan {
            all.push((c.clone(), plan(&exporter, c, Some(&render))));
        }
        for (c, d) in &all {
            // Never read cached memory directly with a device that doesn't snoop.
            if exporter.memory.value == MemoryType::Cached && !c.snoops.value {
                prop_assert_ne!(d.path, Path::Direct, "{:?}", d);
            }
            // Maintenance only where the exporter's SYNC does it.
            if d.path == Path::DirectWithMaintenance {
                prop_assert!(exporter.syncs_attachments.value && exporter.memory.value == MemoryType::Cached);
            }
            // A CPU renderer reads only cached memory itself; it copies anything else.
            if c.through_cpu && exporter.memory.value != MemoryType::Cached {
                prop_assert!(!d.path.reads_buffer(), "{:?}", d);
            }
            // A device that can't import never reads the buffer itself.
            if !c.imports_foreign.value {
                prop_assert!(!d.path.reads_buffer());
            }
            // Composition only for scanout, and only when the renderer reads the buffer.
            if d.path == Path::Composite {
                prop_assert!(matches!(c.id, ConsumerId::Scanout(_)) && render.path.reads_buffer());
            }
            // CPU copies need a CPU mapping; reject only when nothing else is possible.
            if d.path == Path::CpuCopy {
                prop_assert!(exporter.cpu_mappable.value);
            }
            if d.path == Path::Reject {
                prop_assert!(!exporter.cpu_mappable.value);
                prop_assert!(c.id == RENDER || !render.path.reads_buffer());
            }
            prop_assert!(!d.reason.is_empty());
            // The deciding fact, as data, agrees with the path.
            match d.path {
                Path::Direct => prop_assert_eq!(d.why, Why::Coherent),
                Path::DirectWithMaintenance => prop_assert_eq!(d.why, Why::NotCoherentWithSync),
                _ => prop_assert_ne!(d.why, Why::Coherent),
            }
            if !c.imports_foreign.value && c.id != ConsumerId::Cpu {
                prop_assert_eq!(d.why, Why::CannotImport);
            }
        }
        // The buffer is rejected only when every consumer rejects.
        let of = |c: &ConsumerFacts, d: &cohere::coherency::Decision| ConsumerPlan { consumer: c.id, label: c.name.clone(), decision: d.clone() };
        let cpu = MachineFacts::cpu_consumer();
        let machine_plan = BufferPlan {
            exporter: "x".into(),
            memory: exporter.memory.value,
            render: of(&render_c, &render),
            scanout: all[1..].iter().map(|(c, d)| of(c, d)).collect(),
            cpu: of(&cpu, &plan(&exporter, &cpu, None)),
        };
        let every_reject = all.iter().all(|(_, d)| d.path == Path::Reject);
        prop_assert_eq!(machine_plan.rejection().is_some(), every_reject);
    }
}

/// What cohere decides for a buffer, without any label: (consumer, path) for every consumer.
fn decisions_only(plan: &BufferPlan) -> Vec<(ConsumerId, Path)> {
    plan.consumers().map(|c| (c.consumer, c.path())).collect()
}

/// Labels are for people. Renaming every card and driver label on every fixture machine leaves
/// every plan, the plan counters and the choice of scanout device exactly as they were.
#[test]
fn renaming_consumer_labels_changes_no_decision() {
    let quirks = Quirks::builtin().expect("database");
    for name in ["x86-laptop", "imx8", "rpi", "vm"] {
        let original = natural(name);
        let mut renamed = original.clone();
        for (i, d) in renamed.devices.iter_mut().enumerate() {
            d.name = format!("display-{}", 9 - i);
            d.driver.value = format!("driver-{i}");
        }
        if let RendererFacts::Device { card, .. } = &mut renamed.renderer {
            *card = "renamed-gpu".into();
        }
        let displays: Vec<DeviceId> = original.devices.iter().map(|d| d.id).collect();
        let (mut before, mut after) = (PlanCounters::default(), PlanCounters::default());
        for exporter in quirks.exporters() {
            let facts = ExporterFacts::lookup(Fact::new(exporter.clone(), Source::Fdinfo), &quirks);
            let (a, b) = (BufferPlan::compute(&facts, &original), BufferPlan::compute(&facts, &renamed));
            assert_ne!(
                a.decisions().map(|(l, _)| l.to_owned()).collect::<Vec<_>>(),
                b.decisions().map(|(l, _)| l.to_owned()).collect::<Vec<_>>(),
                "{name}: labels were renamed"
            );
            assert_eq!(decisions_only(&a), decisions_only(&b), "{name} {exporter}");
            assert_eq!(
                cohere::path::direct::scanout_device(&a, &displays),
                cohere::path::direct::scanout_device(&b, &displays),
                "{name} {exporter}: scanout device"
            );
            before.record(&a);
            after.record(&b);
        }
        assert_eq!(before, after, "{name}: plan counters");
    }
}

/// Every hint on every fixture machine, for every database exporter in every kind of memory,
/// names a change that makes the plan cheaper: planning the buffer again with the change made
/// gives a cheaper path where the hint says.
#[test]
fn every_hint_makes_the_plan_cheaper() {
    let quirks = Quirks::builtin().expect("database");
    let cost =
        |p: Path| [Path::Direct, Path::DirectWithMaintenance, Path::Composite, Path::CpuCopy, Path::Reject].iter().position(|q| *q == p);
    let mut seen = std::collections::HashSet::new();
    for name in ["x86-laptop", "imx8", "rpi", "vm"] {
        let m = natural(name);
        for exporter in quirks.exporters() {
            for memory in [MemoryType::Cached, MemoryType::WriteCombined, MemoryType::Uncached, MemoryType::Device, MemoryType::DmaCoherent]
            {
                let mut facts = ExporterFacts::lookup(Fact::new(exporter.clone(), Source::Fdinfo), &quirks);
                facts.memory = Fact::new(memory, Source::Fdinfo);
                let plan = BufferPlan::compute(&facts, &m);
                let with = |memory: MemoryType| {
                    let mut f = facts.clone();
                    f.memory = Fact::new(memory, Source::Fdinfo);
                    BufferPlan::compute(&f, &m)
                };
                for advice in plan_hints(&facts, &m, &plan) {
                    let what = format!("{name} {exporter} {memory}: {advice}");
                    seen.insert(std::mem::discriminant(&advice.hint));
                    match advice.hint {
                        Hint::AllocateFromScanoutDevice(d) => {
                            let decision = plan.decision(ConsumerId::Scanout(d)).expect(&what);
                            assert_eq!(decision.why, Why::CannotImport, "{what}");
                            assert_ne!(decision.path, Path::Direct, "{what}");
                        }
                        Hint::AllocateWriteCombined => {
                            let other = with(MemoryType::WriteCombined);
                            assert!(
                                plan.scanout.iter().any(|s| cost(other.decision(s.consumer).expect(&what).path) < cost(s.path())),
                                "{what}"
                            );
                        }
                        Hint::AllocateCached => {
                            let other = with(MemoryType::Cached);
                            assert!(cost(other.render.path()) < cost(plan.render.path()), "{what}");
                            assert!(
                                plan.consumers().all(|c| cost(other.decision(c.consumer).expect(&what).path) <= cost(c.path())),
                                "{what}"
                            );
                        }
                        Hint::UseScanoutTranche(_) | Hint::UseDifferentFormat(_) => panic!("{what}: format hints come from frames"),
                    }
                }
            }
        }
    }
    assert_eq!(seen.len(), 3, "every plan hint was exercised");
}
