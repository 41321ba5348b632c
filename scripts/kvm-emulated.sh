#!/usr/bin/env bash
# Run a command where /dev/kvm works, on a machine that has none: QEMU's TCG emulates an x86 CPU with SVM (AMD's
# virtualization extension, which TCG implements), Debian's kernel boots in it with kvm-amd loaded, and the command
# runs there in a chroot of this machine's own root file system (shared read-write over virtio-9p), with fresh
# /proc, /sys, /dev, /dev/shm, /run and /tmp (tmpfs: UNIX sockets do not work on 9p; the current directory stays
# visible if it is below /tmp). So the KVM code of ferry-vm
# (hosts/vm) and its tests run for real, with a real (if slow) KVM, on machines without nested virtualization.
#
# It is a way to exercise KVM code, not a way to measure it: everything in the emulated machine runs tens of times
# slower than on hardware, so benchmarks mean nothing there. scripts/test.sh uses it for the KVM tests when
# /dev/kvm is missing (FERRY_KVM_EMULATED=0 turns that off).
#
#   bash scripts/kvm-emulated.sh [--mem SIZE] [--smp N] [--timeout SEC] [--check] -- COMMAND...
#
# COMMAND runs with bash -c from the current directory (which must be reachable under /, as every path is) and
# its exit status is this script's. --check only says whether the emulated KVM can be had here (exit 0) or why
# not (exit 1). Needs qemu-system-x86, linux-image-amd64 and busybox-static (scripts/install-deps.sh).
set -uo pipefail

mem=6G
# One emulated CPU: with two, a 2-vCPU guest crawled (a few thousand pages written in 20 s; a 2-vCPU Linux stalled
# with soft lockups), where one emulated CPU, scheduling the guest's vCPU threads itself, runs it hundreds of times
# faster. Presumably round-robin TCG preempts one emulated CPU while it holds a lock of KVM's (such as the MMU lock
# of the guest's page faults) and the other spins for a whole time slice; that was not confirmed.
smp=1
timeout=1800
check=0
while [ $# -gt 0 ]; do
    case $1 in
    --mem) mem=$2; shift 2 ;;
    --smp) smp=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --check) check=1; shift ;;
    --) shift; break ;;
    *) echo "kvm-emulated.sh: unknown option '$1'" >&2; exit 2 ;;
    esac
done
if [ "$check" = 0 ] && [ $# -eq 0 ]; then
    echo "kvm-emulated.sh: no command given (usage: kvm-emulated.sh [options] -- COMMAND...)" >&2
    exit 2
fi

die() { echo "kvm-emulated.sh: $*" >&2; exit 1; }

command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is not installed (package qemu-system-x86)"
# The initramfs has nothing but busybox: it must be the static one.
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || die "no static /bin/busybox (package busybox-static)"
# The newest Debian kernel installed, with its kvm-amd module.
kver=$(ls /lib/modules 2>/dev/null | sort -V | tail -n 1)
[ -n "$kver" ] && [ -f "/boot/vmlinuz-$kver" ] ||
    die "no kernel in /boot with modules in /lib/modules (package linux-image-amd64)"
mods=/lib/modules/$kver
find "$mods" -name 'kvm-amd.ko*' | grep -q . || die "$kver has no kvm-amd module"
[ -e /dev/kvm ] && echo "kvm-emulated.sh: note: /dev/kvm exists here; running emulated all the same" >&2

# The modules the emulated machine needs, in load order: virtio-9p for the root file system, then KVM, then TUN/TAP
# (ferry-vm's NIC test).
modlist="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci netfs fscache 9pnet 9pnet_virtio
9p irqbypass ccp kvm kvm-amd tun"

work=$(mktemp -d /var/tmp/ferry-kvm.XXXXXX) || die "mktemp failed"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/initrd/bin" "$work/initrd/mods" "$work/initrd/proc" "$work/initrd/sys" "$work/initrd/dev" \
    "$work/initrd/mnt"
cp /bin/busybox "$work/initrd/bin/busybox"
for a in sh mount insmod mkdir poweroff chroot cat echo ifconfig; do ln -s busybox "$work/initrd/bin/$a"; done
for m in $modlist; do
    f=$(find "$mods" -name "$m.ko" -o -name "$m.ko.xz" | head -n 1)
    [ -n "$f" ] || die "module $m not found under $mods"
    case $f in
    *.xz) xz -dc "$f" >"$work/initrd/mods/$m.ko" ;;
    *) cp "$f" "$work/initrd/mods/$m.ko" ;;
    esac
