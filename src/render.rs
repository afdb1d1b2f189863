//! Backend-neutral frame work: which elements an output shows, what happens after a frame is
//! presented (frame callbacks, presentation feedback), and reading a frame back as pixels.

use std::cell::RefCell;
use std::time::Duration;

use smithay::backend::allocator::Fourcc;
use smithay::backend::renderer::element::memory::MemoryRenderBufferRenderElement;
use smithay::backend::renderer::element::solid::{SolidColorBuffer, SolidColorRenderElement};
use smithay::backend::renderer::element::surface::WaylandSurfaceRenderElement;
use smithay::backend::renderer::element::Element;
use smithay::backend::renderer::element::{render_elements, Kind, RenderElementStates};
use smithay::backend::renderer::{ExportMem, ImportAll, ImportMem, Renderer, Texture, TextureFilter};
use smithay::desktop::utils::{
    surface_presentation_feedback_flags_from_states, surface_primary_scanout_output, update_surface_primary_scanout_output,
    OutputPresentationFeedback,
};
use smithay::output::Output;
use smithay::reexports::wayland_protocols::wp::presentation_time::server::wp_presentation_feedback;
use smithay::utils::{Buffer as BufferCoords, Monotonic, Physical, Point, Rectangle, Scale, Time};
use smithay::wayland::presentation::Refresh;

use smithay::desktop::PopupManager;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;

use crate::backend::Backend;
use crate::core::Core;
use crate::path::cpu_copy::CopiedSurfaceElement;

/// Desktop background where no window is.
pub const DESKTOP_BACKGROUND: [f32; 4] = rgb(0x14, 0x17, 0x1c);
/// Kiosk border fill around a fullscreen surface smaller than its output.
pub const KIOSK_FILL: [f32; 4] = rgb(0, 0, 0);
/// Title bar of the focused desktop window.
pub const TITLEBAR_FOCUSED: [f32; 4] = rgb(0x33, 0x66, 0xbf);
/// Title bar of other desktop windows.
pub const TITLEBAR_UNFOCUSED: [f32; 4] = rgb(0x4c, 0x4c, 0x54);

/// Opaque colour from 8-bit channels, so renderers land on exactly these bytes.
const fn rgb(r: u8, g: u8, b: u8) -> [f32; 4] {
    [r as f32 / 255.0, g as f32 / 255.0, b as f32 / 255.0, 1.0]
}

/// Sets the renderer's sampling filter for a frame of `elements` on `output`: nearest when
/// every element is drawn at its buffer's size on whole pixels, bilinear otherwise. In a
/// pixel-exact frame each output pixel is one texel, which bilinear filtering finds by reading
/// four; a software renderer spends most of a frame sampling. Weston chooses per view the same
/// way. (The filter is the renderer's, so the choice is per frame.)
pub fn choose_filter<R: Renderer, E: Element>(renderer: &mut R, elements: &[E], output: &Output) {
    let scale = Scale::from(output.current_scale().fractional_scale());
    let filter = if elements.iter().all(|e| pixel_exact(e, scale)) { TextureFilter::Nearest } else { TextureFilter::Linear };
    if let Err(err) = renderer.upscale_filter(filter).and_then(|()| renderer.downscale_filter(filter)) {
        tracing::debug!(%err, ?filter, "texture filter");
    }
}

/// Whether `element` maps its buffer 1:1 onto whole output pixels.
fn pixel_exact<E: Element>(element: &E, scale: Scale<f64>) -> bool {
    let src = element.src();
    let size = element.transform().transform_size(src.size);
    let dst = element.geometry(scale).size.to_f64();
    src.loc.x.fract() == 0.0 && src.loc.y.fract() == 0.0 && size.w == dst.w && size.h == dst.h
}

/// The colour an output is cleared to before windows are drawn.
pub fn clear_color(mode: crate::shell::ShellMode) -> [f32; 4] {
    match mode {
        crate::shell::ShellMode::Kiosk => KIOSK_FILL,
        crate::shell::ShellMode::Desktop => DESKTOP_BACKGROUND,
    }
}

/// The element enum, in a module of its own: smithay's `render_elements!` makes items without
/// docs of their own.
#[allow(missing_docs)]
mod element {
    use super::*;
    render_elements! {
        /// Everything an output can show.
        pub OutputElement<R> where R: ImportAll + ImportMem;
        Surface = WaylandSurfaceRenderElement<R>,
        Copied = CopiedSurfaceElement<R>,
        Decoration = SolidColorRenderElement,
        Cursor = MemoryRenderBufferRenderElement<R>,
    }
}
pub use element::OutputElement;

