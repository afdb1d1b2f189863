//! linux-dmabuf with real dma-bufs: validation success for 1-, 2- and 3-plane formats with the
//! planes added out of order, refusal of fds that aren't dma-bufs, and exact pixels on screen.

use std::os::fd::{AsFd, OwnedFd};

use cohere::coherency::DmabufFdInfo;
use cohere::testkit::{heap_buffer, udmabuf, vgem_buffer, Card, MappedDmabuf};
use cohere::ShellMode;
use smithay::backend::allocator::Buffer;
use smithay::reexports::drm::buffer::DrmFourcc;

use crate::import_tests::harness::{self as ih, add, Flags};
use crate::tests::{Check, TestFn};

pub fn all() -> Vec<(&'static str, TestFn)> {
    vec![
        ("params_accept_1_2_3_plane_formats_added_in_permuted_order", params_accept_1_2_3_plane_formats_added_in_permuted_order),
        ("non_dmabuf_fds_get_failed_in_the_real_kernel", non_dmabuf_fds_get_failed_in_the_real_kernel),
        ("dmabufs_from_every_source_show_exact_pixels", dmabufs_from_every_source_show_exact_pixels),
        ("random_params_sequences_with_real_dmabufs", random_params_sequences_with_real_dmabufs),
    ]
}

/// tests/import's random sequences, with udmabufs among the fds: now some buffers are valid
/// and `created`, next to `failed` answers and every protocol error, from clients of every
/// version; nothing that isn't a dma-buf is ever accepted.
fn random_params_sequences_with_real_dmabufs() -> Result<(), String> {
    use crate::import_tests::fuzz;
    let cases = 1000;
    let tally = fuzz::run_cases(cases, true)?;
    fuzz::check_tally(&tally, cases)?;
    if tally.created == 0 {
        return Err(format!("no valid udmabuf buffer was created: {tally:?}"));
    }
    Ok(())
}

pub(crate) fn source(name: &str, size: usize) -> Result<(MappedDmabuf, Option<Card>), String> {
    Ok(match name {
        "udmabuf" => (udmabuf(size).check("udmabuf")?, None),
        "system" => (heap_buffer(size).check("heap")?, None),
        _ => {
            let vgem = Card::open_driver("vgem").check("vgem")?;
            // A 1024-wide XRGB dumb buffer is 4 KiB per row; enough rows for `size` bytes.
            let rows = (size as u32).div_ceil(4096).max(1);
            let buffer = vgem_buffer(&vgem, 1024, rows).check("vgem")?;
            (buffer, Some(vgem))
        }
    })
}

