//! Random sequences of params requests through the real dispatch path: random fd kinds and
//! numbers at the edges. Runs 10,000 sequences by default (`COHERE_FUZZ_CASES` to change).
//! The same sequences drive the cargo-fuzz target in fuzz/.

use std::cell::RefCell;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::harness::*;
use crate::sequence::*;

fn edge_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(4095),
        Just(4096),
        Just(4097),
        Just(u32::MAX),
        Just(u32::MAX - 7),
        Just(0x8000_0000),
        0u32..16_384,
        any::<u32>(),
    ]
}

fn edge_i32() -> impl Strategy<Value = i32> {
    prop_oneof![Just(0i32), Just(1), Just(-1), Just(i32::MAX), Just(i32::MIN), 1i32..300, any::<i32>()]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(1), Just(4096), Just(4097), Just(65_536), Just(1 << 20), 0u64..200_000]
}

fn fd_kind() -> impl Strategy<Value = FdKind> {
    prop_oneof![
        4 => size().prop_map(FdKind::Memfd),
        1 => size().prop_map(FdKind::File),
        1 => Just(FdKind::Pipe),
        1 => Just(FdKind::Socket),
        1 => Just(FdKind::DevNull),
    ]
}

fn format() -> impl Strategy<Value = u32> {
    prop_oneof![Just(XRGB8888), Just(ARGB8888), Just(NV12), Just(YUV420), Just(ABGR8888), any::<u32>()]
}

fn modifier() -> impl Strategy<Value = u64> {
    prop_oneof![4 => Just(LINEAR), 1 => Just(I915_X_TILED), 1 => Just(0x00ff_ffff_ffff_ffff), 1 => Just(u64::MAX), 1 => any::<u64>()]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (fd_kind(), prop_oneof![0u32..5, Just(u32::MAX)], edge_u32(), edge_u32(), modifier())
            .prop_map(|(fd, idx, offset, stride, modifier)| Op::Add { fd, idx, offset, stride, modifier }),
        2 => (edge_i32(), edge_i32(), format(), prop_oneof![Just(0u32), Just(1), any::<u32>()])
            .prop_map(|(width, height, format, flags)| Op::Create { width, height, format, flags }),
        2 => (edge_i32(), edge_i32(), format(), prop_oneof![Just(0u32), Just(1), any::<u32>()])
            .prop_map(|(width, height, format, flags)| Op::CreateImmed { width, height, format, flags }),
        1 => Just(Op::NewParams),
        1 => Just(Op::Destroy),
    ]
}

pub fn sequence() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..12)
}

#[test]
fn random_params_sequences_never_panic_or_accept_non_dmabufs() {
    let cases: u32 = std::env::var("COHERE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    // The implicit modifier read as linear: the path with the most to validate.
    let server = RefCell::new(Server::with_implicit(Some(0xe280), cohere::import::ImplicitModifier::AsLinear));
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&sequence(), |ops| {
        run_sequence(&mut server.borrow_mut(), &ops).map_err(TestCaseError::fail)?;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let server = server.into_inner();
    println!(
        "{cases} sequences, {} protocol errors, {} failed",
        server.state.import.counters.protocol_errors, server.state.import.counters.failed
    );
}
