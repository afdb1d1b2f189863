//! Which path does a buffer take on this compositor, and why? Shows one window with a buffer
//! from the chosen source and prints what cohere-buffer-path-v1 says about it:
//!
//! ```text
//! WAYLAND_DISPLAY=wayland-1 cargo run --example buffer-path -- --source udmabuf
//! consumer render: direct (coherent): udmabuf memory is cached (quirk ...); ...
//! consumer cpu: direct (coherent): udmabuf buffers can be mapped; ...
//! presented: composited (coherent), 0 bytes copied
//! done
//! ```
//!
//! It exits after the first batch that reports a presented frame; with `--follow` it keeps
//! committing (one frame per frame callback) and prints every batch until interrupted. The
//! events are read with `cohere::buffer_path::observe::BatchReader`, which any client can use.

use std::os::fd::{AsFd, OwnedFd};

use clap::{Parser, ValueEnum};
use cohere::buffer_path::observe::{Batch, BatchReader};
use cohere::buffer_path::protocol::client::cohere_buffer_path_manager_v1::CohereBufferPathManagerV1;
use cohere::buffer_path::protocol::client::cohere_surface_buffer_path_v1::{self, CohereSurfaceBufferPathV1};
use smithay::backend::allocator::dmabuf::{Dmabuf, DmabufFlags, DmabufMappingMode, DmabufSyncFlags};
use smithay::backend::allocator::{Fourcc, Modifier};
use wayland_client::protocol::{wl_buffer, wl_callback, wl_compositor, wl_registry, wl_shm, wl_shm_pool, wl_surface};
use wayland_client::{Connection, Dispatch, Proxy, QueueHandle};
use wayland_protocols::wp::linux_dmabuf::zv1::client::{zwp_linux_buffer_params_v1, zwp_linux_dmabuf_v1};
use wayland_protocols::xdg::shell::client::{xdg_surface, xdg_toplevel, xdg_wm_base};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Source {
    /// wl_shm (a memfd)
    Shm,
    /// a udmabuf (cached memory) through linux-dmabuf
    Udmabuf,
}

/// Show a buffer and print its buffer path as cohere reports it.
#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum, default_value_t = Source::Shm)]
    source: Source,
    /// Buffer size, WxH (the compositor's configure wins when it sets one).
    #[arg(long, default_value = "256x256")]
    size: String,
    /// Keep committing and printing batches.
    #[arg(long)]
    follow: bool,
}

#[derive(Default)]
struct App {
    compositor: Option<wl_compositor::WlCompositor>,
    shm: Option<wl_shm::WlShm>,
    wm_base: Option<xdg_wm_base::XdgWmBase>,
    dmabuf: Option<zwp_linux_dmabuf_v1::ZwpLinuxDmabufV1>,
    paths: Option<CohereBufferPathManagerV1>,
    configured: Option<(i32, i32)>,
    reader: BatchReader,
    batches: Vec<Batch>,
    frame_done: bool,
    closed: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (w, h) = args.size.split_once('x').and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?))).unwrap_or((256, 256));
    let conn = Connection::connect_to_env()?;
    let mut queue = conn.new_event_queue::<App>();
    let qh = queue.handle();
    conn.display().get_registry(&qh, ());
    let mut app = App::default();
    queue.roundtrip(&mut app)?;
    let (Some(compositor), Some(wm_base)) = (app.compositor.clone(), app.wm_base.clone()) else {
        anyhow::bail!("the compositor lacks wl_compositor or xdg_wm_base");
    };
    let paths = app.paths.clone().ok_or_else(|| anyhow::anyhow!("the compositor doesn't offer cohere_buffer_path_manager_v1"))?;

    let surface = compositor.create_surface(&qh, ());
    let xdg = wm_base.get_xdg_surface(&surface, &qh, ());
    let toplevel = xdg.get_toplevel(&qh, ());
    toplevel.set_title("buffer-path".into());
    surface.commit();
    while app.configured.is_none() {
        queue.blocking_dispatch(&mut app)?;
    }
    let (w, h) = match app.configured {
        Some((cw, ch)) if cw > 0 && ch > 0 => (cw, ch),
        _ => (w, h),
    };
    let _path = paths.get_surface_path(&surface, &qh, ());
    let buffer = match args.source {
        Source::Shm => shm_buffer(&app, &qh, w, h)?,
        Source::Udmabuf => udmabuf_buffer(&app, &qh, w, h)?,
    };
    loop {
        surface.attach(Some(&buffer.0), 0, 0);
        surface.damage_buffer(0, 0, w, h);
        surface.frame(&qh, ());
        surface.commit();
        app.frame_done = false;
        while !app.frame_done && !app.closed {
            queue.blocking_dispatch(&mut app)?;
            for batch in app.batches.drain(..) {
                print!("{batch}");
                if batch.presented.is_some() && !args.follow {
                    return Ok(());
                }
            }
        }
        if app.closed {
            return Ok(());
        }
    }
}

