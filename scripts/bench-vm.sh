#!/usr/bin/env bash
# VM benchmarks (not tests): each prints its figures and asserts nothing.
#   scripts/bench-vm.sh pacing   600 frames at 60 Hz on vkms from a client that commits each
#                                frame once the previous one was presented, on the direct path
#                                and on the CPU-copy path: the share presented on consecutive
#                                vblanks (from the presentation feedback's sequence numbers).
#   scripts/bench-vm.sh import   one udmabuf imported over and over through cohere's linux-dmabuf
#                                (validation and plan) and through smithay's, in one process:
#                                the time per import and the ratio.
# Needs the VM tier set up (scripts/test.sh does it; or tests/vm/vm.sh setup).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-pacing}" in
  pacing) exec cargo test --features test-support --test vm -- --ignored --nocapture bench_pacing ;;
  import) exec cargo test --features test-support --test vm -- --ignored --nocapture bench_import ;;
  *) echo "usage: $0 pacing|import" >&2; exit 2 ;;
esac
