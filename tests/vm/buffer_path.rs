//! cohere-buffer-path-v1 with real dma-bufs. In the fixture (headless, in process): a udmabuf
//! the renderer reads directly, a vgem buffer it copies (with the reason and the hint), and a
//! plan change after the configuration is reloaded. With the `cohere` binary: the same change
//! through SIGHUP, and `examples/buffer-path` as a diagnostic. The KMS cases (direct on a vkms
//! plane, the non-snooping override, virtio-gpu) are checked in the KMS tests that run those
//! setups (kms.rs, maintenance.rs).

use std::os::fd::AsFd;

use cohere::coherency::CoherencyOptions;
use cohere::{Options, RendererPreference, ShellMode};
use smithay::reexports::drm::buffer::DrmFourcc;

use crate::client_mode::CLIENT_MODE;
use crate::cohere::{run_to_exit, scratch, wait_for, Cohere};
use crate::harness::{Fixture, OUTPUT};
use crate::tests::{ensure_eq, test_image, Check, TestFn};

pub fn all() -> Vec<(&'static str, TestFn)> {
    vec![
        ("buffer_path_udmabuf_is_read_directly_headless", buffer_path_udmabuf_is_read_directly_headless),
        ("buffer_path_vgem_buffer_is_copied_with_reason_and_hint", buffer_path_vgem_buffer_is_copied_with_reason_and_hint),
        ("buffer_path_plan_changes_when_the_configuration_is_reloaded", buffer_path_plan_changes_when_the_configuration_is_reloaded),
        ("buffer_path_sighup_reloads_and_the_client_is_told", buffer_path_sighup_reloads_and_the_client_is_told),
        ("buffer_path_example_prints_the_path_of_a_udmabuf", buffer_path_example_prints_the_path_of_a_udmabuf),
    ]
}

