//! A shadow: the cached memory a copied surface is drawn from. The copy thread writes the
//! damaged rows into it ([`ShadowBuffer::write`]) and the renderer draws from it
//! ([`ShadowBuffer::texture`]), so each damaged byte crosses memory once on its way to the
//! renderer:
//! - Pixman reads the shadow in place. With the `pixman` feature the shadow's memory is a
//!   pixman image (pixman allocates it and frees it with the image), and the element hands that
//!   image to the renderer as its texture: nothing is uploaded, and a frame that puts the client
//!   buffer on a plane touches the shadow not at all.
//! - Any other renderer gets the damage since it last looked uploaded into a texture of its own
//!   (`ImportMem`), as smithay's `MemoryRenderBuffer` does; a GPU has to read the pixels into
//!   its memory once anyway.
//!
//! A frame must show one copy, never part of the next: an element that draws the pixels in
//! place pins them ([`ReadPin`]) from its creation, when it takes its damage, until it is
//! dropped after the frame; a copy waits for the pins to go. An upload happens under the lock,
//! when the element is made, and pins nothing.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use smithay::backend::allocator::Fourcc;
use smithay::backend::renderer::utils::{CommitCounter, DamageBag};
use smithay::backend::renderer::{ErasedContextId, ImportMem, Renderer};
use smithay::utils::{Buffer as BufferCoords, Rectangle, Size, Transform};

/// A surface's shadow: cheap to clone (clones share the memory).
#[derive(Clone)]
pub struct ShadowBuffer(Arc<Inner>);

struct Inner {
    format: Fourcc,
    size: Size<i32, BufferCoords>,
    scale: i32,
    transform: Transform,
    /// Bytes per row of `Pixels`.
    stride: usize,
    state: Mutex<State>,
    /// Signalled when the last pin goes.
    unpinned: Condvar,
}

struct State {
    pixels: Pixels,
    damage: DamageBag<i32, BufferCoords>,
    /// Each uploading renderer's texture, and the commit it holds.
    uploads: HashMap<ErasedContextId, (Box<dyn Any + Send>, CommitCounter)>,
    /// Elements that read the pixels in place and haven't been dropped yet.
    pins: usize,
}

enum Pixels {
    /// Ordinary memory, uploaded to the renderer.
    Heap(Vec<u8>),
    /// A pixman image's memory, which a Pixman renderer reads in place.
    #[cfg(feature = "pixman")]
    Pixman(pixman::PixmanPixels),
}

impl Pixels {
    /// Pixman's memory where the `pixman` feature can have it, else ordinary memory.
    fn new(format: Fourcc, w: usize, h: usize, cpp: usize) -> Self {
        #[cfg(feature = "pixman")]
        if let Some(pixels) = pixman::PixmanPixels::new(format, w, h, cpp) {
            return Pixels::Pixman(pixels);
        }
        #[cfg(not(feature = "pixman"))]
        let _ = format;
        Pixels::Heap(vec![0; w * h * cpp])
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Pixels::Heap(bytes) => bytes,
            #[cfg(feature = "pixman")]
            Pixels::Pixman(p) => p.bytes(),
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Pixels::Heap(bytes) => bytes,
            #[cfg(feature = "pixman")]
            Pixels::Pixman(p) => p.bytes_mut(),
        }
    }
}

impl std::fmt::Debug for ShadowBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowBuffer").field("format", &self.0.format).field("size", &self.0.size).field("stride", &self.0.stride).finish()
    }
}

impl ShadowBuffer {
    /// A shadow of `size` pixels of `format` (`cpp` bytes each), drawn with `scale` and
    /// `transform`. Its content is undefined until a copy wrote it all.
    pub fn new(format: Fourcc, size: Size<i32, BufferCoords>, cpp: usize, scale: i32, transform: Transform) -> Self {
        let (w, h) = (size.w.max(0) as usize, size.h.max(0) as usize);
        let state = State { pixels: Pixels::new(format, w, h, cpp), damage: DamageBag::default(), uploads: HashMap::new(), pins: 0 };
        Self(Arc::new(Inner { format, size, scale, transform, stride: w * cpp, state: Mutex::new(state), unpinned: Condvar::new() }))
    }

    /// Bytes per row.
    pub fn stride(&self) -> usize {
        self.0.stride
    }

