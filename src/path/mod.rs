//! Executors: each carries out one kind of plan decision and never re-decides.
//!
//! - [`direct`]: a client buffer may go on a KMS plane of the device the plan allows.
//! - Composition is the renderer drawing the buffer (render.rs); it needs no executor state.
//! - [`cpu_copy`]: the damage of each commit is copied, SYNC-bracketed, into a per-surface
//!   shadow that the renderer composites; the renderer never reads the client buffer.
//! - DirectWithMaintenance is composited for now (see ARCHITECTURE.md).

pub mod cpu_copy;
pub mod direct;
