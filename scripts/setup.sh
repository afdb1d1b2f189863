#!/usr/bin/env bash
# Installs what cohere needs on Debian 12 and checks the Rust toolchain. Sourced by run.sh and
# test.sh; safe to run again (it only installs what is missing).
set -euo pipefail

# Build dependencies of smithay's backends, the runtime for headless GLES (llvmpipe), the
# third-party test clients, and what the VM tier needs to boot a kernel (and GStreamer, the
# camera client of its vivid tests).
COHERE_BUILD_PKGS=(pkg-config build-essential libudev-dev libseat-dev libinput-dev libgbm-dev
  libxkbcommon-dev libpixman-1-dev libwayland-dev libwayland-bin)
COHERE_RUN_PKGS=(libegl1 libegl-mesa0 libgl1-mesa-dri weston wayland-utils)
COHERE_VM_PKGS=(qemu-system-x86 busybox-static cpio kmod xz-utils udev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)

say() { printf '\033[1mcohere setup:\033[0m %s\n' "$*"; }

apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "Debian packages present: $*"
    return
  fi
  say "installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    say "not root: run as root, or install these yourself: ${missing[*]}"
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
}

check_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    say "cargo not found. cohere needs Rust >= 1.80 (Debian 12's packaged cargo is too old): install it with rustup, then run this again."
    exit 1
  fi
  local v
  v=$(rustc --version | awk '{print $2}')
  say "Rust toolchain: rustc $v"
  if [ "$(printf '%s\n1.80.0\n' "$v" | sort -V | head -1)" != "1.80.0" ]; then
    say "rustc $v is older than 1.80: update it with rustup."
    exit 1
  fi
}

# The test command's style gates need rustfmt and clippy.
check_lint_tools() {
  if cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1; then
    return
  fi
  if command -v rustup >/dev/null 2>&1; then
    say "installing the rustfmt and clippy components (rustup)"
    rustup component add rustfmt clippy
  else
    say "cargo fmt or cargo clippy is missing and there is no rustup to add them"
    exit 1
  fi
}

# Wayland sockets live in XDG_RUNTIME_DIR; a root shell on a bare Debian has none.
ensure_runtime_dir() {
  if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -d "$XDG_RUNTIME_DIR" ]; then
    export XDG_RUNTIME_DIR="${TMPDIR:-/tmp}/cohere-runtime-$(id -u)"
    mkdir -p "$XDG_RUNTIME_DIR"
    chmod 700 "$XDG_RUNTIME_DIR"
    say "XDG_RUNTIME_DIR set to $XDG_RUNTIME_DIR"
  fi
}

# Everything the host side needs: packages, toolchain, runtime dir.
setup_host() {
  apt_install "${COHERE_BUILD_PKGS[@]}" "${COHERE_RUN_PKGS[@]}"
  check_rust
  ensure_runtime_dir
}