/// Elements for `output`, topmost first, with each desktop window's title bar directly below it
/// in the stacking order so overlapping windows hide each other's bars correctly.
pub fn output_elements<B, R>(renderer: &mut R, core: &Core<B>, output: &Output) -> Vec<OutputElement<R>>
where
    B: Backend,
    R: Renderer + ImportAll + ImportMem,
    R::TextureId: Clone + Texture + Send + 'static,
{
    let Some(output_geo) = core.space.output_geometry(output) else { return Vec::new() };
    let scale = Scale::from(output.current_scale().fractional_scale());
    let mut elements = Vec::new();
    // The cursor, topmost, on the output the pointer is on.
    let pointer = core.seat.get_pointer().map(|p| p.current_location());
    if let Some(location) = pointer.filter(|p| core.cursor.seen && output_geo.to_f64().contains(*p)) {
        let local = location - output_geo.loc.to_f64();
        match crate::cursor::elements(renderer, &core.cursor.status, &core.cursor.arrow, local, scale) {
            Some(crate::cursor::CursorElements::Arrow(e)) => elements.push(OutputElement::Cursor(*e)),
            Some(crate::cursor::CursorElements::Surface(es)) => elements.extend(es.into_iter().map(OutputElement::Surface)),
            None => {}
        }
    }
    for window in core.space.elements().rev() {
        let Some(loc) = core.space.element_location(window) else { continue };
        let render_loc = (loc - window.geometry().loc - output_geo.loc).to_physical_precise_round(scale);
        if let Some(toplevel) = window.toplevel() {
            let surface = toplevel.wl_surface();
            // Popups above their window, as smithay's Window orders them.
            for (popup, offset) in PopupManager::popups_for_surface(surface) {
                let at = render_loc + (window.geometry().loc + offset - popup.geometry().loc).to_physical_precise_round(scale);
                surface_tree_elements(renderer, popup.wl_surface(), at, scale, &mut elements);
            }
            surface_tree_elements(renderer, surface, render_loc, scale, &mut elements);
        }
        if let Some((rect, focused)) = core.titlebar(window) {
            let buffer = window.user_data().get_or_insert(|| RefCell::new(SolidColorBuffer::default()));
            let mut buffer = buffer.borrow_mut();
            buffer.update(rect.size, if focused { TITLEBAR_FOCUSED } else { TITLEBAR_UNFOCUSED });
            let at: Point<f64, Physical> = (rect.loc - output_geo.loc).to_f64().to_physical(scale);
            elements.push(OutputElement::Decoration(SolidColorRenderElement::from_buffer(
                &buffer,
                at.to_i32_round(),
                scale,
                1.0,
                Kind::Unspecified,
            )));
        }
    }
    elements
}

/// One surface tree's elements, topmost first, through the plan-following builder.
fn surface_tree_elements<R>(
    renderer: &mut R,
    root: &WlSurface,
    location: Point<i32, Physical>,
    scale: Scale<f64>,
    out: &mut Vec<OutputElement<R>>,
) where
    R: Renderer + ImportAll + ImportMem,
    R::TextureId: Clone + Texture + Send + 'static,
{
    out.extend(crate::path::elements::surface_tree_elements::<R, OutputElement<R>>(
        renderer,
        root,
        location,
        scale,
        1.0,
        Kind::Unspecified,
    ));
}

/// The current attaches (see [`crate::path::release`]) of the surfaces `states` put on planes.
#[cfg(feature = "kms")]
pub(crate) fn scanned_out<B: Backend>(core: &Core<B>, states: &RenderElementStates) -> Vec<u64> {
    let mut attaches = Vec::new();
    for window in core.space.elements() {
        window.with_surfaces(|surface, _| {
            let zero_copy = states.element_render_state(surface).is_some_and(|s| {
                matches!(s.presentation_state, smithay::backend::renderer::element::RenderElementPresentationState::ZeroCopy)
            });
            if let Some(id) = core.commits.releases.current_of(surface).filter(|_| zero_copy) {
                attaches.push(id);
            }
        });
    }
    attaches
}

