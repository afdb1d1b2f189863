//! linux-dmabuf params validation over a real socket: one test per protocol error (code and
//! object), `failed` for fds that are not dma-bufs, and a proptest run of random request
//! sequences through the real dispatch path. Success cases need real dma-bufs: tests/vm.

mod fuzz;
mod harness;
mod sequence;

use std::os::fd::AsFd;

use harness::*;
use wayland_client::Proxy;

const ALREADY_USED: u32 = 0;
const PLANE_IDX: u32 = 1;
const PLANE_SET: u32 = 2;
const INCOMPLETE: u32 = 3;
const INVALID_FORMAT: u32 = 4;
const INVALID_DIMENSIONS: u32 = 5;
const OUT_OF_BOUNDS: u32 = 6;
const INVALID_WL_BUFFER: u32 = 7;

/// Runs `send` on a fresh v4 client's params object and returns the protocol error it got,
/// checking it was raised on that params object.
fn error_from(
    send: impl FnOnce(&mut Client, &wayland_protocols::wp::linux_dmabuf::zv1::client::zwp_linux_buffer_params_v1::ZwpLinuxBufferParamsV1),
) -> u32 {
    let mut server = Server::new(Some(0xe280));
    let mut client = server.connect(4);
    let params = client.params(1);
    send(&mut client, &params);
    server.roundtrip(&mut client);
    let err = client.error().expect("a protocol error");
    assert_eq!(err.interface, "zwp_linux_buffer_params_v1", "{err:?}");
    assert_eq!(err.object_id, params.id().protocol_id(), "error raised on the params object");
    assert!(server.state.accepted.is_empty(), "nothing reached the import hook");
    err.code
}

fn xrgb(width: i32, height: i32) -> (u64, u32) {
    ((width * height * 4) as u64, (width * 4) as u32)
}

const IMPLICIT: u64 = 0x00ff_ffff_ffff_ffff;

/// The implicit modifier is refused unless the embedder says it means linear here; then it is
/// advertised next to every LINEAR format and validated with the linear bounds checks.
#[test]
fn implicit_modifier_is_refused_or_validated_as_linear() {
    let refused = error_from(|_, p| {
        add(p, memfd(4096).as_fd(), 0, 0, 64, IMPLICIT);
        p.create(16, 16, XRGB8888, Flags::empty());
    });
    assert_eq!(refused, INVALID_FORMAT);

    let mut server = Server::with_implicit(None, cohere::import::ImplicitModifier::AsLinear);
    let mut client = server.connect(3);
    let linear: Vec<u32> = client.state.modifiers.iter().filter(|m| m.1 == LINEAR).map(|m| m.0).collect();
    let implicit: Vec<u32> = client.state.modifiers.iter().filter(|m| m.1 == IMPLICIT).map(|m| m.0).collect();
    assert!(!linear.is_empty());
    assert_eq!(linear, implicit, "the implicit modifier goes with every LINEAR format");

    // Passes format validation; a memfd isn't a dma-buf, so it ends in `failed`.
    let (size, stride) = xrgb(16, 16);
    let params = client.params(1);
    add(&params, memfd(size).as_fd(), 0, 0, stride, IMPLICIT);
    params.create(16, 16, XRGB8888, Flags::empty());
    server.roundtrip(&mut client);
    assert_eq!((client.error().map(|e| e.code), client.state.failed.clone()), (None, vec![1]));

    // Linear bounds checks apply: 16 rows of 64 bytes don't fit in 512.
    let params = client.params(2);
    add(&params, memfd(512).as_fd(), 0, 0, stride, IMPLICIT);
    params.create(16, 16, XRGB8888, Flags::empty());
    server.roundtrip(&mut client);
    assert_eq!(client.error().map(|e| e.code), Some(OUT_OF_BOUNDS));
}

