#!/usr/bin/env bash
# Quick start 2: set up and run the whole test suite: host tests (unit, client-server fixture,
# third-party clients), then the real-kernel VM tier.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
setup_host
say "host tests: cargo test --features test-support"
cargo test --features test-support
