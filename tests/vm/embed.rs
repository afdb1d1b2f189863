//! cohere as another compositor embeds it, with real buffers: `examples/embed.rs` showing a
//! udmabuf (read directly by Pixman) and a vgem buffer (through the CPU copy) exactly; the
//! scanout filter holding its veto around smithay's GBM exporter when `Dmabuf::node()` says
//! otherwise (as smithay's MultiRenderer sets it); and the surface lookup that is safe inside
//! a surface-tree callback.

use std::os::fd::AsFd;

use cohere::coherency::{CoherencyOptions, DeviceId};
use cohere::path::direct::ScanoutFilter;
use cohere::{Options, RendererPreference, ShellMode};
use smithay::backend::allocator::gbm::{GbmAllocator, GbmBufferFlags, GbmDevice};
use smithay::backend::allocator::{Allocator, Buffer as _, Fourcc, Modifier};
use smithay::backend::drm::exporter::gbm::GbmFramebufferExporter;
use smithay::backend::drm::exporter::{ExportBuffer, ExportFramebuffer};
use smithay::backend::drm::{DrmDeviceFd, DrmNode};
use smithay::backend::renderer::element::Kind;
use smithay::utils::DeviceFd;

use crate::client_mode::CLIENT_MODE;
use crate::cohere::run_embed_example;
use crate::harness::{Fixture, OUTPUT};
use crate::tests::{ensure_eq, test_image, Check, TestFn};

pub fn all() -> Vec<(&'static str, TestFn)> {
    vec![
        (
            "embed_example_shows_a_udmabuf_directly_and_a_vgem_buffer_copied",
            embed_example_shows_a_udmabuf_directly_and_a_vgem_buffer_copied,
        ),
        ("scanout_filter_vetoes_despite_a_rewritten_node_with_gbm", scanout_filter_vetoes_despite_a_rewritten_node_with_gbm),
        ("surface_lookup_inside_a_surface_tree_callback", surface_lookup_inside_a_surface_tree_callback),
        ("guarded_renderer_refuses_to_read_what_the_plan_copies", guarded_renderer_refuses_to_read_what_the_plan_copies),
    ]
}

fn embed_example_shows_a_udmabuf_directly_and_a_vgem_buffer_copied() -> Result<(), String> {
    let me = crate::kms::me()?;
    for (source, plan, copies) in
        [("udmabuf", "render (pixman): Direct", "cpu-copies 0"), ("vgem", "render (pixman): CpuCopy", "cpu-copies 1")]
    {
        let what = |e: String| format!("{source}: {e}");
        let (status, text, (w, h, rgba)) =
            run_embed_example(&[&me, CLIENT_MODE, "320", "240"], &[("COHERE_CLIENT_SOURCE", source)]).map_err(what)?;
        ensure_eq!(status, Some(0), "{source}: exit status; it printed:\n{text}");
        if !text.contains(&format!("plan: {plan}")) || !text.contains(copies) {
            return Err(what(format!("expected {plan:?} and {copies:?}:\n{text}")));
        }
        crate::headless::compare(&rgba, w, &test_image(320, 240)).map_err(what)?;
        ensure_eq!(h, 240, "{source}: screenshot height");
    }
    Ok(())
}

/// A fixture compositor (the plans) with a udmabuf on screen, and the buffer's server-side
/// `wl_buffer`.
fn planned_udmabuf(config: Option<String>) -> Result<(crate::buffer_path::Shown, smithay::backend::renderer::utils::Buffer), String> {
    let coherency = CoherencyOptions { config_file: config.map(Into::into), ..CoherencyOptions::default() };
    let fx =
        Fixture::with_options(Options { shell: ShellMode::Kiosk, renderer: RendererPreference::Pixman, coherency, ..Options::default() });
    let shown = crate::buffer_path::Shown::new(fx, "udmabuf")?;
    let window = shown.fx.compositor.state.core.space.elements().next().cloned().ok_or("no window")?;
    let surface = window.toplevel().ok_or("not a toplevel")?.wl_surface().clone();
    let buffer =
        smithay::backend::renderer::utils::with_renderer_surface_state(&surface, |s| s.buffer().cloned()).flatten().ok_or("no buffer")?;
    Ok((shown, buffer))
}

