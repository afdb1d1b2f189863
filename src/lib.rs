//! cohere: a Smithay-based Wayland compositor and dma-buf import backend.
//!
//! cohere validates every client dma-buf at import and works out, from facts about the buffer and
//! the machine, which consumers (render GPU, display controller, CPU) can read it coherently, then
//! picks the cheapest correct path to show it. See ARCHITECTURE.md for the map of modules.
//!
//! # How to use
//!
//! A headless compositor with one 640x480 output, driven by hand. The `cohere` binary does the
//! same with [`Compositor::run`] and a listening socket.
//!
//! ```no_run
//! use cohere::{Compositor, Options, OutputConfig, ShellMode, SocketChoice};
//!
//! let options = Options {
//!     shell: ShellMode::Kiosk,
//!     outputs: vec![OutputConfig { size: (640, 480), refresh_mhz: 60_000 }],
//!     socket: SocketChoice::Auto,
//!     exit_after_frames: Some(120),
//!     ..Options::default()
//! };
//! let mut compositor = Compositor::new_headless(options)?;
//! println!("WAYLAND_DISPLAY={:?}", compositor.socket_name());
//! let exit = compositor.run();
//! println!("stopped: {exit:?}");
//! # Ok::<(), cohere::StartError>(())
//! ```

pub mod backend;
pub mod buffer_path;
pub mod coherency;
pub mod commit;
pub mod compositor;
pub mod core;
pub mod cursor;
pub mod import;
mod input;
pub mod path;
mod paths;
pub mod render;
pub mod shell;
mod state;
pub mod stats;
pub mod sync;
#[cfg(feature = "test-support")]
pub mod testkit;

/// Crates whose types appear in cohere's API, for embedders and for `delegate_import!`.
pub mod reexports {
    pub use smithay;
}

pub use backend::drm::Drm;
pub use backend::headless::Headless;
pub use backend::renderer::{RendererDecision, RendererKind, RendererPreference};
pub use backend::Backend;
pub use compositor::{Compositor, Exit, FramePacing, Offer, Options, ScreenshotRequest, SocketChoice, StartError};
pub use core::{Core, Counters, OutputConfig, OutputCounters};
pub use render::Screenshot;
pub use shell::ShellMode;
pub use state::State;

/// Displays an error with its sources, `outer: inner: innermost`, for one-line messages and
/// logs (`tracing::warn!(err = %ErrorChain(&err), ..)`).
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'a));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
