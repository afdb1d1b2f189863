//! A minimal embedding compositor around cohere's `ImportState` (as an embedder would write it)
//! and a raw linux-dmabuf client, joined by `UnixStream::pair()`. Shared by the host tests, the
//! VM tests and the cargo-fuzz target.

#![allow(dead_code)]

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use cohere::import::{ImportConfig, ImportHandler, ImportRejected, ImportState};
use smithay::backend::allocator::dmabuf::Dmabuf;
use smithay::backend::allocator::{Format, Fourcc, Modifier};
use smithay::reexports::wayland_server::backend::{ClientData, ClientId, DisconnectReason};
use smithay::reexports::wayland_server::protocol::wl_buffer::WlBuffer;
use smithay::reexports::wayland_server::Display;
use smithay::wayland::buffer::BufferHandler;
use wayland_client::protocol::{wl_buffer, wl_callback, wl_compositor, wl_registry, wl_surface};
use wayland_client::{Connection, Dispatch, EventQueue, QueueHandle};
use wayland_protocols::wp::linux_dmabuf::zv1::client::{
    zwp_linux_buffer_params_v1 as params_v1, zwp_linux_dmabuf_feedback_v1 as feedback_v1, zwp_linux_dmabuf_v1 as dmabuf_v1,
};

#[allow(unused_imports)]
pub use params_v1::Flags;

/// Formats the test compositor advertises: 1-, 2- and 3-plane LINEAR formats and one vendor
/// modifier.
pub fn test_formats() -> Vec<Format> {
    let linear = |code| Format { code, modifier: Modifier::Linear };
    vec![
        linear(Fourcc::Xrgb8888),
        linear(Fourcc::Argb8888),
        linear(Fourcc::Nv12),
        linear(Fourcc::Yuv420),
        Format { code: Fourcc::Xrgb8888, modifier: Modifier::I915_x_tiled },
    ]
}

/// The embedder's state: accepts every validated buffer and remembers it.
pub struct ServerState {
    pub import: ImportState,
    pub accepted: Vec<Dmabuf>,
    pub destroyed_buffers: usize,
}

impl BufferHandler for ServerState {
    fn buffer_destroyed(&mut self, _buffer: &WlBuffer) {
        self.destroyed_buffers += 1;
    }
}

impl ImportHandler for ServerState {
    fn import_state(&mut self) -> &mut ImportState {
        &mut self.import
    }
    fn import_buffer(&mut self, dmabuf: &Dmabuf) -> Result<(), ImportRejected> {
        self.accepted.push(dmabuf.clone());
        Ok(())
    }
}

cohere::delegate_import!(ServerState);

struct NoData;
impl ClientData for NoData {
    fn initialized(&self, _: ClientId) {}
    fn disconnected(&self, _: ClientId, _: DisconnectReason) {}
}

pub struct Server {
    pub display: Display<ServerState>,
    pub state: ServerState,
}

impl Server {
    pub fn new(main_device: Option<u64>) -> Self {
        Self::with_implicit(main_device, Default::default())
    }

    pub fn with_implicit(main_device: Option<u64>, implicit_modifier: cohere::import::ImplicitModifier) -> Self {
        let display = Display::<ServerState>::new().expect("display");
        let import =
            ImportState::new::<ServerState>(&display.handle(), ImportConfig { formats: test_formats(), main_device, implicit_modifier })
                .expect("import state");
        Server { display, state: ServerState { import, accepted: Vec::new(), destroyed_buffers: 0 } }
    }

    pub fn connect(&mut self, version: u32) -> Client {
        let (server, client) = UnixStream::pair().expect("socket pair");
        self.display.handle().insert_client(server, Arc::new(NoData)).expect("insert client");
        let mut c = Client::new(client);
        self.roundtrip(&mut c);
        let (name, advertised) = c.state.global.expect("zwp_linux_dmabuf_v1 advertised");
        c.dmabuf = Some(c.registry.bind(name, version.min(advertised), &c.qh, ()));
        self.roundtrip(&mut c);
        c
    }

    pub fn dispatch(&mut self) {
        self.display.dispatch_clients(&mut self.state).expect("server dispatch");
        self.display.flush_clients().expect("flush");
    }

    /// wl_display.sync, pumping both sides, until answered or the client was disconnected.
    pub fn roundtrip(&mut self, client: &mut Client) {
        let done = client.state.syncs;
        let _cb = client.conn.display().sync(&client.qh, ());
        for _ in 0..1000 {
            let _ = client.conn.flush();
            self.dispatch();
            client.read();
            if client.state.syncs > done || client.conn.protocol_error().is_some() {
                return;
            }
        }
        panic!("roundtrip never completed");
    }
}

