"""ferry-workload's command line, and ferry-vm's network and memory-backend options (the same parsers,
hosts/common): bad options make the program exit non-zero at once with a message that names the
problem, without a sanitizer report. Good options are exercised by every other test."""

import os
import subprocess

import pytest

import ferrytest
from ferrytest import sanitizer_report, workload_binary

# (id, argv after the program name, words of which the message must contain at least one, case-insensitively)
BAD_COMMAND_LINES = [
    ("m-not-a-size", ["-m", "bogus"], ["bogus"]),
    ("m-bad-suffix", ["-m", "12Q"], ["12Q"]),
    ("m-zero", ["-m", "0"], ["-m", "size", "memory"]),
    ("m-missing-value", ["-m"], ["-m"]),
    ("unknown-option", ["-frobnicate"], ["frobnicate"]),
    ("incoming-bad-scheme", ["-incoming", "bogus:1"], ["bogus"]),
    ("incoming-tcp-no-port", ["-incoming", "tcp:127.0.0.1"], ["port", "tcp:127.0.0.1"]),
    ("smp-zero", ["-smp", "0"], ["smp"]),
    ("smp-not-a-number", ["-smp", "two"], ["two", "smp"]),
    ("pattern-unknown", ["-pattern", "zigzag"], ["zigzag"]),
    ("dirty-tracker-unknown", ["-dirty-tracker", "magic"], ["magic"]),
    ("dirty-rate-negative", ["-dirty-rate", "-5"], ["dirty-rate", "-5"]),
    ("qmp-not-unix", ["-qmp", "tcp:127.0.0.1:4444,server=on,wait=off"], ["qmp", "tcp"]),
    ("object-unknown-type", ["-object", "memory-backend-epc,id=m,size=1M"], ["unknown object type 'memory-backend-epc'"]),
    ("object-unknown-property", ["-object", "memory-backend-memfd,id=m,size=1M,seal=on"], ["seal"]),
    ("object-bad-share", ["-object", "memory-backend-memfd,id=m,size=1M,share=yes"], ["share", "yes"]),
    ("object-no-size", ["-object", "memory-backend-memfd,id=m"], ["size"]),
    ("object-unused", ["-object", "memory-backend-memfd,id=m,size=1M"], ["memory-backend=m"]),
    ("machine-unknown-backend", ["-machine", "memory-backend=nope"], ["nope"]),
    ("machine-unknown-property", ["-machine", "accel=kvm"], ["accel"]),
    ("backend-size-mismatch", ["-m", "64M", "-object", "memory-backend-memfd,id=m,size=32M",
                               "-machine", "memory-backend=m"], ["does not match"]),
    # -netdev tap / -device virtio-net: all refused while parsing, before any TAP is touched.
    ("netdev-missing-value", ["-netdev"], ["-netdev"]),
    ("netdev-unknown-type", ["-netdev", "user,id=n0"], ["'user'"]),
    ("netdev-no-id", ["-netdev", "tap,ifname=ft0"], ["id="]),
    ("netdev-no-ifname", ["-netdev", "tap,id=n0"], ["ifname="]),
    ("netdev-ifname-template", ["-netdev", "tap,id=n0,ifname=tap%d"], ["tap%d"]),
    ("netdev-ifname-too-long", ["-netdev", "tap,id=n0,ifname=a-very-long-ifname"], ["a-very-long-ifname"]),
    ("netdev-script", ["-netdev", "tap,id=n0,ifname=ft0,script=/etc/qemu-ifup"], ["script=/etc/qemu-ifup"]),
    ("netdev-unknown-property", ["-netdev", "tap,id=n0,ifname=ft0,vhost=on"], ["'vhost'"]),
    ("netdev-duplicate-id", ["-netdev", "tap,id=n0,ifname=ft0", "-netdev", "tap,id=n0,ifname=ft1"], ["'n0'"]),
    ("netdev-unused", ["-netdev", "tap,id=n0,ifname=ft0,script=no"], ["not used"]),
    ("device-unknown", ["-device", "e1000,netdev=n0"], ["'e1000'"]),
    ("device-netdev-not-found", ["-device", "virtio-net,netdev=n9,ip=10.0.0.2"], ["'n9'"]),
    ("device-no-netdev", ["-netdev", "tap,id=n0,ifname=ft0", "-device", "virtio-net,ip=10.0.0.2"], ["netdev="]),
    ("device-no-ip", ["-netdev", "tap,id=n0,ifname=ft0", "-device", "virtio-net,netdev=n0"], ["ip="]),
    ("device-bad-ip", ["-netdev", "tap,id=n0,ifname=ft0", "-device", "virtio-net,netdev=n0,ip=10.0.0.999"],
     ["10.0.0.999"]),
    ("device-multicast-ip", ["-netdev", "tap,id=n0,ifname=ft0", "-device", "virtio-net,netdev=n0,ip=224.0.0.1"],
     ["224.0.0.1"]),
    ("device-bad-mac", ["-netdev", "tap,id=n0,ifname=ft0",
                        "-device", "virtio-net,netdev=n0,ip=10.0.0.2,mac=52:54:00:zz:34:56"], ["52:54:00:zz:34:56"]),
    ("device-multicast-mac", ["-netdev", "tap,id=n0,ifname=ft0",
                              "-device", "virtio-net,netdev=n0,ip=10.0.0.2,mac=01:00:5e:00:00:01"], ["multicast"]),
    ("device-unknown-property", ["-netdev", "tap,id=n0,ifname=ft0",
                                 "-device", "virtio-net,netdev=n0,ip=10.0.0.2,queues=4"], ["'queues'"]),
    ("device-netdev-twice", ["-netdev", "tap,id=n0,ifname=ft0", "-device", "virtio-net,netdev=n0,ip=10.0.0.2",
                             "-device", "virtio-net,netdev=n0,ip=10.0.0.3"], ["another device"]),
]


