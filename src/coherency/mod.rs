//! Coherency facts and, later, the per-consumer plan. Today: the buffer facts the kernel gives
//! through fdinfo.

pub mod fdinfo;

pub use fdinfo::{DmabufFdInfo, FdInfoError};
