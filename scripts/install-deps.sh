#!/usr/bin/env bash
# Install every Debian 12 package that ferry's build, tests, demo and benchmark need. This script is what makes a
# fresh machine usable: nothing else is assumed to be installed by hand. It is idempotent and non-interactive, and
# it always asks apt (CI starts from a clean machine, and apt is quick when everything is present already). It
# does not build anything. It must run as root (or through a password-less sudo).
#
# --kvm-emulation adds what scripts/kvm-emulated.sh needs, besides the kernel and busybox, to give a machine
# without /dev/kvm an emulated one for ferry-vm's tests (QEMU); scripts/test.sh asks for it only there.
set -euo pipefail

packages=(
    build-essential meson ninja-build pkg-config
    libjansson-dev libcmocka-dev libxxhash-dev libzstd-dev zlib1g-dev libgnutls28-dev gnutls-bin
    gnuplot-nox
    python3 python3-pytest
    clang libclang-rt-14-dev
    iproute2 procps valgrind
    # ferry-vm's Linux guest test: Debian's kernel, and a static busybox as its whole initramfs
    linux-image-amd64 busybox-static
)
if [ "${1:-}" = --kvm-emulation ]; then
    packages+=(qemu-system-x86 cpio)
elif [ $# -gt 0 ]; then
    echo "install-deps: unknown option '$1' (only --kvm-emulation)" >&2
    exit 2
fi

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    echo "install-deps: must run as root (or with password-less sudo) to install: ${packages[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# apt's chatter goes to a log that is shown only when a step fails, so that a good run prints one line per phase.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
run() {
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        echo "install-deps: FAILED: $*" >&2
        exit 1
    fi
}
echo "install-deps: apt-get update"
run "${sudo[@]}" apt-get -qq update
echo "install-deps: apt-get install ${#packages[@]} packages"
run "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends \
    -o Dpkg::Options::=--force-confold "${packages[@]}"
echo "install-deps: done"
