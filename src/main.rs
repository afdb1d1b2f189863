//! The `cohere` command line. Everything it does goes through the library's public API, the way
//! an embedding compositor would use it.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use cohere::coherency::{self, CoherencyOptions, ProbeOptions, RendererChoice};
use cohere::{Backend, Compositor, Exit, Offer, Options, OutputConfig, RendererPreference, ScreenshotRequest, ShellMode, SocketChoice};

#[derive(Debug, Parser)]
#[command(name = "cohere", version, about = "Wayland compositor that shows client dma-bufs through the cheapest coherent path")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command_: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Print the DRM devices, their coherency facts with sources, and the plan for a buffer
    /// from each known exporter on each consumer.
    Inspect(InspectArgs),
    /// Exit 0 if cohere can run on KMS here (a seat and a connected display), else say why.
    CheckKms,
}

#[derive(Debug, Args)]
struct CoherencyArgs {
    /// Config file with coherency overrides [default: $XDG_CONFIG_HOME/cohere/config.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Quirk database replacing the built-in resources/coherency.toml.
    #[arg(long, value_name = "FILE")]
    quirks: Option<PathBuf>,
}

impl CoherencyArgs {
    fn options(&self) -> CoherencyOptions {
        CoherencyOptions { quirks_file: self.quirks.clone(), config_file: self.config.clone() }
    }
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// sysfs root to read instead of /sys (fixture trees: device nodes are not opened).
    #[arg(long, value_name = "ROOT")]
    sysfs: Option<PathBuf>,
    #[command(flatten)]
    coherency: CoherencyArgs,
    /// Which renderer the plan assumes: what cohere would choose (auto, pixman, gles, as the
    /// compositor's --renderer), or, for --sysfs trees, the first GPU with a render node (gpu).
    #[arg(long, value_enum, default_value_t = InspectRenderer::Auto)]
    renderer: InspectRenderer,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Show the running compositor's counters and live buffer plans, refreshed every second.
    #[arg(long)]
    live: bool,
    /// With --live: print once and exit.
    #[arg(long, requires = "live")]
    once: bool,
    /// With --live: the compositor's socket name [default: $WAYLAND_DISPLAY].
    #[arg(long, value_name = "NAME", requires = "live")]
    socket: Option<String>,
    /// With --live: read the statistics file the compositor was started with (`--stats`).
    #[arg(long, value_name = "FILE", requires = "live", conflicts_with = "socket")]
    stats: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum InspectRenderer {
    Auto,
    Pixman,
    Gles,
    Gpu,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Run without KMS, on virtual outputs paced by a timer.
    #[arg(long)]
    headless: bool,
    /// Every window fullscreen, newest on top; exit with the launched app's status.
    #[arg(long, conflicts_with = "desktop")]
    kiosk: bool,
    /// Overlapping windows at their own size (the default).
    #[arg(long)]
    desktop: bool,
    /// Output size WIDTHxHEIGHT; repeat for more outputs.
    #[arg(long = "size", value_name = "WxH", value_parser = parse_size)]
    sizes: Vec<(i32, i32)>,
    /// Output refresh rate in Hz.
    #[arg(long, default_value_t = 60.0, value_parser = parse_refresh)]
    refresh: f64,
    /// Renderer that composites (headless and KMS).
    #[arg(long, value_enum, default_value_t = RendererArg::Auto)]
    renderer: RendererArg,
    /// Listen on this socket name under $XDG_RUNTIME_DIR instead of the first free wayland-N.
    #[arg(long, value_name = "NAME")]
    socket: Option<String>,
    /// Write a PNG of the first output's frame.
    #[arg(long, value_name = "FILE.png")]
    screenshot: Option<PathBuf>,
    /// Which frame of the first output to capture with --screenshot; 0: none by itself, only
    /// on SIGUSR1 (which always writes the next frame to FILE.png).
    #[arg(long, value_name = "N", default_value_t = 60, requires = "screenshot")]
    after_frames: u64,
    /// DRM node advertised as linux-dmabuf's main device (feedback). Default: the first render
    /// node, if any. Clients allocate their buffers there.
    #[arg(long, value_name = "PATH")]
    dmabuf_device: Option<PathBuf>,
    /// Exit after the first output has shown N frames.
    #[arg(long, value_name = "N")]
    exit_after_frames: Option<u64>,
    /// Use only this DRM device (KMS), e.g. /dev/dri/card1.
    #[arg(long, value_name = "PATH")]
    drm_device: Option<PathBuf>,
    /// Write live statistics (JSON) to FILE while running and once more at exit, and keep it
    /// [default: $XDG_RUNTIME_DIR/<socket>.cohere-stats.json, removed at exit].
    #[arg(long, value_name = "FILE", env = "COHERE_STATS")]
    stats: Option<PathBuf>,
    /// Don't offer cohere-buffer-path-v1 (protocols/cohere-buffer-path-v1.xml), which tells
    /// clients which path their buffers take and why.
    #[arg(long)]
    no_buffer_path: bool,
    #[command(flatten)]
    coherency: CoherencyArgs,
    /// App to launch with WAYLAND_DISPLAY set.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RendererArg {
    /// GLES on a hardware GPU that imports dma-bufs, else Pixman.
    Auto,
    Pixman,
    /// GLES, on the software EGL device (llvmpipe) if there is no hardware GPU.
    Gles,
}

fn parse_size(s: &str) -> Result<(i32, i32), String> {
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(|| format!("{s:?} is not WIDTHxHEIGHT"))?;
    let parse = |v: &str| -> Result<i32, String> {
        let n: i32 = v.trim().parse().map_err(|_| format!("{v:?} is not a number"))?;
        if !(1..=16384).contains(&n) {
            return Err(format!("{n} is outside 1..=16384"));
        }
        Ok(n)
    };
    Ok((parse(w)?, parse(h)?))
}

fn parse_refresh(s: &str) -> Result<f64, String> {
    let hz: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(1.0..=1000.0).contains(&hz) {
        return Err(format!("{hz} Hz is outside 1..=1000"));
    }
    Ok(hz)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command_ {
        Some(Sub::Inspect(args)) => inspect(args),
        Some(Sub::CheckKms) => check_kms(),
        None => run(cli.run),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("cohere: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Wayland sockets live in $XDG_RUNTIME_DIR. A root shell on a bare Debian has none, so make a
/// private one instead of refusing to start; the launched app inherits it.
fn ensure_runtime_dir() -> anyhow::Result<()> {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).is_dir()) {
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("cohere-runtime-{}", rustix::process::getuid().as_raw()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))?;
    eprintln!("cohere: XDG_RUNTIME_DIR was not set; using {}", dir.display());
    // Single-threaded at this point: nothing else reads the environment concurrently.
    std::env::set_var("XDG_RUNTIME_DIR", &dir);
    Ok(())
}

fn inspect(args: InspectArgs) -> anyhow::Result<u8> {
    if args.live {
        return inspect_live(&args);
    }
    let quirks = args.coherency.options().load()?;
    let probe = match (args.sysfs, args.renderer) {
        // Fixture trees: no EGL to ask, so auto means pixman.
        (Some(root), InspectRenderer::Gpu) => ProbeOptions::sysfs(root, RendererChoice::FirstRenderDevice),
        (Some(root), _) => ProbeOptions::sysfs(root, RendererChoice::Cpu("pixman".into())),
        (None, InspectRenderer::Gpu) => ProbeOptions::live(RendererChoice::FirstRenderDevice),
        (None, choice) => {
            let preference = match choice {
                InspectRenderer::Pixman => RendererPreference::Pixman,
                InspectRenderer::Gles => RendererPreference::Gles,
                _ => RendererPreference::Auto,
            };
            let decision = cohere::backend::renderer::choose(preference)?;
            let renderer = match &decision.device {
                Some(device) => RendererChoice::Gles(cohere::backend::renderer::gles_facts(device)),
                None => RendererChoice::Cpu("pixman".into()),
            };
            ProbeOptions { renderer_reason: Some(decision.reason), ..ProbeOptions::live(renderer) }
        }
    };
    let machine = coherency::probe(&probe, &quirks);
    let report = coherency::report::Report::new(machine, &quirks);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        out.write_all(report.text().as_bytes())?;
    }
    Ok(0)
}

fn inspect_live(args: &InspectArgs) -> anyhow::Result<u8> {
    let (path, name) = match &args.stats {
        Some(path) => (path.clone(), path.display().to_string()),
        None => {
            ensure_runtime_dir()?;
            let socket =
                args.socket.clone().or_else(|| std::env::var("WAYLAND_DISPLAY").ok()).context("no --socket, --stats or WAYLAND_DISPLAY")?;
            (cohere::stats::path_for(&socket).context("XDG_RUNTIME_DIR is not set")?, socket)
        }
    };
    loop {
        let stats = cohere::stats::Stats::read(&path)
            .with_context(|| format!("no live stats at {} (is cohere running on {name}?)", path.display()))?;
        let mut out = std::io::stdout().lock();
        if args.json {
            serde_json::to_writer_pretty(&mut out, &stats)?;
            writeln!(out)?;
        } else {
            if !args.once {
                // Clear the terminal and redraw, like watch(1).
                write!(out, "\x1b[H\x1b[2J")?;
            }
            write!(out, "cohere on {name}\n\n{}", stats.text())?;
        }
        out.flush()?;
        if args.once {
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

fn check_kms() -> anyhow::Result<u8> {
    let options = Options { socket: SocketChoice::None, ..Options::default() };
    match Compositor::new_drm(options) {
        Ok(c) => {
            let outputs: Vec<String> = c.state.core.outputs().map(|o| o.name()).collect();
            println!("KMS available: {}", outputs.join(", "));
            Ok(0)
        }
        Err(err) => {
            println!("KMS not available: {}", cohere::ErrorChain(&err));
            Ok(1)
        }
    }
}

fn run(cli: RunArgs) -> anyhow::Result<u8> {
    ensure_runtime_dir()?;
    let after = cli.screenshot.as_ref().map(|_| cli.after_frames).filter(|n| *n > 0);
    if let (Some(after), Some(exit)) = (after, cli.exit_after_frames) {
        if exit < after {
            bail!("--exit-after-frames {exit} comes before --after-frames {after}: the screenshot would never be taken");
        }
    }
    if !cli.headless {
        match Compositor::new_drm(options(&cli)?) {
            Ok(compositor) => return drive(compositor, &cli.command),
            // A device asked for by name must work; otherwise fall back to headless and say why.
            Err(err) if cli.drm_device.is_some() => {
                let device = cli.drm_device.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                return Err(anyhow::Error::new(err).context(format!("KMS on {device}")));
            }
            Err(err) => eprintln!("cohere: KMS not available ({}); running headless", cohere::ErrorChain(&err)),
        }
    }
    drive(Compositor::new_headless(options(&cli)?)?, &cli.command)
}

fn options(cli: &RunArgs) -> anyhow::Result<Options> {
    let refresh_mhz = (cli.refresh * 1000.0).round() as u32;
    let outputs = cli.sizes.iter().map(|&size| OutputConfig { size, refresh_mhz }).collect::<Vec<_>>();
    let outputs = if outputs.is_empty() { vec![OutputConfig { refresh_mhz, ..OutputConfig::default() }] } else { outputs };
    let screenshot = match &cli.screenshot {
        Some(path) => Some(
            ScreenshotRequest::new(path.clone(), Some(cli.after_frames).filter(|n| *n > 0))
                .with_context(|| format!("cannot write screenshot {}", path.display()))?,
        ),
        None => None,
    };
    let dmabuf_main_device = match &cli.dmabuf_device {
        Some(path) => Some(rustix::fs::stat(path).with_context(|| format!("--dmabuf-device {}", path.display()))?.st_rdev),
        None => None,
    };
    Ok(Options {
        dmabuf_main_device,
        shell: if cli.kiosk { ShellMode::Kiosk } else { ShellMode::Desktop },
        outputs,
        renderer: match cli.renderer {
            RendererArg::Auto => RendererPreference::Auto,
            RendererArg::Pixman => RendererPreference::Pixman,
            RendererArg::Gles => RendererPreference::Gles,
        },
        socket: cli.socket.clone().map_or(SocketChoice::Auto, SocketChoice::Named),
        screenshot,
        exit_after_frames: cli.exit_after_frames,
        coherency: cli.coherency.options(),
        drm_device: cli.drm_device.clone(),
        stats_file: cli.stats.clone(),
        buffer_path: if cli.no_buffer_path { Offer::NotOffered } else { Offer::Offered },
        ..Options::default()
    })
}

/// Prints the socket, launches the app, runs until an exit condition, logs the plan counters.
fn drive<B: Backend>(mut compositor: Compositor<B>, command: &[OsString]) -> anyhow::Result<u8> {
    compositor.handle_signals()?;
    if let Some(name) = compositor.socket_name() {
        let mut out = std::io::stdout().lock();
        writeln!(out, "WAYLAND_DISPLAY={}", name.to_string_lossy())?;
        out.flush()?;
    }
    compositor.spawn(command)?;
    let exit = compositor.run();
    tracing::info!(?exit, "exiting");
    // The same figures the statistics file has, for the log.
    let stats = cohere::stats::Stats::collect(&compositor.state);
    let paths: Vec<String> = stats.decisions.iter().map(|d| format!("{}:{}={}", d.access, d.path, d.count)).collect();
    tracing::info!(buffers = stats.buffers_planned, rejected = stats.buffers_rejected, paths = %paths.join(" "), "coherency plans made");
    tracing::info!(copies = stats.cpu_copies, bytes = stats.bytes_copied, "cpu copies");
    tracing::info!(commits_held = stats.commits_held_for_fences, "acquire fences");
    for o in &stats.outputs {
        let c = &o.counters;
        tracing::info!(
            output = o.name,
            frames = c.frames,
            flips = c.flips,
            zero_copy = c.zero_copy_elements,
            composited = c.composited_elements,
            bytes_copied = c.bytes_copied,
            cursor_plane = c.cursor_plane_frames,
            "output counters"
        );
    }
    Ok(match exit {
        Exit::FramesDone => 0,
        Exit::AppExited(code) => u8::try_from(code).unwrap_or(1),
        Exit::Failed => 1,
        Exit::Terminated => 0,
    })
}
