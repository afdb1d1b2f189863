//! Executors: each carries out one kind of plan decision and never re-decides.
//!
//! - [`direct`]: a client buffer may go on a KMS plane of the device the plan allows.
//! - [`maintenance`]: DirectWithMaintenance, the SYNC bracket that makes the exporter write
//!   back CPU caches before each new commit of such a buffer goes on a plane.
//! - Composition is the renderer drawing the buffer (render.rs); it needs no executor state.
//! - [`cpu_copy`]: the damage of each commit is copied, SYNC-bracketed, into a per-surface
//!   shadow that the renderer composites; the renderer never reads the client buffer.
//! - [`release`]: when each path has stopped reading a buffer, and telling the client.

pub mod cpu_copy;
pub mod direct;
pub mod elements;
pub mod guard;
pub mod maintenance;
pub mod release;