/// When and how a frame reached the screen, as presentation feedback tells it.
#[derive(Debug, Clone, Copy)]
pub struct Presented {
    /// When it was shown: the flip's vblank time on KMS, the frame timer's tick headless.
    pub at: Time<Monotonic>,
    /// The output's refresh period.
    pub refresh: Duration,
    /// The frame's sequence number: the vblank counter on KMS.
    pub seq: u64,
    /// What the time means: `VSYNC | HW_CLOCK | HW_COMPLETION` for a KMS flip with a
    /// monotonic vblank timestamp, none for a timer-paced headless frame. Each surface's
    /// `ZERO_COPY` is added per surface from the frame's element states.
    pub flags: wp_presentation_feedback::Kind,
}

impl Presented {
    /// A frame paced by a timer (headless): `at` is when it was rendered, `seq` counts frames,
    /// and no vblank or hardware flag is claimed.
    pub fn timer(at: Time<Monotonic>, refresh: Duration, seq: u64) -> Self {
        Self { at, refresh, seq, flags: wp_presentation_feedback::Kind::empty() }
    }
}

/// What a frame just made shows, taken when it is made (rendered, or its planes assigned): each
/// surface's main output from the frame's element states, and the presentation feedback of the
/// commits it shows. A commit applied after the frame was made waits for the next frame's
/// feedback, so its `presented` never carries the time of a frame without it.
pub fn frame_made<B: Backend>(core: &Core<B>, output: &Output, states: &RenderElementStates) -> OutputPresentationFeedback {
    let mut feedback = OutputPresentationFeedback::new(output);
    for window in core.space.elements() {
        window.with_surfaces(|surface, surface_states| {
            update_surface_primary_scanout_output(surface, output, surface_states, states, |next, _, _, _| next);
        });
        if core.space.outputs_for_element(window).contains(output) {
            window.take_presentation_feedback(&mut feedback, surface_primary_scanout_output, |surface, _| {
                surface_presentation_feedback_flags_from_states(surface, states)
            });
        }
    }
    feedback
}

/// Work that follows a presented frame (made by [`frame_made`], which gave `feedback`): count
/// the surfaces shown and record what the frame did with each, send frame callbacks (one per
/// refresh, so clients are paced by the output) and deliver the presentation feedback with the
/// presentation time.
pub fn finish_frame<B: Backend>(
    core: &mut Core<B>,
    output: &Output,
    states: &RenderElementStates,
    mut feedback: OutputPresentationFeedback,
    presented: Presented,
) {
    let presented_at = presented.at;
    core.counters_of(output).frames += 1;
    for window in core.space.elements() {
        window.with_surfaces(|surface, surface_states| {
            // Part of this frame: on a plane or drawn (not skipped as hidden).
            let shown = states.element_render_state(surface).is_some_and(|s| {
                !matches!(s.presentation_state, smithay::backend::renderer::element::RenderElementPresentationState::Skipped)
            });
            if shown {
                let counter = surface_states.data_map.get_or_insert_threadsafe(crate::core::FramesShown::default);
                counter.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // What this frame did with the surface, on the output it is mainly shown on.
            if surface_primary_scanout_output(surface, surface_states).as_ref() == Some(output) {
                crate::paths::record_frame(surface, surface_states, states, output);
            }
        });
        if core.space.outputs_for_element(window).contains(output) {
            window.send_frame(output, presented_at, Some(Duration::ZERO), surface_primary_scanout_output);
        }
    }
    feedback.presented(presented_at, Refresh::fixed(presented.refresh), presented.seq, presented.flags);
    core.space.refresh();
    core.popups.cleanup();
}

/// A frame read back from an output, as tightly packed RGBA8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Screenshot {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Rows top-down, RGBA8.
    pub rgba: Vec<u8>,
}

/// Why a frame could not be read back or written.
#[derive(Debug, thiserror::Error)]
pub enum ScreenshotError {
    #[error("no frame has been rendered on this output yet")]
    /// Nothing was drawn yet.
    NoFrame,
    #[error("the renderer could not read the frame back: {0}")]
    /// The renderer failed to read it.
    Readback(String),
    #[error("the frame is {got} bytes, expected {expected}")]
    /// It came back the wrong size.
    Size {
        /// Bytes read back.
        got: usize,
        /// Bytes expected.
        expected: usize,
    },
    #[error("PNG encoding failed: {0}")]
    /// PNG encoding failed.
    Png(#[from] png::EncodingError),
}

impl Screenshot {
    /// Returns the pixel at (x, y) as [r, g, b, a], or None outside the image.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 4]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = ((y as usize) * (self.width as usize) + x as usize) * 4;
        self.rgba.get(i..i + 4).and_then(|p| p.try_into().ok())
    }