/// (format, name, planes as (plane_idx, offset, stride), order added) for a 64x32 buffer.
type Layout = (u32, &'static str, Vec<(u32, u32, u32)>, Vec<usize>);

fn layouts() -> Vec<Layout> {
    vec![
        (ih::XRGB8888, "XRGB8888", vec![(0, 0, 256)], vec![0]),
        (ih::NV12, "NV12", vec![(0, 0, 64), (1, 2048, 64)], vec![1, 0]),
        (ih::YUV420, "YUV420", vec![(0, 0, 64), (1, 2048, 32), (2, 2560, 32)], vec![2, 0, 1]),
    ]
}

fn params_accept_1_2_3_plane_formats_added_in_permuted_order() -> Result<(), String> {
    for exporter in ["udmabuf", "system", "drm"] {
        for (format, name, planes, order) in layouts() {
            let (buffer, _card) = source(exporter, 8192)?;
            let mut server = ih::Server::new(None);
            let mut client = server.connect(4);
            let params = client.params(1);
            for &i in &order {
                let (idx, offset, stride) = planes[i];
                // Each plane gets its own fd for the same buffer, as clients commonly send.
                let fd: OwnedFd = buffer.fd.try_clone().check("dup")?;
                add(&params, fd.as_fd(), idx, offset, stride, ih::LINEAR);
            }
            params.create(64, 32, format, Flags::empty());
            server.roundtrip(&mut client);
            let what = format!("{exporter} {name} added in order {order:?}");
            if let Some(err) = client.error() {
                return Err(format!("{what}: protocol error {err:?}"));
            }
            if client.state.created != vec![1] {
                return Err(format!("{what}: expected created, got failed={:?}", client.state.failed));
            }
            let dmabuf = server.state.accepted.first().ok_or(format!("{what}: hook not called"))?;
            let offsets: Vec<u32> = dmabuf.offsets().collect();
            let strides: Vec<u32> = dmabuf.strides().collect();
            let want_offsets: Vec<u32> = planes.iter().map(|p| p.1).collect();
            let want_strides: Vec<u32> = planes.iter().map(|p| p.2).collect();
            if offsets != want_offsets || strides != want_strides {
                return Err(format!("{what}: planes not in plane_idx order: offsets {offsets:?} strides {strides:?}"));
            }
            if dmabuf.size() != (64, 32).into() || dmabuf.format().code as u32 != format {
                return Err(format!("{what}: wrong size or format {:?}", dmabuf.format()));
            }
            for fd in dmabuf.handles() {
                let info = DmabufFdInfo::read(fd).check("fdinfo of imported plane")?;
                if info.exp_name != exporter {
                    return Err(format!("{what}: plane fd exporter {}", info.exp_name));
                }
            }
        }
    }
    Ok(())
}

fn non_dmabuf_fds_get_failed_in_the_real_kernel() -> Result<(), String> {
    let memfd = ih::memfd(4096);
    let file = tempfile::tempfile().check("tempfile")?;
    file.set_len(4096).check("set_len")?;
    let (pipe, _w) = rustix::pipe::pipe().check("pipe")?;
    let mut server = ih::Server::new(None);
    let mut client = server.connect(3);
    let fds: [OwnedFd; 3] = [memfd, file.into(), pipe];
    for (tag, fd) in fds.iter().enumerate() {
        let params = client.params(tag as u32);
        add(&params, fd.as_fd(), 0, 0, 64, ih::LINEAR);
        params.create(16, 16, ih::XRGB8888, Flags::empty());
    }
    server.roundtrip(&mut client);
    if client.error().is_some() || client.state.failed != vec![0, 1, 2] || !server.state.accepted.is_empty() {
        return Err(format!("memfd, file, pipe: error {:?}, failed {:?}", client.error(), client.state.failed));
    }
    Ok(())
}

/// Premultiplied ARGB with varying alpha; over the kiosk's black fill it shows as its RGB.
fn pixel(x: i32, y: i32, with_alpha: bool) -> u32 {
    let a = if with_alpha { 0x40 + ((x + y) as u32 % 0xc0) } else { 0xff };
    let scale = |c: u32| c * a / 0xff;
    let (r, g, b) = (scale((x * 5) as u32 & 0xff), scale((y * 3) as u32 & 0xff), scale(((x ^ y) * 7) as u32 & 0xff));
    (a << 24) | (r << 16) | (g << 8) | b
}

fn dmabufs_from_every_source_show_exact_pixels() -> Result<(), String> {
    let (w, h) = crate::harness::OUTPUT;
    for exporter in ["udmabuf", "system", "drm"] {
        for (fourcc, with_alpha) in [(DrmFourcc::Xrgb8888, false), (DrmFourcc::Argb8888, true)] {
            let what = format!("{exporter} {fourcc:?}");
            let mut fx = crate::harness::Fixture::new(ShellMode::Kiosk);
            let id = fx.add_client();
            let window = fx.client(id).create_window("dmabuf");
            fx.roundtrip(id);
            fx.client(id).ack_last_configure(&window);
            let pixels: Vec<u8> = (0..w * h).flat_map(|i| pixel(i % w, i / w, with_alpha).to_le_bytes()).collect();
            // vgem rows are 4096 bytes (1024-pixel dumb buffers): write row by row at that stride.
            let stride = if exporter == "drm" { 4096 } else { (w * 4) as u32 };
            let (buffer, _card) = source(exporter, stride as usize * h as usize)?;
            let mut bytes = vec![0u8; buffer.size];
            for row in 0..h as usize {
                let src = &pixels[row * w as usize * 4..(row + 1) * w as usize * 4];
                bytes[row * stride as usize..row * stride as usize + src.len()].copy_from_slice(src);
            }
            buffer.write(&bytes).check("fill")?;
            let wl_buffer = fx.client(id).dmabuf_buffer(buffer.as_fd(), (w, h, stride), fourcc as u32, 0, 1);
            window.surface.attach(Some(&wl_buffer), 0, 0);
            window.surface.damage_buffer(0, 0, w, h);
            fx.client(id).presentation_feedback(&window.surface, 1);
            window.surface.commit();
            fx.roundtrip(id);
            // A copied buffer's commit applies once the copy thread is done with it: draw
            // frames until this commit was presented.
            crate::cohere::wait_for(&format!("{what}: the commit to be presented"), || {
                fx.frame();
                if fx.client(id).state.presentations.is_empty() {
                    Err("not presented yet".to_owned())
                } else {
                    Ok(())
                }
            })?;
            let shot = fx.screenshot();
            let mut wrong = 0;
            for i in 0..w * h {
                let p = pixel(i % w, i / w, with_alpha);
                let want = [(p >> 16) as u8, (p >> 8) as u8, p as u8, 0xff];
                if shot.pixel((i % w) as u32, (i / w) as u32) != Some(want) {
                    wrong += 1;
                }
            }
            if wrong != 0 {
                return Err(format!("{what}: {wrong} of {} pixels differ", w * h));
            }
        }
    }
    Ok(())
}
