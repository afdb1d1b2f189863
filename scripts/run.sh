#!/usr/bin/env bash
# Quick start 1: set up and run cohere. Without a free seat and display (no KMS backend in this
# build yet) it runs headless with weston-simple-shm and writes cohere-demo.png.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
setup_host
say "building cohere (cargo build)"
cargo build --quiet
shot="${COHERE_DEMO_PNG:-$PWD/cohere-demo.png}"
say "no KMS backend in this build: running headless with weston-simple-shm for 2 s"
./target/debug/cohere --headless --desktop --screenshot "$shot" --after-frames 120 --exit-after-frames 120 -- weston-simple-shm
say "screenshot written: $shot"
