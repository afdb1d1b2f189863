//! libFuzzer target: arbitrary linux-dmabuf params request sequences through cohere's real
//! dispatch path (the same harness and checks as tests/import). See README "Fuzzing".
#![no_main]

#[path = "../../tests/import/harness.rs"]
mod harness;
#[path = "../../tests/import/sequence.rs"]
mod sequence;

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;

thread_local! {
    static SERVER: RefCell<harness::Server> = RefCell::new(harness::Server::with_implicit(Some(0xe280), cohere::import::ImplicitModifier::AsLinear));
}

fuzz_target!(|seq: sequence::Sequence| {
    if seq.ops.len() > 16 {
        return;
    }
    SERVER.with(|server| {
        if let Err(e) = sequence::run_sequence(&mut server.borrow_mut(), &seq) {
            panic!("{e}");
        }
    });
});