/// What the client saw.
#[derive(Debug, Default)]
pub struct ClientState {
    pub global: Option<(u32, u32)>,
    pub compositor_global: Option<(u32, u32)>,
    pub syncs: u32,
    pub created: Vec<u32>,
    pub failed: Vec<u32>,
    pub formats: Vec<u32>,
    pub modifiers: Vec<(u32, u64)>,
    pub feedback: Vec<String>,
    pub main_device: Option<u64>,
    pub table_size: u32,
    pub table: Vec<(u32, u64)>,
    pub tranche_formats: Vec<Vec<u16>>,
    /// zwp_linux_dmabuf_v1 events in arrival order, readable.
    pub transcript: Vec<String>,
}

pub struct Client {
    pub conn: Connection,
    pub queue: EventQueue<ClientState>,
    pub qh: QueueHandle<ClientState>,
    pub registry: wl_registry::WlRegistry,
    pub dmabuf: Option<dmabuf_v1::ZwpLinuxDmabufV1>,
    pub state: ClientState,
}

/// A protocol error as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub struct SeenError {
    pub code: u32,
    pub object_id: u32,
    pub interface: String,
}

impl Client {
    pub fn new(stream: UnixStream) -> Self {
        let conn = Connection::from_socket(stream).expect("connection");
        let queue = conn.new_event_queue();
        let qh = queue.handle();
        let registry = conn.display().get_registry(&qh, ());
        Client { conn, queue, qh, registry, dmabuf: None, state: ClientState::default() }
    }

    pub fn read(&mut self) {
        if let Some(guard) = self.queue.prepare_read() {
            let _ = guard.read();
        }
        let _ = self.queue.dispatch_pending(&mut self.state);
    }

    pub fn params(&self, tag: u32) -> params_v1::ZwpLinuxBufferParamsV1 {
        self.dmabuf.as_ref().expect("bound").create_params(&self.qh, tag)
    }

    pub fn default_feedback(&self) -> feedback_v1::ZwpLinuxDmabufFeedbackV1 {
        self.dmabuf.as_ref().expect("bound").get_default_feedback(&self.qh, ())
    }

    /// Binds wl_compositor, makes a surface and asks for its feedback.
    pub fn surface_feedback(&self) -> (wl_surface::WlSurface, feedback_v1::ZwpLinuxDmabufFeedbackV1) {
        let (name, _) = self.state.compositor_global.expect("wl_compositor advertised");
        let compositor: wl_compositor::WlCompositor = self.registry.bind(name, 1, &self.qh, ());
        let surface = compositor.create_surface(&self.qh, ());
        let feedback = self.dmabuf.as_ref().expect("bound").get_surface_feedback(&surface, &self.qh, ());
        (surface, feedback)
    }

    pub fn error(&self) -> Option<SeenError> {
        self.conn.protocol_error().map(|e| SeenError { code: e.code, object_id: e.object_id, interface: e.object_interface })
    }
}

/// Adds a plane: (fd, plane_idx, offset, stride, modifier).
pub fn add(params: &params_v1::ZwpLinuxBufferParamsV1, fd: BorrowedFd<'_>, idx: u32, offset: u32, stride: u32, modifier: u64) {
    params.add(fd, idx, offset, stride, (modifier >> 32) as u32, modifier as u32);
}

impl Dispatch<wl_registry::WlRegistry, ()> for ClientState {
    fn event(state: &mut Self, _: &wl_registry::WlRegistry, event: wl_registry::Event, _: &(), _: &Connection, _: &QueueHandle<Self>) {
        if let wl_registry::Event::Global { name, interface, version } = event {
            if interface == "zwp_linux_dmabuf_v1" {
                state.global = Some((name, version));
            }
            if interface == "wl_compositor" {
                state.compositor_global = Some((name, version));
            }
        }
    }
}

impl Dispatch<wl_callback::WlCallback, ()> for ClientState {
    fn event(state: &mut Self, _: &wl_callback::WlCallback, _: wl_callback::Event, _: &(), _: &Connection, _: &QueueHandle<Self>) {
        state.syncs += 1;
    }
}

impl Dispatch<dmabuf_v1::ZwpLinuxDmabufV1, ()> for ClientState {
    fn event(state: &mut Self, _: &dmabuf_v1::ZwpLinuxDmabufV1, event: dmabuf_v1::Event, _: &(), _: &Connection, _: &QueueHandle<Self>) {
        match event {
            dmabuf_v1::Event::Format { format } => {
                state.transcript.push(format!("format {}", fourcc_name(format)));
                state.formats.push(format);
            }
            dmabuf_v1::Event::Modifier { format, modifier_hi, modifier_lo } => {
                let modifier = (u64::from(modifier_hi) << 32) | u64::from(modifier_lo);
                state.transcript.push(format!("modifier {} {modifier:#x}", fourcc_name(format)));
                state.modifiers.push((format, modifier))
            }
            _ => {}
        }
    }
}

