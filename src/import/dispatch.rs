//! Protocol dispatch for linux-dmabuf. Each request is forwarded to [`super::params`] for
//! validation; this file only maps results to events and errors.

use std::sync::Mutex;

use smithay::backend::allocator::dmabuf::Dmabuf;
use smithay::backend::allocator::Fourcc;
use smithay::reexports::wayland_protocols::wp::linux_dmabuf::zv1::server::{
    zwp_linux_buffer_params_v1::{self, ZwpLinuxBufferParamsV1},
    zwp_linux_dmabuf_feedback_v1::{self, ZwpLinuxDmabufFeedbackV1},
    zwp_linux_dmabuf_v1::{self, ZwpLinuxDmabufV1},
};
use smithay::reexports::wayland_server::backend::ClientId;
use smithay::reexports::wayland_server::protocol::wl_buffer::{self, WlBuffer};
use smithay::reexports::wayland_server::{Client, DataInit, Dispatch, DisplayHandle, GlobalDispatch, New, Resource};

use super::params::{CreateRequest, Params, PlaneParams, Rejection};
use super::{ImportHandler, ImportState};

/// User data of the zwp_linux_dmabuf_v1 global.
#[derive(Debug)]
pub struct ImportGlobalData {
    pub(super) _private: (),
}

/// User data of a zwp_linux_buffer_params_v1.
#[derive(Debug, Default)]
pub struct ParamsData(Mutex<Params>);

/// User data of a zwp_linux_dmabuf_feedback_v1.
#[derive(Debug, Default)]
pub struct FeedbackData;

impl<D> GlobalDispatch<ZwpLinuxDmabufV1, ImportGlobalData, D> for ImportState
where
    D: GlobalDispatch<ZwpLinuxDmabufV1, ImportGlobalData> + Dispatch<ZwpLinuxDmabufV1, ()> + ImportHandler + 'static,
{
    fn bind(
        state: &mut D,
        _dh: &DisplayHandle,
        _client: &Client,
        resource: New<ZwpLinuxDmabufV1>,
        _global_data: &ImportGlobalData,
        data_init: &mut DataInit<'_, D>,
    ) {
        let dmabuf = data_init.init(resource, ());
        for event in bind_events(dmabuf.version(), state.import_state().formats()) {
            match event {
                BindEvent::Format(code) => dmabuf.format(code),
                BindEvent::Modifier(code, modifier) => dmabuf.modifier(code, (modifier >> 32) as u32, modifier as u32),
            }
        }
    }
}

/// What the server says right after a bind, which depends on the version bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindEvent {
    Format(u32),
    Modifier(u32, u64),
}

/// The bind's events for a client of `version`, exactly as the protocol has them:
/// - v1 and v2: `format` for each format a client without modifiers can use (one with the
///   linear or the implicit modifier); `modifier` doesn't exist before v3;
/// - v3: `format` once per format and `modifier` for every pair;
/// - v4 and later: nothing (the events are deprecated; formats come from feedback).
pub(crate) fn bind_events(version: u32, formats: &[smithay::backend::allocator::Format]) -> Vec<BindEvent> {
    use smithay::backend::allocator::Modifier;
    let mut events = Vec::new();
    if version >= 4 {
        return events;
    }
    let mut seen: Vec<Fourcc> = Vec::new();
    for f in formats {
        let usable = version >= 3 || matches!(f.modifier, Modifier::Linear | Modifier::Invalid);
        if usable && !seen.contains(&f.code) {
            seen.push(f.code);
            events.push(BindEvent::Format(f.code as u32));
        }
        if version >= 3 {
            events.push(BindEvent::Modifier(f.code as u32, u64::from(f.modifier)));
        }
    }
    events
}

impl<D> Dispatch<ZwpLinuxDmabufV1, (), D> for ImportState
where
    D: Dispatch<ZwpLinuxDmabufV1, ()>
        + Dispatch<ZwpLinuxBufferParamsV1, ParamsData>
        + Dispatch<ZwpLinuxDmabufFeedbackV1, FeedbackData>
        + ImportHandler
        + 'static,
{
    fn request(
        state: &mut D,
        _client: &Client,
        _resource: &ZwpLinuxDmabufV1,
        request: zwp_linux_dmabuf_v1::Request,
        _data: &(),
        _dh: &DisplayHandle,
        data_init: &mut DataInit<'_, D>,
    ) {
        match request {
            zwp_linux_dmabuf_v1::Request::Destroy => {}
            zwp_linux_dmabuf_v1::Request::CreateParams { params_id } => {
                data_init.init(params_id, ParamsData::default());
            }
            zwp_linux_dmabuf_v1::Request::GetDefaultFeedback { id } => {
                let feedback = data_init.init(id, FeedbackData);
                let import = state.import_state();
                if let Some(default) = &import.default_feedback {
                    default.send(&feedback, &import.table);
                }
            }
            zwp_linux_dmabuf_v1::Request::GetSurfaceFeedback { id, surface } => {
                let feedback = data_init.init(id, FeedbackData);
                let chosen = state.surface_feedback(&surface).or_else(|| state.import_state().default_feedback.clone());
                let import = state.import_state();
                if let Some(chosen) = &chosen {
                    chosen.send(&feedback, &import.table);
                }
                import.surface_feedbacks.push((feedback.downgrade(), surface.downgrade(), chosen));
            }
            _ => {}
        }
    }
}

