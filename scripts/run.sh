#!/usr/bin/env bash
# Quick start 1: set up and run cohere. On KMS when a seat and a connected display are free;
# otherwise headless with weston-simple-shm, writing cohere-demo.png.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
setup_host
say "building cohere (cargo build --features cli)"
cargo build --quiet --features cli
if [ -z "${COHERE_HEADLESS:-}" ] && ./target/debug/cohere check-kms 2>/dev/null; then
  say "running on KMS (kiosk, weston-simple-shm) until the client exits or Ctrl+C"
  exec ./target/debug/cohere --kiosk -- weston-simple-shm
fi
shot="${COHERE_DEMO_PNG:-$PWD/cohere-demo.png}"
say "no free seat and display: running headless with weston-simple-shm for 2 s"
./target/debug/cohere --headless --desktop --screenshot "$shot" --after-frames 120 --exit-after-frames 120 -- weston-simple-shm
say "screenshot written: $shot"
