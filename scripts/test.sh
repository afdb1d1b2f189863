#!/usr/bin/env bash
# Quick start 2: set up and run the whole test suite: host tests (unit, client-server fixture,
# third-party clients), then the real-kernel VM tier, which the `vm` test target boots itself.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
setup_host
check_lint_tools
say "style: cargo fmt --check"
cargo fmt --check
say "lints: cargo clippy --all-targets --all-features -- -D warnings"
cargo clippy --all-targets --all-features -- -D warnings
say "the embeddable core alone: cargo clippy --lib --no-default-features -- -D warnings"
cargo clippy --lib --no-default-features -- -D warnings
say "API docs: cargo doc --no-deps --all-features, warnings are errors"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --quiet
say "VM tier set-up (cached after the first run): tests/vm/vm.sh setup"
tests/vm/vm.sh setup
say "all tests: cargo test --features test-support"
cargo test --features test-support
