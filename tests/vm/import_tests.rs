//! tests/import's harness, request sequences and their proptest strategies, run in the VM with
//! real dma-bufs.

#[path = "../import/fuzz.rs"]
#[allow(dead_code)]
pub mod fuzz;
#[path = "../import/harness.rs"]
pub mod harness;
#[path = "../import/sequence.rs"]
pub mod sequence;
