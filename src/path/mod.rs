//! Executors: each carries out one kind of plan decision and never re-decides.
//!
//! - [`direct`]: a client buffer may go on a KMS plane of the device the plan allows.
//! - Composition is the renderer drawing the buffer (render.rs); it needs no executor state.
//! - DirectWithMaintenance and CpuCopy are composited for now (see ARCHITECTURE.md).

pub mod direct;
