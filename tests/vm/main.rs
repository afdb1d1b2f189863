//! The real-kernel tier. On the host (no `COHERE_IN_VM`) this binary boots the test VM through
//! tests/vm/vm.sh and runs itself inside it; in the guest it runs the tests below against real
//! devices: udmabuf, the system dma-heap, vgem, sw_sync, vkms (CRC and writeback) and cohere.
//!
//! Run one test by hand: `cargo test --features test-support --test vm -- <name>`; each boot's
//! console, command and output are kept in target/vm-logs/.

mod buffer_path;
mod camera;
#[path = "../fixture/client.rs"]
#[allow(dead_code)]
mod client;
mod client_mode;
#[path = "../common/cohere.rs"]
mod cohere;
mod dmabuf;
mod embed;
mod explicit;
mod gles;
#[path = "../fixture/harness.rs"]
mod harness;
mod headless;
mod import_bench;
mod import_tests;
mod kms;
mod maintenance;
mod presentation;
mod tests;
mod weston_bench;

use std::process::{Command, ExitCode};

use libtest_mimic::{Arguments, Trial};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(client_mode::CLIENT_MODE) {
        return client_mode::udmabuf_client(&args[2..]);
    }
    if std::env::var_os("COHERE_IN_VM").is_none() {
        return run_in_vm(&args);
    }
    // Boot groups (see run_in_vm): 0 = everything without a KMS compositor, then the KMS tests,
    // which hold the display and run one after another, split so each boot stays short.
    let group = std::env::var("COHERE_VM_GROUP").ok().and_then(|g| g.parse::<usize>().ok());
    let base = tests::all()
        .into_iter()
        .chain(dmabuf::all())
        .chain(headless::all())
        .chain(camera::all())
        .chain(explicit::all())
        .chain(gles::all())
        .chain(buffer_path::all())
        .chain(embed::all())
        .map(|t| (0, t));
    let kms = kms_tests().into_iter().map(|(boot, name, f)| (boot, (name, f)));
    let trial = |name: &'static str, f: tests::TestFn| {
        Trial::test(name, move || {
            let start = std::time::Instant::now();
            let result = watched(name, f).map_err(Into::into);
            if std::env::var_os("COHERE_TEST_TIMES").is_some() {
                eprintln!("{name}: {} ms", start.elapsed().as_millis());
            }
            result
        })
    };
    let mut trials: Vec<Trial> =
        base.chain(kms).filter(|(g, _)| group.map_or(true, |want| want == *g)).map(|(_, (name, f))| trial(name, f)).collect();
    // Benchmarks run only when asked for by name, with --ignored (scripts/bench-vm.sh).
    if group.is_none() {
        trials.extend(
            presentation::benches()
                .into_iter()
                .chain(import_bench::benches())
                .chain(weston_bench::benches())
                .map(|(name, f)| trial(name, f).with_ignored_flag(true)),
        );
    }
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}

/// How long one test may run before it counts as hung: twice the deadline of any one wait,
/// and more than any test needs on a slow, busy machine. A test that waits on data fails at
/// its own deadline first; this catches what doesn't wait (a deadlock), and names the test,
/// where the VM's overall timeout would only kill the boot.
const HUNG_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// Runs test `f` on a thread of its own and fails it if it hasn't finished in [`HUNG_AFTER`]
/// (the thread is left behind; the process ends after the other tests).
fn watched(name: &'static str, f: tests::TestFn) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| format!("spawning the test thread: {e}"))?;
    match rx.recv_timeout(HUNG_AFTER) {
        Ok(result) => result,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(format!("{name} hung: not finished after {} s", HUNG_AFTER.as_secs())),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(format!("{name} panicked")),
    }
}

/// The tests that run a KMS compositor, with the boot each goes in.
fn kms_tests() -> Vec<(usize, &'static str, tests::TestFn)> {
    kms::all().into_iter().chain(camera::kms()).chain(maintenance::kms()).chain(gles::kms()).chain(presentation::kms()).collect()
}

/// Boots the VM and runs this same binary, with the same arguments, inside it. Without a test
/// filter the tests go in several boots: group 0, then the KMS tests in the boots kms::all()
/// assigns (udevd, which hotplug and libinput need, runs only in the last). With a filter, one
/// boot runs whatever matches.
fn run_in_vm(args: &[String]) -> ExitCode {
    let Some((exe, rest)) = args.split_first() else { return ExitCode::FAILURE };
    let filtered = rest.iter().any(|a| !a.starts_with('-'));
    let boots = 1 + kms_tests().iter().map(|t| t.0).max().unwrap_or(0);
    let groups: Vec<Option<usize>> = if filtered { vec![None] } else { (0..boots).map(Some).collect() };
    for group in groups {
        let code = boot(exe, rest, group);
        if code != ExitCode::SUCCESS {
            return code;
        }
    }
    ExitCode::SUCCESS
}

fn boot(exe: &str, args: &[String], group: Option<usize>) -> ExitCode {
    let launcher = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vm/vm.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(launcher).arg("run").arg("--").arg(exe).args(args);
    match group {
        Some(g) => cmd.env("COHERE_VM_GROUP", g.to_string()),
        None => cmd.env_remove("COHERE_VM_GROUP"),
    };
    let status = cmd.status();
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