fn scanout_filter_vetoes_despite_a_rewritten_node_with_gbm() -> Result<(), String> {
    let _display = crate::tests::vkms_display();
    let card = cohere::testkit::Card::open_driver("vkms").check("vkms")?;
    let fd = DrmDeviceFd::new(DeviceFd::from(card.as_fd().try_clone_to_owned().check("dup")?));
    let node = DrmNode::from_file(fd.as_fd()).check("vkms node")?;
    let gbm = GbmDevice::new(fd.clone()).check("GBM on vkms")?;
    // A GBM swapchain's exporter that takes client buffers from this node, as a compositor
    // with a MultiRenderer builds it.
    let exporter = || GbmFramebufferExporter::new(gbm.clone(), Some(node));
    let (w, h) = (OUTPUT.0 as u32, OUTPUT.1 as u32);

    // Allowed on vkms by the plan: taken, though its node isn't the exporter's.
    let (allowed, buffer) = planned_udmabuf(None)?;
    let filter = ScanoutFilter::new(exporter(), DeviceId::from(node), allowed.fx.compositor.state.backend.coherency.plans.verdicts());
    let wl = ExportBuffer::Wayland(&buffer);
    ensure_eq!(
        (exporter().can_add_framebuffer(&wl), filter.can_add_framebuffer(&wl)),
        (false, true),
        "allowed buffer: bare exporter, filter"
    );
    let fb = filter.add_framebuffer(&fd, ExportBuffer::Wayland(&buffer), true).check("framebuffer of the allowed buffer")?;
    ensure_eq!(fb.is_some(), true, "the allowed buffer got a framebuffer");

    // Composited on vkms by the plan (non-snooping scanout, no attachment sync), then marked
    // with vkms's node as smithay's MultiRenderer marks buffers it imported: the bare exporter
    // would scan it out; the filter doesn't.
    let (vetoed, buffer) = planned_udmabuf(Some(crate::maintenance::composite_on_vkms()?))?;
    let dmabuf = smithay::wayland::dmabuf::get_dmabuf(&buffer).check("the dma-buf")?.clone();
    dmabuf.set_node(Some(node));
    let filter = ScanoutFilter::new(exporter(), DeviceId::from(node), vetoed.fx.compositor.state.backend.coherency.plans.verdicts());
    let wl = ExportBuffer::Wayland(&buffer);
    ensure_eq!(
        (exporter().can_add_framebuffer(&wl), filter.can_add_framebuffer(&wl)),
        (true, false),
        "vetoed buffer: bare exporter, filter"
    );
    let fb = filter.add_framebuffer(&fd, ExportBuffer::Wayland(&buffer), true).check("framebuffer of the vetoed buffer")?;
    ensure_eq!(fb.is_none(), true, "the vetoed buffer got no framebuffer");

    // The swapchain's own buffers pass through.
    let mut allocator = GbmAllocator::new(gbm.clone(), GbmBufferFlags::RENDERING | GbmBufferFlags::SCANOUT);
    let bo = allocator.create_buffer(w, h, Fourcc::Xrgb8888, &[Modifier::Linear]).check("a GBM swapchain buffer")?;
    let fb = filter.add_framebuffer(&fd, ExportBuffer::Allocator(&bo), true).check("framebuffer of a swapchain buffer")?;
    ensure_eq!(fb.is_some(), true, "the swapchain buffer got a framebuffer");
    Ok(())
}

/// `import::states_dmabuf` is the lookup for code that holds a surface's state already: called
/// inside a surface-tree callback it answers (where `surface_dmabuf` would lock the state again
/// and deadlock).
fn surface_lookup_inside_a_surface_tree_callback() -> Result<(), String> {
    let (shown, _) = planned_udmabuf(None)?;
    let window = shown.fx.compositor.state.core.space.elements().next().cloned().ok_or("no window")?;
    let root = window.toplevel().ok_or("not a toplevel")?.wl_surface().clone();
    let mut found = Vec::new();
    smithay::wayland::compositor::with_surface_tree_downward(
        &root,
        (),
        |_, _, _| smithay::wayland::compositor::TraversalAction::DoChildren(()),
        |_, states, _| found.push(cohere::import::states_dmabuf(states).map(|d| d.format().code)),
        |_, _, _| true,
    );
    ensure_eq!(found, vec![Some(Fourcc::Xrgb8888)], "the dma-buf's format, found inside the callback");
    ensure_eq!(cohere::import::surface_dmabuf(&root).map(|d| d.format().code), Some(Fourcc::Xrgb8888), "outside it");
    Ok(())
}

/// A render path other than cohere's elements (smithay's own surface element, as
/// `space::render_output` builds it) through a `Guarded` renderer: a vgem buffer, which the plan
/// has Pixman read through its CPU copy, isn't imported; a udmabuf, which Pixman reads itself,
/// is. The unguarded renderer imports both (the buffers themselves are fine).
fn guarded_renderer_refuses_to_read_what_the_plan_copies() -> Result<(), String> {
    use cohere::path::guard::Guarded;
    use smithay::backend::renderer::element::surface::WaylandSurfaceRenderElement;
    use smithay::backend::renderer::pixman::PixmanRenderer;
    use smithay::backend::renderer::ImportDma;
    for (source, readable) in [("drm", false), ("udmabuf", true)] {
        let fx = Fixture::with_options(Options { shell: ShellMode::Kiosk, renderer: RendererPreference::Pixman, ..Options::default() });
        let shown = crate::buffer_path::Shown::new(fx, source)?;
        let window = shown.fx.compositor.state.core.space.elements().next().cloned().ok_or("no window")?;
        let surface = window.toplevel().ok_or("not a toplevel")?.wl_surface().clone();
        let dmabuf = cohere::import::surface_dmabuf(&surface).ok_or("no dma-buf")?;
        let verdicts = shown.fx.compositor.state.backend.coherency.plans.verdicts();
        let mut guarded = Guarded::new(PixmanRenderer::new().check("pixman")?, verdicts);
        ensure_eq!(guarded.inner_mut().import_dmabuf(&dmabuf, None).is_ok(), true, "{source}: the unguarded import");
        ensure_eq!(guarded.import_dmabuf(&dmabuf, None).is_ok(), readable, "{source}: the guarded import");
        let element = smithay::wayland::compositor::with_states(&surface, |states| {
            WaylandSurfaceRenderElement::from_surface(&mut guarded, &surface, states, (0.0, 0.0).into(), 1.0, Kind::Unspecified)
        });
        ensure_eq!(element.is_ok(), readable, "{source}: smithay's own surface element through the guard");
        ensure_eq!(guarded.refused(), if readable { 0 } else { 2 }, "{source}: imports refused");
    }
    Ok(())
}