done

# The emulated machine's init: load the modules, mount this machine's root over 9p, run the command in a chroot,
# leave its exit status in $work/rc (on the shared file system) and power off.
cat >"$work/initrd/init" <<EOF
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(echo $modlist); do insmod /mods/\$m.ko || echo "kvm-emulated: insmod \$m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose host /mnt || echo "kvm-emulated: 9p mount failed"
mount -t proc proc /mnt/proc; mount -t sysfs sys /mnt/sys; mount -t devtmpfs dev /mnt/dev
mkdir -p /mnt/dev/pts /mnt/dev/shm; mount -t devpts pts /mnt/dev/pts; mount -t tmpfs shm /mnt/dev/shm
# A /run of its own: ip netns keeps its namespaces there (bind mounts), which must not land on this machine's.
mount -t tmpfs run /mnt/run
# /tmp becomes a tmpfs, except the working directory if it is below /tmp (a clone there keeps its files).
case $(printf '%q' "$PWD")/ in
/tmp/*)
    mkdir -p /keep && mount -o bind /mnt$(printf '%q' "$PWD") /keep
    mount -t tmpfs tmp /mnt/tmp
    mkdir -p /mnt$(printf '%q' "$PWD") && mount -o bind /keep /mnt$(printf '%q' "$PWD") ;;
*)
    mount -t tmpfs tmp /mnt/tmp ;;
esac
ifconfig lo 127.0.0.1 up
chroot /mnt /bin/bash $work/guest.sh </dev/console >/dev/console 2>&1
poweroff -f
EOF
chmod +x "$work/initrd/init"
(cd "$work/initrd" && find . | cpio -o -H newc 2>/dev/null | gzip -1) >"$work/initrd.gz" || die "cpio failed"

if [ "$check" = 1 ]; then
    set -- 'test -c /dev/kvm && echo "kvm-emulated: /dev/kvm is there"'
fi
{
    echo "cd $(printf '%q' "$PWD") || exit 1"
    # The environment that matters to the tests (the build tree, sanitizer options, CI), quoted as it is here.
    for v in FERRY_BUILD FERRY_VALGRIND_BUILD ASAN_OPTIONS UBSAN_OPTIONS CI PYTHONDONTWRITEBYTECODE; do
        [ -n "${!v+x}" ] && echo "export $v=$(printf '%q' "${!v}")"
    done
    echo "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root"
    # Tests scale their waits by this (they wait for progress, they do not measure it).
    echo "export FERRY_KVM_EMULATED=1"
    echo "bash -c $(printf '%q' "$*")"
    echo "echo \$? > $work/rc"
} >"$work/guest.sh"

# -cpu max gives TCG's SVM (with nested paging). One host thread runs all emulated vCPUs (thread=single): with a
# thread each (FERRY_TCG_THREAD=multi) the emulated kernel was seen stalling for minutes (RCU stalls, soft lockups)
# on this project's 2-core machines while another build ran, and the single thread finished the same tests.
timeout "$timeout" qemu-system-x86_64 -accel tcg,thread=${FERRY_TCG_THREAD:-single} -cpu max -smp "$smp" -m "$mem" \
    -nographic -no-reboot -nodefaults -serial stdio \
    -kernel "/boot/vmlinuz-$kver" -initrd "$work/initrd.gz" -append "console=ttyS0 quiet panic=-1" \
    -virtfs local,path=/,mount_tag=host,security_model=none,multidevs=remap </dev/null
qrc=$?
[ "$qrc" = 124 ] && die "the emulated machine did not finish within ${timeout}s"
[ -f "$work/rc" ] || die "the emulated machine stopped without running the command (qemu exit $qrc)"
rc=$(cat "$work/rc")
if [ "$check" = 1 ] && [ "$rc" != 0 ]; then
    die "the emulated machine has no /dev/kvm (kvm-amd did not load under TCG)"
fi
exit "$rc"