impl Dispatch<params_v1::ZwpLinuxBufferParamsV1, u32> for ClientState {
    fn event(
        state: &mut Self,
        _: &params_v1::ZwpLinuxBufferParamsV1,
        event: params_v1::Event,
        tag: &u32,
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        match event {
            params_v1::Event::Created { .. } => state.created.push(*tag),
            params_v1::Event::Failed => state.failed.push(*tag),
            _ => {}
        }
    }

    wayland_client::event_created_child!(ClientState, params_v1::ZwpLinuxBufferParamsV1, [
        params_v1::EVT_CREATED_OPCODE => (wl_buffer::WlBuffer, 0u32),
    ]);
}

impl Dispatch<wl_buffer::WlBuffer, u32> for ClientState {
    fn event(_: &mut Self, _: &wl_buffer::WlBuffer, _: wl_buffer::Event, _: &u32, _: &Connection, _: &QueueHandle<Self>) {}
}

impl Dispatch<feedback_v1::ZwpLinuxDmabufFeedbackV1, ()> for ClientState {
    fn event(
        state: &mut Self,
        _: &feedback_v1::ZwpLinuxDmabufFeedbackV1,
        event: feedback_v1::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        let line = match event {
            feedback_v1::Event::FormatTable { fd, size } => {
                state.table_size = size;
                state.table = read_table(fd, size);
                format!("format_table({size} bytes, {} entries)", state.table.len())
            }
            feedback_v1::Event::MainDevice { device } => {
                let dev = device.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes);
                state.main_device = dev;
                format!("main_device({dev:?})")
            }
            feedback_v1::Event::TrancheTargetDevice { device } => {
                let dev = device.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes);
                format!("tranche_target_device({dev:?})")
            }
            feedback_v1::Event::TrancheFormats { indices } => {
                let idx: Vec<u16> = indices.chunks_exact(2).map(|c| u16::from_ne_bytes([c[0], c[1]])).collect();
                let line = format!("tranche_formats({idx:?})");
                state.tranche_formats.push(idx);
                line
            }
            feedback_v1::Event::TrancheFlags { flags } => format!("tranche_flags({:?})", flags),
            feedback_v1::Event::TrancheDone => "tranche_done".into(),
            feedback_v1::Event::Done => "done".into(),
            _ => "?".into(),
        };
        state.feedback.push(line);
    }
}

/// "XR24" for DRM_FORMAT_XRGB8888.
pub fn fourcc_name(code: u32) -> String {
    code.to_le_bytes().iter().map(|b| if b.is_ascii_graphic() { *b as char } else { '?' }).collect()
}

fn read_table(fd: std::os::fd::OwnedFd, size: u32) -> Vec<(u32, u64)> {
    let mut bytes = vec![0u8; size as usize];
    let _ = rustix::io::pread(&fd, &mut bytes, 0);
    bytes
        .chunks_exact(16)
        .map(|e| (u32::from_ne_bytes(e[0..4].try_into().unwrap()), u64::from_ne_bytes(e[8..16].try_into().unwrap())))
        .collect()
}

impl Dispatch<wl_compositor::WlCompositor, ()> for ClientState {
    fn event(_: &mut Self, _: &wl_compositor::WlCompositor, _: wl_compositor::Event, _: &(), _: &Connection, _: &QueueHandle<Self>) {}
}

impl Dispatch<wl_surface::WlSurface, ()> for ClientState {
    fn event(_: &mut Self, _: &wl_surface::WlSurface, _: wl_surface::Event, _: &(), _: &Connection, _: &QueueHandle<Self>) {}
}

impl Dispatch<wl_buffer::WlBuffer, ()> for ClientState {
    fn event(_: &mut Self, _: &wl_buffer::WlBuffer, _: wl_buffer::Event, _: &(), _: &Connection, _: &QueueHandle<Self>) {}
}

/// A memfd of `size` bytes: seekable and sized like a dma-buf, but not one.
pub fn memfd(size: u64) -> std::os::fd::OwnedFd {
    let fd = rustix::fs::memfd_create("cohere-test", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    rustix::fs::ftruncate(&fd, size).expect("ftruncate");
    fd
}

pub const LINEAR: u64 = 0;
pub const XRGB8888: u32 = u32::from_le_bytes(*b"XR24");
pub const ARGB8888: u32 = u32::from_le_bytes(*b"AR24");
pub const ABGR8888: u32 = u32::from_le_bytes(*b"AB24");
pub const NV12: u32 = u32::from_le_bytes(*b"NV12");
pub const YUV420: u32 = u32::from_le_bytes(*b"YU12");
pub const I915_X_TILED: u64 = (1 << 56) | 1;
