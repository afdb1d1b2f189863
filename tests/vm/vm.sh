#!/usr/bin/env bash
# cohere's real-kernel test tier: a QEMU (TCG) VM running Debian's 6.12 kernel with vkms, vgem,
# udmabuf, the system dma-heap, sw_sync and virtio-gpu. See ARCHITECTURE.md, "VM tier".
#
#   tests/vm/vm.sh setup            download and build everything once (cached, see below)
#   tests/vm/vm.sh setup-weston14   also unpack Weston 14 for scripts/bench-vm.sh weston
#   tests/vm/vm.sh run -- CMD ...   boot, run CMD in the guest (same paths as the host), print
#                                   its output, exit with its status
#
# The cache lives outside the checkout, in ${XDG_CACHE_HOME:-~/.cache}/cohere-vm/<kernel ABI>, so a
# fresh clone reuses it. The kernel is pinned in tests/vm/versions.env.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
. "$top/scripts/setup.sh"

cache="${XDG_CACHE_HOME:-$HOME/.cache}/cohere-vm/$KERNEL_ABI"
root="$cache/root"
modules="$root/lib/modules/$KERNEL_ABI-amd64"
headers="$root/usr/src/linux-headers-$KERNEL_ABI-amd64"
stamp="$cache/ready"
logs_root="${COHERE_VM_LOGS:-$top/target/vm-logs}"

vm() { printf '\033[1mcohere vm:\033[0m %s\n' "$*" >&2; }
die() { vm "error: $*"; exit 3; }