    /// The shadow's size in pixels, scale and transform.
    pub fn layout(&self) -> (Size<i32, BufferCoords>, i32, Transform) {
        (self.0.size, self.0.scale, self.0.transform)
    }

    /// The parts renderers may treat as opaque: all of it for a format without alpha (as
    /// smithay treats such a client buffer), so nothing under it is drawn or blended.
    pub fn opaque_regions(&self) -> Option<Vec<Rectangle<i32, BufferCoords>>> {
        (!smithay::backend::allocator::format::has_alpha(self.0.format)).then(|| vec![Rectangle::from_size(self.0.size)])
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `write` on the pixels once no frame draws from them, and records the rectangles it
    /// returns as damaged. A frame being made meanwhile waits for it.
    pub fn write(&self, write: impl FnOnce(&mut [u8]) -> Vec<Rectangle<i32, BufferCoords>>) {
        let mut state = self.lock();
        while state.pins > 0 {
            state = self.0.unpinned.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        let damage = write(state.pixels.bytes_mut());
        state.damage.add(damage);
    }

    /// The texture `renderer` draws the shadow from, the shadow's damage history, and the pin
    /// to keep until the frame is drawn when the renderer reads the pixels in place.
    pub fn texture<R>(&self, renderer: &mut R) -> Result<Texture<R::TextureId>, R::Error>
    where
        R: Renderer + ImportMem,
        R::TextureId: Send + Clone + 'static,
    {
        let mut state = self.lock();
        let damage = state.damage.snapshot();
        #[cfg(feature = "pixman")]
        if let Pixels::Pixman(pixels) = &state.pixels {
            // Only where the renderer's texture type is smithay's Pixman texture.
            if let Ok(texture) = (Box::new(pixels.texture()) as Box<dyn Any>).downcast::<R::TextureId>() {
                state.pins += 1;
                return Ok(Texture { texture: *texture, damage, pin: Some(ReadPin(self.0.clone())) });
            }
        }
        let context = renderer.context_id().erased();
        let now = damage.current_commit();
        let State { pixels, uploads, .. } = &mut *state;
        let texture = match uploads.get(&context).and_then(|(t, seen)| Some((t.downcast_ref::<R::TextureId>()?.clone(), *seen))) {
            Some((texture, seen)) => {
                let changed = damage.damage_since(Some(seen)).map(|d| d.iter().copied().reduce(|a, b| a.merge(b)));
                match changed {
                    Some(None) => {}
                    Some(Some(rect)) => renderer.update_memory(&texture, pixels.bytes(), rect)?,
                    None => renderer.update_memory(&texture, pixels.bytes(), Rectangle::from_size(self.0.size))?,
                }
                texture
            }
            None => renderer.import_memory(pixels.bytes(), self.0.format, self.0.size, false)?,
        };
        uploads.insert(context, (Box::new(texture.clone()), now));
        Ok(Texture { texture, damage, pin: None })
    }
}

/// What an element draws a shadow with.
pub struct Texture<T> {
    /// The renderer's texture of the shadow.
    pub texture: T,
    /// The shadow's damage history when the texture was taken.
    pub damage: smithay::backend::renderer::utils::DamageSnapshot<i32, BufferCoords>,
    /// Held while the renderer may read the pixels in place.
    pub pin: Option<ReadPin>,
}

/// Keeps copies out of a shadow a frame draws in place; dropped with the frame's element.
pub struct ReadPin(Arc<Inner>);

impl std::fmt::Debug for ReadPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadPin")
    }
}

impl Drop for ReadPin {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        state.pins = state.pins.saturating_sub(1);
        if state.pins == 0 {
            self.0.unpinned.notify_all();
        }
    }
}

#[cfg(feature = "pixman")]
mod pixman {
    use smithay::backend::allocator::Fourcc;
    use smithay::backend::renderer::pixman::PixmanTexture;
    use smithay::reexports::pixman::{FormatCode, Image};

    /// A pixman image's memory, and the texture that owns the image.
    pub(super) struct PixmanPixels {
        texture: PixmanTexture,
        bits: *mut u8,
        len: usize,
    }

    // SAFETY: `bits` points into the image `texture` owns, which pixman frees only with the
    // image's last reference, and this struct holds one. The bytes are reached only through
    // `&self`/`&mut self` of this struct, which sits in the shadow's mutex, and a writer waits
    // for every renderer that reads them in place to be done (see `ShadowBuffer::write`).
    unsafe impl Send for PixmanPixels {}