impl<D> Dispatch<ZwpLinuxDmabufFeedbackV1, FeedbackData, D> for ImportState
where
    D: Dispatch<ZwpLinuxDmabufFeedbackV1, FeedbackData> + ImportHandler,
{
    fn request(
        _state: &mut D,
        _client: &Client,
        _resource: &ZwpLinuxDmabufFeedbackV1,
        _request: zwp_linux_dmabuf_feedback_v1::Request,
        _data: &FeedbackData,
        _dh: &DisplayHandle,
        _data_init: &mut DataInit<'_, D>,
    ) {
        // Only `destroy`, which needs nothing from us.
    }
}

/// Validates and test-imports; the answer depends on create vs create_immed.
fn build<D: ImportHandler>(
    state: &mut D,
    params: &ZwpLinuxBufferParamsV1,
    data: &ParamsData,
    req: CreateRequest,
) -> Result<Dmabuf, Rejection> {
    let formats = state.import_state().formats().to_vec();
    let implicit = state.import_state().implicit_modifier();
    let result = data.0.lock().unwrap_or_else(|e| e.into_inner()).create(req, &formats, implicit);
    let created = result?;
    state.import_buffer(&created.dmabuf).map_err(|reason| Rejection::Failed(reason.0))?;
    tracing::debug!(params = %params.id(), w = req.width, h = req.height, format = ?dmabuf_format(&created.dmabuf), y_inverted = created.y_inverted, "dma-buf imported");
    if created.y_inverted {
        state.import_state().y_inverted.insert(&created.dmabuf);
    }
    Ok(created.dmabuf)
}

fn dmabuf_format(dmabuf: &Dmabuf) -> smithay::backend::allocator::Format {
    smithay::backend::allocator::Buffer::format(dmabuf)
}

fn post_protocol_error<D: ImportHandler>(
    state: &mut D,
    params: &ZwpLinuxBufferParamsV1,
    code: zwp_linux_buffer_params_v1::Error,
    message: String,
) {
    tracing::info!(params = %params.id(), ?code, %message, "linux-dmabuf protocol error");
    state.import_state().counters.protocol_errors += 1;
    params.post_error(code, message);
}

impl<D> Dispatch<ZwpLinuxBufferParamsV1, ParamsData, D> for ImportState
where
    D: Dispatch<ZwpLinuxBufferParamsV1, ParamsData> + Dispatch<WlBuffer, Dmabuf> + ImportHandler + 'static,
{
    fn request(
        state: &mut D,
        client: &Client,
        params: &ZwpLinuxBufferParamsV1,
        request: zwp_linux_buffer_params_v1::Request,
        data: &ParamsData,
        dh: &DisplayHandle,
        data_init: &mut DataInit<'_, D>,
    ) {
        match request {
            zwp_linux_buffer_params_v1::Request::Destroy => {}
            zwp_linux_buffer_params_v1::Request::Add { fd, plane_idx, offset, stride, modifier_hi, modifier_lo } => {
                let modifier = (u64::from(modifier_hi) << 32) | u64::from(modifier_lo);
                let result = data.0.lock().unwrap_or_else(|e| e.into_inner()).add(PlaneParams { fd, offset, stride, modifier }, plane_idx);
                if let Err(Rejection::Protocol { code, message }) = result {
                    post_protocol_error(state, params, code, message);
                }
            }
            zwp_linux_buffer_params_v1::Request::Create { width, height, format, flags } => {
                let req = CreateRequest { width, height, format, flags: flags.into() };
                match build(state, params, data, req) {
                    Ok(dmabuf) => match client.create_resource::<WlBuffer, Dmabuf, D>(dh, 1, dmabuf) {
                        Ok(buffer) => {
                            state.import_state().counters.imported += 1;
                            params.created(&buffer);
                        }
                        Err(err) => tracing::debug!(%err, "client gone before its wl_buffer was created"),
                    },
                    Err(Rejection::Failed(reason)) => {
                        tracing::info!(params = %params.id(), %reason, "linux-dmabuf create failed");
                        state.import_state().counters.failed += 1;
                        params.failed();
                    }
                    Err(Rejection::Protocol { code, message }) => post_protocol_error(state, params, code, message),
                }
            }
            zwp_linux_buffer_params_v1::Request::CreateImmed { buffer_id, width, height, format, flags } => {
                let req = CreateRequest { width, height, format, flags: flags.into() };
                // Every path either initialises buffer_id or posts an error (which disconnects
                // the client); wayland-server requires one of the two.
                match build(state, params, data, req) {
                    Ok(dmabuf) => {
                        data_init.init(buffer_id, dmabuf);
                        state.import_state().counters.imported += 1;
                    }
                    Err(Rejection::Failed(reason)) => {
                        state.import_state().counters.failed += 1;
                        post_protocol_error(state, params, zwp_linux_buffer_params_v1::Error::InvalidWlBuffer, reason);
                    }
                    Err(Rejection::Protocol { code, message }) => post_protocol_error(state, params, code, message),
                }
            }
            _ => post_protocol_error(
                state,
                params,
                zwp_linux_buffer_params_v1::Error::InvalidWlBuffer,
                "request not supported at this version".into(),
            ),
        }
    }
}

impl<D> Dispatch<WlBuffer, Dmabuf, D> for ImportState
where
    D: Dispatch<WlBuffer, Dmabuf> + ImportHandler,
{
    fn request(
        _state: &mut D,
        _client: &Client,
        _buffer: &WlBuffer,
        _request: wl_buffer::Request,
        _data: &Dmabuf,
        _dh: &DisplayHandle,
        _data_init: &mut DataInit<'_, D>,
    ) {
        // wl_buffer.destroy only: the resource (and with it the Dmabuf's fds) goes away.
    }

    fn destroyed(state: &mut D, _client: ClientId, buffer: &WlBuffer, data: &Dmabuf) {
        state.import_state().y_inverted.remove(data);
        state.buffer_destroyed(buffer);
    }
}