# Anything that changes what setup produces changes this key, and so redoes setup.
setup_key() {
  cat "$here/versions.env" "$here/init" "$here/vm.sh" "$here"/kmod/*/* | sha256sum | cut -d' ' -f1
}

download_debs() {
  local debs="$cache/debs" pkgs=(
    "linux-image-$KERNEL_ABI-amd64-unsigned=$KERNEL_PKG_VERSION"
    "linux-headers-$KERNEL_ABI-amd64=$KERNEL_PKG_VERSION"
    "linux-headers-$KERNEL_ABI-common=$KERNEL_PKG_VERSION"
    "linux-kbuild-$KERNEL_ABI=$KERNEL_PKG_VERSION"
    "linux-source-6.12=$KERNEL_PKG_VERSION"
  )
  mkdir -p "$debs"
  if [ "$(ls "$debs"/*.deb 2>/dev/null | wc -l)" -eq ${#pkgs[@]} ]; then
    return
  fi
  vm "downloading kernel packages $KERNEL_PKG_VERSION (about 280 MB)"
  (cd "$debs" && { apt-get download -q "${pkgs[@]}" || { apt-get update -q && apt-get download -q "${pkgs[@]}"; }; }) \
    || die "apt-get download of the pinned kernel $KERNEL_PKG_VERSION failed (see tests/vm/versions.env)"
}

extract_kernel() {
  vm "unpacking kernel, headers and kbuild"
  rm -rf "$root" && mkdir -p "$root"
  for d in "$cache"/debs/linux-image-* "$cache"/debs/linux-headers-* "$cache"/debs/linux-kbuild-*; do
    dpkg-deb -x "$d" "$root"
  done
  # The headers' Makefile includes the -common tree by absolute /usr/src path: point it here.
  sed -i "s#^include /usr/src/#include $root/usr/src/#" "$headers/Makefile"
}

extract_sources() {
  local src="$cache/src"
  vm "extracting vkms and sw_sync sources from linux-source-6.12"
  rm -rf "$src" && mkdir -p "$src"
  dpkg-deb --fsys-tarfile "$cache"/debs/linux-source-6.12_*.deb \
    | tar -x -C "$src" ./usr/src/linux-source-6.12.tar.xz
  tar -xJf "$src/usr/src/linux-source-6.12.tar.xz" -C "$src" \
    linux-source-6.12/drivers/gpu/drm/vkms \
    linux-source-6.12/drivers/dma-buf/sw_sync.c \
    linux-source-6.12/drivers/dma-buf/sync_debug.c \
    linux-source-6.12/drivers/dma-buf/sync_debug.h \
    linux-source-6.12/drivers/dma-buf/sync_trace.h
  rm -f "$src/usr/src/linux-source-6.12.tar.xz"
}

build_modules() {
  local src="$cache/src/linux-source-6.12/drivers" build="$cache/build"
  rm -rf "$build" && mkdir -p "$build/vkms" "$build/sw_sync"
  cp "$src"/gpu/drm/vkms/*.[ch] "$here/kmod/vkms/Kbuild" "$build/vkms/"
  # sw_sync is bool-only upstream: build it with sync_debug.c and a small module wrapper.
  cp "$src/dma-buf/sw_sync.c" "$build/sw_sync/sw_sync_main.c"
  cp "$src"/dma-buf/sync_debug.[ch] "$src/dma-buf/sync_trace.h" "$here"/kmod/sw_sync/* "$build/sw_sync/"
  sed -i 's#^\#define TRACE_INCLUDE_PATH .*#\#define TRACE_INCLUDE_PATH .#' "$build/sw_sync/sync_trace.h"
  for m in vkms sw_sync; do
    vm "building $m.ko against $KERNEL_ABI"
    # No pahole here, so no BTF for out-of-tree modules; nothing needs it.
    make -s -C "$headers" M="$build/$m" CONFIG_DEBUG_INFO_BTF_MODULES= CONFIG_SW_SYNC=y CONFIG_DRM_VKMS=m modules \
      || die "building $m.ko failed"
  done
  mkdir -p "$modules/extra"
  cp "$build/vkms/vkms.ko" "$build/sw_sync/sw_sync.ko" "$modules/extra/"
  depmod -b "$root" "$KERNEL_ABI-amd64"
}

# Unpacks packages from bookworm-backports into $cache/<name>/root, through a private apt
# configuration: the host's sources and installed packages are not touched. Downloads only
# when the set of .debs is not complete yet.
#   unpack_backports NAME WHAT SIZE PACKAGE=VERSION...
unpack_backports() {
  local dir="$cache/$1" what=$2 size=$3 apt="$cache/apt"
  shift 3
  mkdir -p "$dir/debs" "$apt/lists/partial" "$apt/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main" >"$apt/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$apt/lists"
    -o "Dir::Cache=$apt/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  if [ "$(ls "$dir"/debs/*.deb 2>/dev/null | wc -l)" -ne $# ]; then
    vm "downloading $what from bookworm-backports (about $size)"
    rm -f "$dir"/debs/*.deb
    apt-get "${opts[@]}" update -q >/dev/null || die "apt-get update of bookworm-backports failed"
    (cd "$dir/debs" && apt-get "${opts[@]}" download -q "$@") || die "apt-get download of $what failed (see tests/vm/versions.env)"
  fi
  rm -rf "$dir/root" && mkdir -p "$dir/root"
  for d in "$dir"/debs/*.deb; do
    dpkg-deb -x "$d" "$dir/root"
  done
}

# Mesa 25 (and its libdrm), for the GPU-composition tests.
setup_mesa() {
  unpack_backports mesa25 "Mesa $MESA_PKG_VERSION" "10 MB" \
    "mesa-libgallium=$MESA_PKG_VERSION" "libgl1-mesa-dri=$MESA_PKG_VERSION" "libegl-mesa0=$MESA_PKG_VERSION" \
    "libgbm1=$MESA_PKG_VERSION" "libdrm2=$LIBDRM_PKG_VERSION" "libdrm-amdgpu1=$LIBDRM_PKG_VERSION" \
    "libdrm-intel1=$LIBDRM_PKG_VERSION"
}

# Weston 14 (with the libwayland 1.23 and libdisplay-info it needs), for the benchmark against
# it (scripts/bench-vm.sh weston); not part of the suite's set-up.
setup_weston14() {
  [ -x "$cache/weston14/root/usr/bin/weston" ] && [ "$(ls "$cache"/weston14/debs/*.deb 2>/dev/null | wc -l)" -eq 7 ] && return
  unpack_backports weston14 "Weston $WESTON_PKG_VERSION" "1.5 MB" \
    "weston=$WESTON_PKG_VERSION" "libweston-14-0=$WESTON_PKG_VERSION" "libdisplay-info2=$DISPLAY_INFO_PKG_VERSION" \
    "libwayland-server0=$WAYLAND_PKG_VERSION" "libwayland-client0=$WAYLAND_PKG_VERSION" \
    "libwayland-cursor0=$WAYLAND_PKG_VERSION" "libwayland-egl1=$WAYLAND_PKG_VERSION"
}

build_initramfs() {
  local ird="$cache/initramfs"
  vm "building the initramfs (busybox + 9p/overlay modules)"
  rm -rf "$ird" && mkdir -p "$ird"/{bin,modules,proc,sys,dev}
  cp /bin/busybox "$ird/bin/busybox"
  cp "$here/init" "$ird/init" && chmod +x "$ird/init"
  for m in fs/netfs/netfs net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p fs/overlayfs/overlay; do
    xz -dc "$modules/kernel/$m.ko.xz" >"$ird/modules/$(basename "$m").ko"
  done
  echo "$modules" >"$ird/modules/host-modules-dir"
  (cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1) >"$cache/initramfs.cpio.gz"
}

setup() {
  local key
  key=$(setup_key)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
    return
  fi
  local t0=$SECONDS
  apt_install "${COHERE_VM_PKGS[@]}"
  mkdir -p "$cache"
  download_debs
  extract_kernel
  extract_sources
  build_modules
  setup_mesa
  build_initramfs
  echo "$key" >"$stamp"
  vm "set-up done in $((SECONDS - t0)) s; cached in $cache"
}

# Boots once. Prints nothing itself; leaves output, rc and console.log in $1.
boot() {
  local results=$1
  # Tests fail at their own deadlines (a hung one after 300 s, see main.rs); this only stops a
  # VM that stopped running tests, with room for a slow, busy machine.
  timeout "${COHERE_VM_TIMEOUT:-1200}" qemu-system-x86_64 \
    -accel tcg,thread=multi -cpu max -m 2G -smp 2 -nodefaults -no-reboot \
    -display none -serial "file:$results/console.log" \
    -kernel "$root/boot/vmlinuz-$KERNEL_ABI-amd64" -initrd "$cache/initramfs.cpio.gz" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init" \
    -virtfs "local,path=/,mount_tag=hostroot,readonly=on,security_model=none,multidevs=remap" \
    -virtfs "local,path=$results,mount_tag=results,security_model=none" \
    -device virtio-gpu-pci \
    >"$results/qemu.log" 2>&1 || true
}

run() {
  [ $# -gt 0 ] || die "run needs a command"
  setup
  mkdir -p "$logs_root"
  local results attempt
  results=$(mktemp -d "$logs_root/run-$(date +%Y%m%d-%H%M%S)-XXXX")
  # The guest sees the host's filesystem at the same paths, so the command runs unchanged.
  {
    echo "cd $(printf '%q' "$PWD")"
    echo "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp"
    echo "export XDG_RUNTIME_DIR=/run/user0 COHERE_IN_VM=1 RUST_BACKTRACE=1 ${RUST_LOG:+RUST_LOG=$RUST_LOG} ${COHERE_TEST_TIMES:+COHERE_TEST_TIMES=1} ${COHERE_VM_GROUP:+COHERE_VM_GROUP=$COHERE_VM_GROUP}"
    # Tests that want Mesa 25 (GPU composition) put it in their processes' environment.
    echo "export COHERE_MESA25=$(printf '%q' "$cache/mesa25/root")"
    # The benchmark against Weston 14 finds it here (tests/vm/vm.sh setup-weston14).
    echo "export COHERE_WESTON14=$(printf '%q' "$cache/weston14/root")"
    echo "mkdir -p -m 700 /run/user0"
    printf 'exec'; printf ' %q' "$@"; echo
  } >"$results/cmd.sh"
  for attempt in 1 2; do
    rm -f "$results/rc" "$results/output"
    local t0=$SECONDS
    boot "$results"
    if [ -f "$results/rc" ]; then
      cat "$results/output"
      vm "boot took $((SECONDS - t0)) s; logs in $results"
      return "$(cat "$results/rc")"
    fi
    vm "the VM died before the command finished (attempt $attempt); what the command printed (also in output.attempt$attempt), then the console:"
    [ -f "$results/output" ] && mv "$results/output" "$results/output.attempt$attempt"
    tail -n 40 "$results/output.attempt$attempt" >&2 || true
    tail -n 30 "$results/console.log" >&2 || true
    tail -n 5 "$results/qemu.log" >&2 || true
  done
  die "the VM died twice; logs in $results"
}

case "${1:-}" in
  setup) setup ;;
  setup-weston14) setup && setup_weston14 ;;
  run) shift; [ "${1:-}" = "--" ] && shift; run "$@" ;;
  *) echo "usage: $0 setup | setup-weston14 | run -- COMMAND [ARGS...]" >&2; exit 2 ;;
esac
