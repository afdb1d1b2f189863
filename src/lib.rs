//! cohere: a Smithay-based Wayland compositor and dma-buf import backend.
//!
//! cohere validates every client dma-buf at import and works out, from facts about the buffer and
//! the machine, which consumers (render GPU, display controller, CPU) can read it coherently, then
//! picks the cheapest correct path to show it. See ARCHITECTURE.md for the map of modules.
//!
//! # How to use
//!
//! Without features this crate is the part any smithay compositor can embed, each piece in
//! smithay's `XState` / `XHandler` / `delegate_x!` shape:
//! - [`import`]: linux-dmabuf, every request validated, and the import hook's plan
//!   ([`import::plan_and_test_import`]);
//! - [`coherency`]: the facts and the plan of each buffer ([`coherency::CoherencyState`]);
//! - [`commit`]: the commit pipeline (fence waits, CPU copies, cache maintenance, releases);
//! - [`path`]: the plan-following surface elements ([`path::elements`]), the scanout filter for
//!   any framebuffer exporter ([`path::direct::ScanoutFilter`]) and the renderer guard
//!   ([`path::guard::Guarded`]);
//! - [`sync`]: fences and linux-drm-syncobj-v1; [`buffer_path`]: cohere-buffer-path-v1.
//!
//! `examples/embed.rs` is a whole compositor built from them. The `compositor` feature adds
//! cohere's own compositor (`Compositor`, headless), `kms` its KMS backend, `cli` the binary.
//!
//! ```no_run
//! use cohere::coherency::{CoherencyOptions, CoherencyState, ProbeOptions, RendererChoice};
//!
//! // The quirk database and the user's overrides, then the machine's facts.
//! let quirks = CoherencyOptions::default().load()?;
//! let coherency = CoherencyState::new(quirks, &ProbeOptions::live(RendererChoice::Cpu("pixman".into())));
//! // Plans are made at import (cohere::import::plan_and_test_import); their answers are
//! // shared with the scanout filters and the renderer guard:
//! let verdicts = coherency.plans.verdicts();
//! # let _ = verdicts;
//! # Ok::<(), cohere::coherency::QuirkError>(())
//! ```

#![warn(missing_docs)]

#[cfg(feature = "compositor")]
pub mod backend;
pub mod buffer_path;
pub mod coherency;
pub mod commit;
#[cfg(feature = "compositor")]
pub mod compositor;
#[cfg(feature = "compositor")]
pub mod core;
#[cfg(feature = "compositor")]
pub mod cursor;
pub mod import;
#[cfg(feature = "compositor")]
mod input;
pub mod path;
#[cfg(feature = "compositor")]
mod paths;
#[cfg(feature = "compositor")]
pub mod render;
#[cfg(feature = "compositor")]
pub mod shell;
#[cfg(feature = "compositor")]
mod state;
#[cfg(feature = "compositor")]
pub mod stats;
pub mod sync;
#[cfg(feature = "test-support")]
pub mod testkit;

/// Crates whose types appear in cohere's API, for embedders and for `delegate_import!`.
pub mod reexports {
    pub use smithay;
}

#[cfg(feature = "kms")]
pub use backend::drm::Drm;
#[cfg(feature = "compositor")]
pub use backend::headless::Headless;
#[cfg(feature = "compositor")]
pub use backend::renderer::{RendererDecision, RendererKind, RendererPreference};
#[cfg(feature = "compositor")]
pub use backend::Backend;
#[cfg(feature = "compositor")]
pub use compositor::{Compositor, Exit, FramePacing, Offer, Options, ScreenshotRequest, SocketChoice, StartError};
#[cfg(feature = "compositor")]
pub use core::{Core, Counters, OutputConfig, OutputCounters};
#[cfg(feature = "compositor")]
pub use render::Screenshot;
#[cfg(feature = "compositor")]
pub use shell::ShellMode;
#[cfg(feature = "compositor")]
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
