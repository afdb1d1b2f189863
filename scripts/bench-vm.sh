#!/usr/bin/env bash
# VM benchmarks (not tests): each prints its figures and asserts nothing.
#   scripts/bench-vm.sh pacing   600 frames at 60 Hz on vkms from a client that commits each
#                                frame once the previous one was presented, on the direct path
#                                and on the CPU-copy path: the share presented on consecutive
#                                vblanks (from the presentation feedback's sequence numbers).
#   scripts/bench-vm.sh import   one udmabuf imported over and over through cohere's linux-dmabuf
#                                (validation and plan) and through smithay's, in one process:
#                                the time per import and the ratio.
#   scripts/bench-vm.sh weston  cohere and Weston 14 headless at 1280x720, one after the other,
#                                with the same animated client (udmabuf or shm, whole-buffer or
#                                128x128 damage), Pixman and GL (llvmpipe): compositor CPU time per
#                                frame and frame rate side by side, in BOOTS boots (default 3),
#                                then the median of each figure.
# Needs the VM tier set up (scripts/test.sh does it; or tests/vm/vm.sh setup).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-pacing}" in
  pacing) exec cargo test --features test-support --test vm -- --ignored --nocapture bench_pacing ;;
  import) exec cargo test --features test-support --test vm -- --ignored --nocapture bench_import ;;
  weston)
    tests/vm/vm.sh setup-weston14
    out=$(mktemp)
    for boot in $(seq "${BOOTS:-3}"); do
      echo "== boot $boot"
      cargo test --features test-support --test vm -- --ignored --nocapture --test-threads 1 bench_weston | tee -a "$out" | grep -E "weston-bench|FAILED|failed|panicked" || true
    done
    echo "== median of ${BOOTS:-3} boots (compositor CPU per presented frame, and the ratio cohere / Weston 14)"
    python3 - "$out" <<'PY'
import re, statistics, sys
cells = {}
pat = re.compile(r"weston-bench (\S+): cohere ([\d.]+) ms/frame at ([\d.]+) fps, weston14 ([\d.]+) ms/frame at ([\d.]+) fps, cpu ratio ([\d.]+)")
for line in open(sys.argv[1]):
    m = pat.search(line)
    if m:
        cells.setdefault(m.group(1), []).append([float(x) for x in m.groups()[1:]])
alone = {}
for line in open(sys.argv[1]):
    m = re.search(r"weston-bench (\S+): cohere ([\d.]+) ms/frame at ([\d.]+) fps, weston14 can't", line)
    if m:
        alone.setdefault(m.group(1), []).append([float(m.group(2)), float(m.group(3))])
print(f"{'renderer/buffers/damage':26} {'cohere ms':>10} {'fps':>6} {'weston14 ms':>12} {'fps':>6} {'ratio':>6}  boots")
for name, runs in cells.items():
    med = [statistics.median(col) for col in zip(*runs)]
    print(f"{name:26} {med[0]:10.3f} {med[1]:6.1f} {med[2]:12.3f} {med[3]:6.1f} {med[4]:6.2f}  {len(runs)} (ratios {', '.join(f'{r[4]:.2f}' for r in runs)})")
for name, runs in alone.items():
    med = [statistics.median(col) for col in zip(*runs)]
    print(f"{name:26} {med[0]:10.3f} {med[1]:6.1f}   Weston 14 can't import the client's dma-bufs  {len(runs)}")
PY
    rm -f "$out" ;;
  *) echo "usage: $0 pacing|import|weston" >&2; exit 2 ;;
esac