    /// Writes the frame as an 8-bit RGBA PNG.
    pub fn write_png<W: std::io::Write>(&self, writer: W) -> Result<(), ScreenshotError> {
        let mut encoder = png::Encoder::new(writer, self.width, self.height);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.rgba)?;
        writer.finish()?;
        Ok(())
    }
}

/// Reads back `size` pixels of the bound framebuffer. The result is opaque: the alpha channel
/// of a scanout buffer carries no meaning for what a display shows.
pub fn read_framebuffer<R>(
    renderer: &mut R,
    framebuffer: &R::Framebuffer<'_>,
    width: u32,
    height: u32,
) -> Result<Screenshot, ScreenshotError>
where
    R: ExportMem,
{
    let region: Rectangle<i32, BufferCoords> = Rectangle::from_size((width as i32, height as i32).into());
    let mapping = renderer.copy_framebuffer(framebuffer, region, Fourcc::Abgr8888).map_err(|e| ScreenshotError::Readback(e.to_string()))?;
    let bytes = renderer.map_texture(&mapping).map_err(|e| ScreenshotError::Readback(e.to_string()))?;
    let stride = width as usize * 4;
    let expected = stride * height as usize;
    if bytes.len() < expected {
        return Err(ScreenshotError::Size { got: bytes.len(), expected });
    }
    // Rows come top-down from both renderers: smithay's GLES renderer draws offscreen targets
    // y-inverted so that reading them back needs no flip (`TextureMapping::flipped` describes
    // texture sampling, not this readback). The Pixman-vs-GLES test holds this in place.
    let mut rgba = bytes[..expected].to_vec();
    for px in rgba.chunks_exact_mut(4) {
        px[3] = 0xff;
    }
    Ok(Screenshot { width, height, rgba })
}

#[cfg(test)]
mod filter_tests {
    use super::*;
    use smithay::backend::renderer::element::Id;
    use smithay::backend::renderer::utils::CommitCounter;
    use smithay::utils::Transform;

    /// An element that shows `src` of its buffer at `dst`, turned by `transform`.
    struct Placed {
        id: Id,
        src: Rectangle<f64, BufferCoords>,
        dst: Rectangle<i32, Physical>,
        transform: Transform,
    }

    impl Element for Placed {
        fn id(&self) -> &Id {
            &self.id
        }
        fn current_commit(&self) -> CommitCounter {
            CommitCounter::default()
        }
        fn src(&self) -> Rectangle<f64, BufferCoords> {
            self.src
        }
        fn geometry(&self, _: Scale<f64>) -> Rectangle<i32, Physical> {
            self.dst
        }
        fn transform(&self) -> Transform {
            self.transform
        }
    }

    fn placed(src: (f64, f64, f64, f64), dst: (i32, i32), transform: Transform) -> Placed {
        Placed {
            id: Id::new(),
            src: Rectangle::new((src.0, src.1).into(), (src.2, src.3).into()),
            dst: Rectangle::new((5, 7).into(), dst.into()),
            transform,
        }
    }

    #[test]
    fn only_one_to_one_whole_pixel_elements_are_pixel_exact() {
        let one = Scale::from(1.0);
        assert!(pixel_exact(&placed((0.0, 0.0, 64.0, 32.0), (64, 32), Transform::Normal), one));
        assert!(pixel_exact(&placed((0.0, 0.0, 64.0, 32.0), (32, 64), Transform::_90), one), "a quarter turn is still 1:1");
        assert!(!pixel_exact(&placed((0.0, 0.0, 64.0, 32.0), (128, 64), Transform::Normal), one), "scaled up");
        assert!(!pixel_exact(&placed((0.0, 0.0, 64.0, 32.0), (64, 32), Transform::_90), one), "turned but not resized");
        assert!(!pixel_exact(&placed((0.5, 0.0, 64.0, 32.0), (64, 32), Transform::Normal), one), "a sub-pixel source");
        assert!(!pixel_exact(&placed((0.0, 0.0, 63.5, 32.0), (64, 32), Transform::Normal), one), "a viewport that stretches");
    }
}