/// A buffer and what keeps its memory alive.
struct Buffer(wl_buffer::WlBuffer, #[allow(dead_code)] OwnedFd);

/// Pixels of a gradient, XRGB8888 little-endian.
fn pixels(w: i32, h: i32) -> Vec<u8> {
    (0..w * h)
        .flat_map(|i| (0xff00_0000u32 | (((i % w) * 255 / w.max(1)) as u32) << 16 | (((i / w) * 255 / h.max(1)) as u32) << 8).to_le_bytes())
        .collect()
}

fn shm_buffer(app: &App, qh: &QueueHandle<App>, w: i32, h: i32) -> anyhow::Result<Buffer> {
    let shm = app.shm.as_ref().ok_or_else(|| anyhow::anyhow!("no wl_shm"))?;
    let fd = rustix::fs::memfd_create("buffer-path", rustix::fs::MemfdFlags::CLOEXEC)?;
    rustix::io::write(&fd, &pixels(w, h))?;
    let pool = shm.create_pool(fd.as_fd(), w * h * 4, qh, ());
    let buffer = pool.create_buffer(0, w, h, w * 4, wl_shm::Format::Xrgb8888, qh, ());
    pool.destroy();
    Ok(Buffer(buffer, fd))
}

fn udmabuf_buffer(app: &App, qh: &QueueHandle<App>, w: i32, h: i32) -> anyhow::Result<Buffer> {
    let linux_dmabuf = app.dmabuf.as_ref().ok_or_else(|| anyhow::anyhow!("no zwp_linux_dmabuf_v1"))?;
    let fd = cohere::coherency::probe::udmabuf((w * h * 4) as usize)?;
    // Write the pixels through a mapping bracketed by DMA_BUF_IOCTL_SYNC, as a producer must.
    let mut builder = Dmabuf::builder((w, h), Fourcc::Xrgb8888, Modifier::Linear, DmabufFlags::empty());
    builder.add_plane(fd.try_clone()?, 0, 0, (w * 4) as u32);
    let dmabuf = builder.build().ok_or_else(|| anyhow::anyhow!("dma-buf"))?;
    let mapping = dmabuf.map_plane(0, DmabufMappingMode::WRITE)?;
    dmabuf.sync_plane(0, DmabufSyncFlags::START | DmabufSyncFlags::WRITE)?;
    let bytes = pixels(w, h);
    // SAFETY: the mapping is `length()` writable bytes until it is dropped below.
    let map = unsafe { std::slice::from_raw_parts_mut(mapping.ptr().cast::<u8>(), mapping.length()) };
    let n = bytes.len().min(map.len());
    map[..n].copy_from_slice(&bytes[..n]);
    dmabuf.sync_plane(0, DmabufSyncFlags::END | DmabufSyncFlags::WRITE)?;
    drop(mapping);
    let params = linux_dmabuf.create_params(qh, ());
    params.add(fd.as_fd(), 0, 0, (w * 4) as u32, 0, 0);
    let buffer = params.create_immed(w, h, Fourcc::Xrgb8888 as u32, zwp_linux_buffer_params_v1::Flags::empty(), qh, ());
    params.destroy();
    Ok(Buffer(buffer, fd))
}

impl Dispatch<wl_registry::WlRegistry, ()> for App {
    fn event(
        app: &mut Self,
        registry: &wl_registry::WlRegistry,
        event: wl_registry::Event,
        _: &(),
        _: &Connection,
        qh: &QueueHandle<Self>,
    ) {
        if let wl_registry::Event::Global { name, interface, version } = event {
            match interface.as_str() {
                "wl_compositor" => app.compositor = Some(registry.bind(name, version.min(4), qh, ())),
                "wl_shm" => app.shm = Some(registry.bind(name, 1, qh, ())),
                "xdg_wm_base" => app.wm_base = Some(registry.bind(name, 1, qh, ())),
                "zwp_linux_dmabuf_v1" => app.dmabuf = Some(registry.bind(name, version.min(3), qh, ())),
                "cohere_buffer_path_manager_v1" => app.paths = Some(registry.bind(name, 1, qh, ())),
                _ => {}
            }
        }
    }
}

impl Dispatch<CohereSurfaceBufferPathV1, ()> for App {
    fn event(
        app: &mut Self,
        _: &CohereSurfaceBufferPathV1,
        event: cohere_surface_buffer_path_v1::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        if let Some(batch) = app.reader.event(event) {
            app.batches.push(batch);
        }
    }
}

impl Dispatch<xdg_wm_base::XdgWmBase, ()> for App {
    fn event(_: &mut Self, wm: &xdg_wm_base::XdgWmBase, event: xdg_wm_base::Event, _: &(), _: &Connection, _: &QueueHandle<Self>) {
        if let xdg_wm_base::Event::Ping { serial } = event {
            wm.pong(serial);
        }
    }
}

impl Dispatch<xdg_surface::XdgSurface, ()> for App {
    fn event(app: &mut Self, xdg: &xdg_surface::XdgSurface, event: xdg_surface::Event, _: &(), _: &Connection, _: &QueueHandle<Self>) {
        if let xdg_surface::Event::Configure { serial } = event {
            xdg.ack_configure(serial);
            app.configured.get_or_insert((0, 0));
        }
    }
}

impl Dispatch<xdg_toplevel::XdgToplevel, ()> for App {
    fn event(app: &mut Self, _: &xdg_toplevel::XdgToplevel, event: xdg_toplevel::Event, _: &(), _: &Connection, _: &QueueHandle<Self>) {
        match event {
            xdg_toplevel::Event::Configure { width, height, .. } => app.configured = Some((width, height)),
            xdg_toplevel::Event::Close => app.closed = true,
            _ => {}
        }
    }
}

impl Dispatch<wl_callback::WlCallback, ()> for App {
    fn event(app: &mut Self, _: &wl_callback::WlCallback, event: wl_callback::Event, _: &(), _: &Connection, _: &QueueHandle<Self>) {
        if let wl_callback::Event::Done { .. } = event {
            app.frame_done = true;
        }
    }
}

/// Interfaces whose events this client doesn't need.
macro_rules! no_events {
    ($($iface:ty),* $(,)?) => {$(
        impl Dispatch<$iface, ()> for App {
            fn event(_: &mut Self, _: &$iface, _: <$iface as Proxy>::Event, _: &(), _: &Connection, _: &QueueHandle<Self>) {}
        }
    )*};
}

no_events!(
    wl_compositor::WlCompositor,
    wl_surface::WlSurface,
    wl_shm::WlShm,
    wl_shm_pool::WlShmPool,
    wl_buffer::WlBuffer,
    zwp_linux_dmabuf_v1::ZwpLinuxDmabufV1,
    zwp_linux_buffer_params_v1::ZwpLinuxBufferParamsV1,
    CohereBufferPathManagerV1,
);