@pytest.mark.parametrize("argv,words", [c[1:] for c in BAD_COMMAND_LINES], ids=[c[0] for c in BAD_COMMAND_LINES])
def test_bad_command_line(argv, words):
    try:
        p = subprocess.run([workload_binary(), *argv], stdin=subprocess.DEVNULL, capture_output=True, timeout=20,
                           text=True, errors="replace")
    except subprocess.TimeoutExpired:
        pytest.fail(f"ferry-workload {argv} did not exit: a bad command line must be refused at once")
    assert p.returncode > 0, f"exit status {p.returncode} for {argv}; stderr: {p.stderr}"
    assert sanitizer_report(p.stderr) is None, p.stderr
    msg = p.stderr.lower()
    assert any(w.lower() in msg for w in words), f"message for {argv} names none of {words}: {p.stderr!r}"


# ferry-vm parses its options before it opens /dev/kvm, so these run on any x86-64 build. Its network options are
# the same parser as ferry-workload's (hosts/common/netdev.c), in the flavour of a guest's NIC.
VM_BAD = [
    ("ip-on-a-guest-nic", ["-netdev", "tap,id=n0,ifname=ft0", "-device", "virtio-net-pci,netdev=n0,ip=10.0.0.2"],
     "unknown property 'ip' (netdev, mac, restore-mac, id)"),
    ("restore-mac-bad", ["-netdev", "tap,id=n0,ifname=ft0", "-device",
                         "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:02,restore-mac=new"],
     "restore-mac 'new' is not one of saved, keep"),
    ("restore-mac-keep-without-mac", ["-netdev", "tap,id=n0,ifname=ft0", "-device",
                                      "virtio-net-pci,netdev=n0,restore-mac=keep"], "restore-mac=keep needs mac="),
    ("netdev-without-device", ["-netdev", "tap,id=n0,ifname=ft0"],
     "-netdev tap,id=n0 is not used: add -device virtio-net,netdev=n0\n"),
    ("device-without-netdev", ["-device", "virtio-net-pci,netdev=n9"], "netdev 'n9' not found"),
    ("netdev-user", ["-netdev", "user,id=n0"], "unknown backend type 'user' (only tap)"),
    ("device-e1000", ["-netdev", "tap,id=n0,ifname=ft0", "-device", "e1000,netdev=n0"], "unknown device 'e1000'"),
    # The memory-backend options are ferry-workload's parser too (hosts/common/options.c), with the machine type.
    ("machine-unknown", ["-machine", "pc,foo=1"], "-machine: unsupported property 'foo' (pc, accel=kvm, "),
    ("backend-unused", ["-object", "memory-backend-memfd,id=m,size=64M"], "add -machine memory-backend=m"),
    ("backend-file-incoming", ["-object", "memory-backend-file,id=m,size=64M,mem-path=/dev/null", "-machine",
                               "memory-backend=m", "-incoming", "defer"], "cannot be used with -incoming"),
    ("object-unknown", ["-object", "memory-backend-epc,id=m,size=1M"], "unknown object type 'memory-backend-epc'"),
]


@pytest.mark.parametrize("argv,text", [c[1:] for c in VM_BAD], ids=[c[0] for c in VM_BAD])
def test_vm_bad_options(argv, text):
    vm = os.path.join(ferrytest.build_dir(), "hosts", "vm", "ferry-vm")
    if not os.access(vm, os.X_OK):
        pytest.skip(f"{vm} was not built (not an x86-64 Linux build)")
    p = subprocess.run([vm, *argv, "-serial", "null"], stdin=subprocess.DEVNULL, capture_output=True, timeout=20,
                       text=True, errors="replace")
    assert p.returncode == 1, p
    assert sanitizer_report(p.stderr) is None, p.stderr
    assert text in p.stderr, p.stderr