/// A batch's lines without the details (the words after each consumer's and hint's reason),
/// which name quirk-file lines and change with the database.
pub(crate) fn shape(batch: &str) -> Vec<String> {
    batch
        .lines()
        .map(|line| {
            if line.starts_with("consumer ") {
                // consumer WHO: PATH (REASON): DETAIL
                line.find("): ").map_or(line, |i| &line[..=i]).to_owned()
            } else if line.starts_with("hint ") {
                line.split(": ").next().unwrap_or(line).to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect()
}

/// The `major:minor` of a device node, as the transcript names displays.
pub(crate) fn dev_of(node: &str) -> Result<String, String> {
    let rdev = rustix::fs::stat(node).check(node)?.st_rdev;
    Ok(format!("{}:{}", rustix::fs::major(rdev), rustix::fs::minor(rdev)))
}

/// A fixture client showing one full-output buffer from `source` in a kiosk window it
/// observes, until the commit was presented.
pub(crate) struct Shown {
    pub(crate) fx: Fixture,
    id: usize,
    window: crate::client::Window,
    wl_buffer: wayland_client::protocol::wl_buffer::WlBuffer,
    _buffer: (cohere::testkit::MappedDmabuf, Option<cohere::testkit::Card>),
}

impl Shown {
    pub(crate) fn new(fx: Fixture, source: &str) -> Result<Shown, String> {
        let mut fx = fx;
        let id = fx.add_client();
        let window = fx.client(id).create_window(source);
        fx.roundtrip(id);
        fx.client(id).ack_last_configure(&window);
        let _observer = fx.client(id).buffer_path(&window.surface);
        let (w, h) = OUTPUT;
        // vgem rows are 4096 bytes (1024-pixel dumb buffers).
        let stride = if source == "drm" { 4096 } else { (w * 4) as u32 };
        let buffer = crate::dmabuf::source(source, stride as usize * h as usize)?;
        let pixels = test_image(w as u32, h as u32);
        let mut bytes = vec![0u8; buffer.0.size];
        for (row, chunk) in pixels.chunks(w as usize).enumerate() {
            let at = row * stride as usize;
            for (i, p) in chunk.iter().enumerate() {
                bytes[at + i * 4..at + i * 4 + 4].copy_from_slice(&p.to_le_bytes());
            }
        }
        buffer.0.write(&bytes).check("fill")?;
        let wl_buffer = fx.client(id).dmabuf_buffer(buffer.0.as_fd(), (w, h, stride), DrmFourcc::Xrgb8888 as u32, 0, 1);
        let mut shown = Shown { fx, id, window, wl_buffer, _buffer: buffer };
        shown.commit_and_present(1)?;
        Ok(shown)
    }

    /// Attaches the buffer again, commits it all damaged and draws frames until it was
    /// presented.
    fn commit_and_present(&mut self, tag: u32) -> Result<(), String> {
        let (w, h) = OUTPUT;
        self.window.surface.attach(Some(&self.wl_buffer), 0, 0);
        self.window.surface.damage_buffer(0, 0, w, h);
        self.fx.client(self.id).presentation_feedback(&self.window.surface, tag);
        self.window.surface.commit();
        self.fx.roundtrip(self.id);
        // A copied buffer's commit applies once the copy thread is done with it.
        wait_for(&format!("commit {tag} presented"), || {
            self.fx.frame();
            match self.fx.clients[self.id].state.presentations.iter().any(|(t, _)| *t == tag) {
                true => Ok(()),
                false => Err("not presented yet".to_owned()),
            }
        })
    }

    fn batches(&self) -> Vec<String> {
        self.fx.clients[self.id].state.path_batches.iter().map(|b| b.to_string()).collect()
    }

    fn last_shape(&self) -> Vec<String> {
        self.batches().last().map(|b| shape(b)).unwrap_or_default()
    }
}

fn pixman(options: Options) -> Fixture {
    Fixture::with_options(Options { shell: ShellMode::Kiosk, renderer: RendererPreference::Pixman, ..options })
}

fn buffer_path_udmabuf_is_read_directly_headless() -> Result<(), String> {
    let shown = Shown::new(pixman(Options::default()), "udmabuf")?;
    let shapes: Vec<Vec<String>> = shown.batches().iter().map(|b| shape(b)).collect();
    // No buffer yet; the buffer's plan (headless: no display) at its commit; then its frame.
    let plan = vec!["consumer render: direct (coherent)".to_owned(), "consumer cpu: direct (coherent)".to_owned()];
    let presented = [plan.clone(), vec!["presented: composited (coherent), 0 bytes copied".into()]].concat();
    let want = vec![vec!["done".to_owned()], [plan, vec!["done".into()]].concat(), [presented, vec!["done".into()]].concat()];
    ensure_eq!(shapes, want, "batches: {:#?}", shown.batches());
    // Nothing changes with more frames of the same buffer.
    let mut shown = shown;
    shown.commit_and_present(2)?;
    ensure_eq!(shown.batches().len(), 3, "batches after another frame");
    Ok(())
}

fn buffer_path_vgem_buffer_is_copied_with_reason_and_hint() -> Result<(), String> {
    let shown = Shown::new(pixman(Options::default()), "drm")?;
    let (w, h) = OUTPUT;
    let want = vec![
        "consumer render: cpu_copy (cpu_renderer_uncached)".to_owned(),
        "consumer cpu: direct (coherent)".into(),
        format!("presented: copied (cpu_renderer_uncached), {} bytes copied", w * h * 4),
        "hint allocate_cached".into(),
        "done".into(),
    ];
    ensure_eq!(shown.last_shape(), want, "the last batch: {:#?}", shown.batches());
    let last = shown.batches().last().cloned().unwrap_or_default();
    if !last.contains("reads through the CPU on every repaint") || !last.contains("cached memory is read as it is") {
        return Err(format!("the reason and the hint say why and what to change: {last}"));
    }
    Ok(())
}

fn buffer_path_plan_changes_when_the_configuration_is_reloaded() -> Result<(), String> {
    let config = scratch("override", "toml");
    std::fs::write(&config, "# nothing overridden yet\n").check("config")?;
    let coherency = CoherencyOptions { config_file: Some(config.clone()), ..CoherencyOptions::default() };
    let mut shown = Shown::new(pixman(Options { coherency, ..Options::default() }), "udmabuf")?;
    ensure_eq!(shown.last_shape()[0], "consumer render: direct (coherent)", "before the reload");
    // udmabuf memory declared write-combined: pixman mustn't read it on every repaint.
    std::fs::write(&config, "[exporter.udmabuf]\nmemory = \"write-combined\"\n").check("config")?;
    shown.fx.compositor.state.reload_coherency().map_err(|e| format!("reload: {e}"))?;
    shown.fx.roundtrip(shown.id);
    let reloaded = shown.last_shape();
    let plan = ["consumer render: cpu_copy (cpu_renderer_uncached)", "consumer cpu: direct (coherent)"];
    ensure_eq!(reloaded[..2], plan, "the batch the reload sent: {:#?}", shown.batches());
    ensure_eq!(reloaded.iter().filter(|l| *l == "hint allocate_cached").count(), 1, "hint: {reloaded:?}");
    // The next commit takes the new path.
    shown.commit_and_present(2)?;
    let (w, h) = OUTPUT;
    let presented = format!("presented: copied (cpu_renderer_uncached), {} bytes copied", w * h * 4);
    ensure_eq!(shown.last_shape()[2], presented, "after the next commit: {:#?}", shown.batches());
    Ok(())
}

fn buffer_path_sighup_reloads_and_the_client_is_told() -> Result<(), String> {
    let config = scratch("override", "toml");
    std::fs::write(&config, "# nothing overridden yet\n").check("config")?;
    let report_file = scratch("client", "json");
    let me = crate::kms::me()?;
    let config_arg = config.display().to_string();
    let report_env = report_file.display().to_string();
    let args = ["--headless", "--kiosk", "--size", "256x128", "--config", &config_arg];
    let mut cohere = Cohere::start(&args, &[&me, CLIENT_MODE], &[("COHERE_CLIENT_REPORT", &report_env)])?;
    let direct = "consumer render: direct (coherent)";
    cohere.wait_client(&report_file, "a batch with the renderer reading directly", |r| r.last_batch().starts_with(direct))?;
    std::fs::write(&config, "[exporter.udmabuf]\nmemory = \"write-combined\"\n").check("config")?;
    cohere.signal(rustix::process::Signal::HUP)?;
    cohere.wait("the configuration reloaded", |s| s.config_reloads == 1)?;
    let copied = "consumer render: cpu_copy (cpu_renderer_uncached)";
    let report = cohere.wait_client(&report_file, "a batch with the new plan", |r| r.last_batch().starts_with(copied))?;
    // A broken file leaves the running configuration in place and cohere running.
    std::fs::write(&config, "[exporter.udmabuf]\nmemory = \"sticky\"\n").check("config")?;
    cohere.signal(rustix::process::Signal::HUP)?;
    cohere.wait("the broken configuration refused", |s| s.config_reload_failures == 1)?;
    let stopped = cohere.stop()?;
    ensure_eq!((stopped.status, stopped.stats.config_reloads), (Some(0), 1), "exit status and reloads");
    if !stopped.log.contains("configuration not reloaded") {
        return Err(format!("the broken file is reported:\n{}", stopped.log));
    }
    ensure_eq!(report.buffer_path.len() >= 2, true, "batches: {:?}", report.buffer_path);
    Ok(())
}

fn buffer_path_example_prints_the_path_of_a_udmabuf() -> Result<(), String> {
    let example = std::env::current_exe()
        .check("current exe")?
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples/buffer-path"))
        .ok_or("no target directory")?;
    let mut cohere = Cohere::start(&["--headless", "--kiosk", "--size", "320x240"], &[], &[])?;
    let child = cohere.client(example.to_str().ok_or("path")?, &["--source", "udmabuf"], &[])?;
    let (status, output) = run_to_exit(child, "examples/buffer-path")?;
    let stopped = cohere.stop()?;
    ensure_eq!(status, Some(0), "example exit status: {output}");
    let lines: Vec<String> = shape(&output);
    for want in ["consumer render: direct (coherent)", "presented: composited (coherent), 0 bytes copied", "done"] {
        if !lines.iter().any(|l| l == want) {
            return Err(format!("no {want:?} in the example's output:\n{output}\ncohere:\n{}", stopped.log));
        }
    }
    Ok(())
}