    impl PixmanPixels {
        /// A pixman image of `w` x `h` pixels of `format`, if pixman knows the format and lays
        /// its rows out `w * cpp` bytes apart, as the copy writes them.
        pub(super) fn new(format: Fourcc, w: usize, h: usize, cpp: usize) -> Option<Self> {
            if w == 0 || h == 0 {
                return None;
            }
            let code = FormatCode::try_from(format).ok()?;
            let image = Image::new(code, w, h, false).ok()?;
            if image.stride() != w * cpp {
                return None;
            }
            // SAFETY: pixman allocated `stride * height` bytes for the image, valid while it
            // lives (it moves into the texture below, which this struct keeps).
            let bits = unsafe { image.data() }.cast::<u8>();
            Some(Self { texture: PixmanTexture::from(image), bits, len: w * cpp * h })
        }

        pub(super) fn texture(&self) -> PixmanTexture {
            self.texture.clone()
        }

        pub(super) fn bytes(&self) -> &[u8] {
            // SAFETY: see the `Send` impl: valid, `len` bytes, not written while borrowed.
            unsafe { std::slice::from_raw_parts(self.bits, self.len) }
        }

        pub(super) fn bytes_mut(&mut self) -> &mut [u8] {
            // SAFETY: as `bytes`; `&mut self` under the shadow's lock, with no pin, is the only
            // access.
            unsafe { std::slice::from_raw_parts_mut(self.bits, self.len) }
        }
    }
}

#[cfg(all(test, feature = "pixman"))]
mod tests {
    use super::*;
    use smithay::backend::renderer::pixman::{PixmanRenderer, PixmanTexture};
    use smithay::backend::renderer::ExportMem;

    const SIZE: (i32, i32) = (4, 2);

    fn shadow() -> ShadowBuffer {
        ShadowBuffer::new(Fourcc::Xrgb8888, SIZE.into(), 4, 1, Transform::Normal)
    }

    /// Writes `byte` into every pixel, as a copy of the whole buffer.
    fn fill(shadow: &ShadowBuffer, byte: u8) {
        shadow.write(|bytes| {
            bytes.fill(byte);
            vec![Rectangle::from_size(SIZE.into())]
        });
    }

    /// What the renderer reads from `texture`, as bytes.
    fn read(renderer: &mut PixmanRenderer, texture: &PixmanTexture) -> Vec<u8> {
        let mapping = renderer.copy_texture(texture, Rectangle::from_size(SIZE.into()), Fourcc::Xrgb8888).unwrap();
        renderer.map_texture(&mapping).unwrap().to_vec()
    }

    #[test]
    fn pixman_reads_the_shadow_in_place() {
        let mut renderer = PixmanRenderer::new().unwrap();
        let shadow = shadow();
        fill(&shadow, 0x11);
        let first = shadow.texture(&mut renderer).unwrap();
        assert!(first.pin.is_some(), "a renderer that reads in place pins the shadow");
        assert_eq!(read(&mut renderer, &first.texture), vec![0x11; 32]);
        let seen = first.damage.current_commit();
        drop(first.pin);

        fill(&shadow, 0x22);
        // The texture taken before the copy shows it: nothing was uploaded anywhere.
        assert_eq!(read(&mut renderer, &first.texture), vec![0x22; 32]);
        let second = shadow.texture(&mut renderer).unwrap();
        let damage = second.damage.damage_since(Some(seen)).expect("a recent commit");
        assert_eq!(damage.to_vec(), vec![Rectangle::from_size(SIZE.into())], "the copy's rectangles are the damage");
    }

    #[test]
    fn a_copy_waits_for_the_frame_that_reads_in_place() {
        let mut renderer = PixmanRenderer::new().unwrap();
        let shadow = shadow();
        fill(&shadow, 0x11);
        let frame = shadow.texture(&mut renderer).unwrap();
        let copy = {
            let shadow = shadow.clone();
            std::thread::spawn(move || fill(&shadow, 0x33))
        };
        // However far the copy thread got, the frame still reads what it was made with.
        assert_eq!(read(&mut renderer, &frame.texture), vec![0x11; 32]);
        drop(frame.pin);
        copy.join().unwrap();
        assert_eq!(read(&mut renderer, &frame.texture), vec![0x33; 32]);
    }
}
