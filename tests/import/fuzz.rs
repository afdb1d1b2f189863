//! Random sequences of params requests through the real dispatch path: random fd kinds and
//! numbers at the edges. Runs 10,000 sequences by default (`COHERE_FUZZ_CASES` to change).
//! The same sequences drive the cargo-fuzz target in fuzz/.

use std::cell::RefCell;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::harness::*;
use super::sequence::*;

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

/// Every kind of fd; with `real_dmabufs`, udmabufs too (the VM tier), sized to fit the common
/// formats so that some sequences succeed.
fn fd_kind(real_dmabufs: bool) -> impl Strategy<Value = FdKind> {
    let dmabuf_weight = if real_dmabufs { 4 } else { 0 };
    prop_oneof![
        4 => size().prop_map(FdKind::Memfd),
        1 => size().prop_map(FdKind::File),
        1 => Just(FdKind::Pipe),
        1 => Just(FdKind::Socket),
        1 => Just(FdKind::DevNull),
        dmabuf_weight => prop_oneof![Just(16 * 16 * 4u64), Just(65_536), size()].prop_map(FdKind::Udmabuf),
    ]
}

fn format() -> impl Strategy<Value = u32> {
    prop_oneof![Just(XRGB8888), Just(ARGB8888), Just(NV12), Just(YUV420), Just(ABGR8888), any::<u32>()]
}

fn modifier() -> impl Strategy<Value = u64> {
    prop_oneof![4 => Just(LINEAR), 1 => Just(I915_X_TILED), 1 => Just(0x00ff_ffff_ffff_ffff), 1 => Just(u64::MAX), 1 => any::<u64>()]
}

fn op(real_dmabufs: bool) -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (fd_kind(real_dmabufs), prop_oneof![0u32..5, Just(u32::MAX)], edge_u32(), edge_u32(), modifier())
            .prop_map(|(fd, idx, offset, stride, modifier)| Op::Add { fd, idx, offset, stride, modifier }),
        2 => (edge_i32(), edge_i32(), format(), prop_oneof![Just(0u32), Just(1), any::<u32>()])
            .prop_map(|(width, height, format, flags)| Op::Create { width, height, format, flags }),
        2 => (edge_i32(), edge_i32(), format(), prop_oneof![Just(0u32), Just(1), any::<u32>()])
            .prop_map(|(width, height, format, flags)| Op::CreateImmed { width, height, format, flags }),
        1 => Just(Op::NewParams),
        1 => Just(Op::Destroy),
    ]
}

/// A plane and a create that pass every numeric check for a small XRGB8888 buffer, so the
/// sequence gets as far as "is it a dma-buf" (and, with real dma-bufs, to `created`); random
/// requests before and after it still reach every error.
fn plausible_buffer(real_dmabufs: bool) -> impl Strategy<Value = Vec<Op>> {
    let fd = if real_dmabufs {
        prop_oneof![Just(FdKind::Udmabuf(4096)), Just(FdKind::Memfd(4096))].boxed()
    } else {
        prop_oneof![Just(FdKind::Memfd(4096)), Just(FdKind::File(4096))].boxed()
    };
    (fd, any::<bool>()).prop_map(|(fd, immed)| {
        let add = Op::Add { fd, idx: 0, offset: 0, stride: 64, modifier: LINEAR };
        let (width, height, format, flags) = (16, 16, XRGB8888, 0);
        let create = if immed { Op::CreateImmed { width, height, format, flags } } else { Op::Create { width, height, format, flags } };
        vec![Op::NewParams, add, create]
    })
}

pub fn sequence(real_dmabufs: bool) -> impl Strategy<Value = Sequence> {
    let chunk = prop_oneof![4 => op(real_dmabufs).prop_map(|op| vec![op]), 1 => plausible_buffer(real_dmabufs)];
    (1u32..=5, prop::collection::vec(chunk, 1..10))
        .prop_map(|(version, chunks)| Sequence { version: version - 1, ops: chunks.into_iter().flatten().collect() })
}

/// Runs `cases` random sequences (each on a fresh client of a random version) through the
/// real dispatch path and returns what they led to.
pub fn run_cases(cases: u32, real_dmabufs: bool) -> Result<Tally, String> {
    // The implicit modifier read as linear: the path with the most to validate.
    let server = RefCell::new(Server::with_implicit(Some(0xe280), cohere::import::ImplicitModifier::AsLinear));
    let tally = RefCell::new(Tally::default());
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&sequence(real_dmabufs), |seq| {
        let outcome = run_sequence(&mut server.borrow_mut(), &seq).map_err(TestCaseError::fail)?;
        tally.borrow_mut().add(seq.version % 5 + 1, &outcome);
        Ok(())
    });
    result.map_err(|e| e.to_string())?;
    Ok(tally.into_inner())
}

/// The run must prove it exercised something: every bind version, `failed` answers and most
/// protocol errors, so a regression that rejects (or accepts) everything fails here.
pub fn check_tally(tally: &Tally, cases: u32) -> Result<(), String> {
    let all_versions = (1..=5).collect::<std::collections::BTreeSet<u32>>();
    if tally.versions != all_versions || tally.failed == 0 || tally.error_codes.len() < 7 {
        return Err(format!("{cases} sequences exercised too little: {tally:?}"));
    }
    Ok(())
}

#[test]
fn random_params_sequences_never_panic_or_accept_non_dmabufs() -> Result<(), String> {
    let cases: u32 = std::env::var("COHERE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let tally = run_cases(cases, false)?;
    println!("{cases} sequences: {tally:?}");
    // No fd on the host is a dma-buf: nothing may be created; the VM tier runs this with
    // udmabufs and checks that some are.
    if tally.created != 0 {
        return Err(format!("non-dma-bufs were accepted: {tally:?}"));
    }
    check_tally(&tally, cases)
}