/// Each version gets exactly the events it has: `format` only at v1 and v2 (for the formats a
/// client without modifiers can use), `format` and `modifier` at v3, neither from v4 on
/// (feedback instead). A v1 client (GStreamer 1.22's waylandsink) aborts on an event its
/// version doesn't have.
#[test]
fn each_bind_version_gets_exactly_its_events() {
    let mut server = Server::new(Some(0xe280));
    let mut transcripts = Vec::new();
    for version in 1..=5 {
        let client = server.connect(version);
        assert_eq!(client.dmabuf.as_ref().map(wayland_client::Proxy::version), Some(version), "bound version");
        assert!(client.error().is_none(), "v{version}: {:?}", client.error());
        let t = &client.state.transcript;
        match version {
            1 | 2 => {
                assert!(client.state.modifiers.is_empty(), "v{version} has no modifier event: {t:?}");
                // The x-tiled XRGB8888 pair is for modifier-aware clients only.
                assert_eq!(client.state.formats, [XRGB8888, ARGB8888, NV12, YUV420], "v{version}");
            }
            3 => {
                assert_eq!(client.state.formats, [XRGB8888, ARGB8888, NV12, YUV420]);
                assert_eq!(client.state.modifiers.len(), harness::test_formats().len());
            }
            _ => assert!(t.is_empty(), "v{version}: formats come from feedback only: {t:?}"),
        }
        transcripts.push(format!("v{version}:\n{}", t.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")));
    }
    insta::assert_snapshot!(transcripts.join("\n"));
}

/// A v1 client can still create buffers (with `create`; `create_immed` is v2): a fd that isn't
/// a dma-buf gets `failed`.
#[test]
fn a_v1_client_gets_failed_for_a_non_dmabuf() {
    let mut server = Server::new(Some(0xe280));
    let mut client = server.connect(1);
    let (size, stride) = xrgb(16, 16);
    let params = client.params(1);
    add(&params, memfd(size).as_fd(), 0, 0, stride, LINEAR);
    params.create(16, 16, XRGB8888, Flags::empty());
    server.roundtrip(&mut client);
    assert_eq!((client.error().map(|e| e.code), client.state.failed.clone()), (None, vec![1]));
}

#[test]
fn already_used_after_create() {
    let code = error_from(|c, p| {
        let fd = memfd(64 * 64 * 4);
        add(p, fd.as_fd(), 0, 0, 256, LINEAR);
        p.create(64, 64, XRGB8888, Flags::empty());
        add(p, fd.as_fd(), 1, 0, 256, LINEAR);
        let _ = c;
    });
    assert_eq!(code, ALREADY_USED);
}

#[test]
fn already_used_on_second_create() {
    let code = error_from(|_, p| {
        let fd = memfd(4096);
        add(p, fd.as_fd(), 0, 0, 64, LINEAR);
        p.create(16, 16, XRGB8888, Flags::empty());
        p.create(16, 16, XRGB8888, Flags::empty());
    });
    assert_eq!(code, ALREADY_USED);
}

#[test]
fn plane_idx_out_of_range() {
    assert_eq!(error_from(|_, p| add(p, memfd(4096).as_fd(), 4, 0, 64, LINEAR)), PLANE_IDX);
    assert_eq!(error_from(|_, p| add(p, memfd(4096).as_fd(), u32::MAX, 0, 64, LINEAR)), PLANE_IDX);
}

#[test]
fn plane_set_twice() {
    let code = error_from(|_, p| {
        let fd = memfd(4096);
        add(p, fd.as_fd(), 0, 0, 64, LINEAR);
        add(p, fd.as_fd(), 0, 0, 64, LINEAR);
    });
    assert_eq!(code, PLANE_SET);
}

#[test]
fn incomplete_without_planes_with_a_gap_and_with_too_few_planes() {
    assert_eq!(error_from(|_, p| p.create(16, 16, XRGB8888, Flags::empty())), INCOMPLETE);
    let gap = error_from(|_, p| {
        let fd = memfd(3 * 4096);
        add(p, fd.as_fd(), 0, 0, 64, LINEAR);
        add(p, fd.as_fd(), 2, 8192, 32, LINEAR);
        p.create(64, 64, YUV420, Flags::empty());
    });
    assert_eq!(gap, INCOMPLETE);
    let one_plane_nv12 = error_from(|_, p| {
        add(p, memfd(64 * 64 * 2).as_fd(), 0, 0, 64, LINEAR);
        p.create(64, 64, NV12, Flags::empty());
    });
    assert_eq!(one_plane_nv12, INCOMPLETE);
    let two_planes_xrgb = error_from(|_, p| {
        let fd = memfd(2 * 4096);
        add(p, fd.as_fd(), 0, 0, 64, LINEAR);
        add(p, fd.as_fd(), 1, 4096, 64, LINEAR);
        p.create(16, 16, XRGB8888, Flags::empty());
    });
    assert_eq!(two_planes_xrgb, INCOMPLETE);
}

#[test]
fn invalid_format_unknown_fourcc_mixed_modifiers_and_unadvertised_pairs() {
    let unknown = error_from(|_, p| {
        add(p, memfd(4096).as_fd(), 0, 0, 64, LINEAR);
        p.create(16, 16, 0x1234_5678, Flags::empty());
    });
    assert_eq!(unknown, INVALID_FORMAT);
    let mixed = error_from(|_, p| {
        let fd = memfd(64 * 64 * 2);
        add(p, fd.as_fd(), 0, 0, 64, LINEAR);
        add(p, fd.as_fd(), 1, 4096, 64, I915_X_TILED);
    });
    assert_eq!(mixed, INVALID_FORMAT);
    let not_advertised_format = error_from(|_, p| {
        add(p, memfd(4096).as_fd(), 0, 0, 64, LINEAR);
        p.create(16, 16, ABGR8888, Flags::empty());
    });
    assert_eq!(not_advertised_format, INVALID_FORMAT);
    let not_advertised_modifier = error_from(|_, p| {
        add(p, memfd(4096).as_fd(), 0, 0, 64, I915_X_TILED);
        p.create(16, 16, ARGB8888, Flags::empty());
    });
    assert_eq!(not_advertised_modifier, INVALID_FORMAT);
}

#[test]
fn invalid_dimensions() {
    for (w, h) in [(0, 16), (16, 0), (-1, 16), (16, i32::MIN)] {
        let code = error_from(|_, p| {
            add(p, memfd(4096).as_fd(), 0, 0, 64, LINEAR);
            p.create(w, h, XRGB8888, Flags::empty());
        });
        assert_eq!(code, INVALID_DIMENSIONS, "{w}x{h}");
    }
}

/// The request that panics smithay 0.7 with overflow checks on: height 0, offset 16, stride
/// 0xFFFFFFF8. Here it is an ordinary protocol error, in this (debug, overflow-checked) build.
#[test]
fn crafted_overflow_create_is_a_protocol_error_not_a_panic() {
    let code = error_from(|_, p| {
        add(p, memfd(4096).as_fd(), 0, 16, 0xFFFF_FFF8, LINEAR);
        p.create(16, 0, XRGB8888, Flags::empty());
    });
    assert_eq!(code, INVALID_DIMENSIONS);
    let code = error_from(|_, p| {
        add(p, memfd(4096).as_fd(), 0, 16, 0xFFFF_FFF8, LINEAR);
        p.create(16, 1, XRGB8888, Flags::empty());
    });
    assert_eq!(code, OUT_OF_BOUNDS);
}

#[test]
fn out_of_bounds_cases() {
    let (size, stride) = xrgb(64, 64);
    let cases: Vec<(&str, u64, u32, u32, i32, i32)> = vec![
        // (what, fd size, offset, stride, width, height)
        ("offset at end of buffer", size, size as u32, stride, 64, 64),
        ("offset + stride past end", size, (size - 100) as u32, stride, 64, 64),
        ("one row short", size - 1, 0, stride, 64, 64),
        ("stride below the row size", size, 0, stride - 4, 64, 64),
        ("stride 0", size, 0, 0, 64, 64),
        ("u32 overflow of offset + stride", size, 8, u32::MAX - 4, 64, 1),
    ];
    for (what, fd_size, offset, stride, w, h) in cases {
        let code = error_from(|_, p| {
            add(p, memfd(fd_size).as_fd(), 0, offset, stride, LINEAR);
            p.create(w, h, XRGB8888, Flags::empty());
        });
        assert_eq!(code, OUT_OF_BOUNDS, "{what}");
    }
    // Subsampled planes are checked too: NV12's chroma plane needs 32 rows of 64 bytes.
    let code = error_from(|_, p| {
        let fd = memfd(64 * 64 + 64 * 31);
        add(p, fd.as_fd(), 0, 0, 64, LINEAR);
        add(p, fd.as_fd(), 1, 64 * 64, 64, LINEAR);
        p.create(64, 64, NV12, Flags::empty());
    });
    assert_eq!(code, OUT_OF_BOUNDS, "short NV12 chroma plane");
}

#[test]
fn create_immed_with_a_memfd_is_invalid_wl_buffer() {
    let code = error_from(|c, p| {
        let (size, stride) = xrgb(16, 16);
        add(p, memfd(size).as_fd(), 0, 0, stride, LINEAR);
        let _buffer = p.create_immed(16, 16, XRGB8888, Flags::empty(), &c.qh, ());
    });
    assert_eq!(code, INVALID_WL_BUFFER);
}

/// Fds that are not dma-bufs but pass every numeric check get `failed`, and the client lives.
#[test]
fn fds_that_are_not_dmabufs_get_failed() {
    let (size, stride) = xrgb(16, 16);
    let file = tempfile_with_size(size);
    let (pipe_r, _pipe_w) = rustix::pipe::pipe().expect("pipe");
    let (sock, _peer) = std::os::unix::net::UnixStream::pair().expect("socket");
    let fds: Vec<(&str, std::os::fd::OwnedFd)> =
        vec![("memfd", memfd(size)), ("regular file", file.into()), ("pipe", pipe_r), ("socket", sock.into())];
    let mut server = Server::new(None);
    let mut client = server.connect(3);
    for (tag, (_, fd)) in fds.iter().enumerate() {
        let params = client.params(tag as u32);
        add(&params, fd.as_fd(), 0, 0, stride, LINEAR);
        params.create(16, 16, XRGB8888, Flags::empty());
    }
    server.roundtrip(&mut client);
    assert_eq!(client.error(), None);
    assert_eq!(client.state.failed, vec![0, 1, 2, 3], "every non-dma-buf gets failed: {:?}", fds.iter().map(|f| f.0).collect::<Vec<_>>());
    assert!(client.state.created.is_empty());
    assert!(server.state.accepted.is_empty());
    assert_eq!(server.state.import.counters.failed, 4);
}

#[test]
fn unknown_and_interlaced_flags_get_failed() {
    let (size, stride) = xrgb(16, 16);
    let mut server = Server::new(None);
    let mut client = server.connect(3);
    for (tag, flags) in [(0u32, 8u32), (1, 2), (2, 4)] {
        let params = client.params(tag);
        add(&params, memfd(size).as_fd(), 0, 0, stride, LINEAR);
        params.create(16, 16, XRGB8888, Flags::from_bits_retain(flags));
    }
    server.roundtrip(&mut client);
    assert_eq!(client.error(), None);
    assert_eq!(client.state.failed, vec![0, 1, 2]);
}

#[test]
fn v3_clients_get_format_and_modifier_events() {
    let mut server = Server::new(None);
    let client = server.connect(3);
    assert_eq!(client.state.formats, vec![XRGB8888, ARGB8888, NV12, YUV420]);
    assert_eq!(
        client.state.modifiers,
        vec![(XRGB8888, LINEAR), (ARGB8888, LINEAR), (NV12, LINEAR), (YUV420, LINEAR), (XRGB8888, I915_X_TILED)]
    );
    assert!(client.state.feedback.is_empty());
}

#[test]
fn v4_default_feedback_has_main_device_table_and_tranche() {
    let mut server = Server::new(Some(0xe280));
    let mut client = server.connect(4);
    assert!(client.state.formats.is_empty(), "no deprecated format events at v4");
    assert!(client.state.modifiers.is_empty());
    let _feedback = client.default_feedback();
    server.roundtrip(&mut client);
    insta::assert_snapshot!(client.state.feedback.join("\n"));
    assert_eq!(client.state.main_device, Some(0xe280));
    assert_eq!(
        client.state.table,
        vec![(XRGB8888, LINEAR), (ARGB8888, LINEAR), (NV12, LINEAR), (YUV420, LINEAR), (XRGB8888, I915_X_TILED)]
    );
}

fn tempfile_with_size(size: u64) -> std::fs::File {
    let path = std::env::temp_dir().join(format!("cohere-notdmabuf-{}", std::process::id()));
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).expect("temp file");
    file.set_len(size).expect("set_len");
    let _ = std::fs::remove_file(&path);
    file
}
