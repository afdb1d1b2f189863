//! The real-kernel tier. On the host (no `COHERE_IN_VM`) this binary boots the test VM through
//! tests/vm/vm.sh and runs itself inside it; in the guest it runs the tests below against real
//! devices: udmabuf, the system dma-heap, vgem, sw_sync, vkms (CRC and writeback) and cohere.
//!
//! Run one test by hand: `cargo test --features test-support --test vm -- <name>`; each boot's
//! console, command and output are kept in target/vm-logs/.

#[path = "../fixture/client.rs"]
#[allow(dead_code)]
mod client;
mod dmabuf;
#[path = "../fixture/harness.rs"]
mod harness;
#[path = "../import/harness.rs"]
mod import_harness;
mod tests;

use std::process::{Command, ExitCode};

use libtest_mimic::{Arguments, Trial};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(tests::CLIENT_MODE) {
        return tests::udmabuf_client(&args[2..]);
    }
    if std::env::var_os("COHERE_IN_VM").is_none() {
        return run_in_vm(&args);
    }
    let trials = tests::all()
        .into_iter()
        .chain(dmabuf::all())
        .map(|(name, f)| {
            Trial::test(name, move || {
                let start = std::time::Instant::now();
                let result = f().map_err(Into::into);
                if std::env::var_os("COHERE_TEST_TIMES").is_some() {
                    eprintln!("{name}: {} ms", start.elapsed().as_millis());
                }
                result
            })
        })
        .collect();
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}

/// Boots the VM once and runs this same binary, with the same arguments, inside it.
fn run_in_vm(args: &[String]) -> ExitCode {
    let launcher = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vm/vm.sh");
    let status = Command::new("bash").arg(launcher).arg("run").arg("--").args(args).status();
    match status {
        Ok(s) => match s.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(code) => {
                eprintln!("VM tier failed (exit {code}); see the output above and target/vm-logs/");
                ExitCode::from(u8::try_from(code).unwrap_or(1))
            }
            None => ExitCode::FAILURE,
        },
        Err(err) => {
            eprintln!("VM tier could not start {launcher}: {err}");
            ExitCode::FAILURE
        }
    }
}
