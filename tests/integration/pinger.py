"""An ICMP echo sender for test_tap.py, run as its own process inside the test's network namespace
(`ip netns exec NS python3 pinger.py ADDRESS INTERVAL`). It is not a test and not a general ping: it sends echo
requests with its own identifier every INTERVAL seconds over a raw socket (root), prints "up" once the first reply
came, stops sending when a line "stop" (or end of file) arrives on stdin, waits GRACE seconds for late replies and
prints one JSON object: sent, received, the sequence numbers lost, and each reply's round-trip time. Timestamps are
CLOCK_MONOTONIC (Python's time.monotonic), the clock the test reads too.

Standard library only, like the other test helpers.
"""

import json
import os
import select
import socket
import struct
import sys
import time

GRACE = 1.0


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident, seq):
    payload = struct.pack("!d", time.monotonic()) + b"ferry-pinger"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return header[:2] + struct.pack("!H", checksum(header + payload)) + header[4:] + payload


def main():
    address, interval = sys.argv[1], float(sys.argv[2])
    ident = os.getpid() & 0xFFFF
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sent = {}      # seq -> send time
    replies = {}   # seq -> (reply time, rtt)
    seq = 0
    next_send = time.monotonic()
    stop_at = None
    announced = False
    while True:
        now = time.monotonic()
        if stop_at is None and now >= next_send:
            sock.sendto(echo_request(ident, seq & 0xFFFF), (address, 0))
            sent[seq] = now
            seq += 1
            next_send += interval
            if next_send < now:          # the machine was busy: keep the rate, do not burst
                next_send = now + interval
        if stop_at is not None and now >= stop_at:
            break
        wake = stop_at if stop_at is not None else next_send
        watch = [sock] if stop_at is not None else [sock, sys.stdin]
        ready, _, _ = select.select(watch, [], [], max(0.0, wake - time.monotonic()))
        if sys.stdin in ready:
            line = sys.stdin.readline()
            if not line or line.strip() == "stop":
                stop_at = time.monotonic() + GRACE
        if sock in ready:
            packet = sock.recv(65536)
            got = time.monotonic()
            ihl = (packet[0] & 0x0F) * 4
            icmp = packet[ihl:]
            if len(icmp) < 8:
                continue
            kind, _, _, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
            if kind != 0 or rid != ident:
                continue
            # Sequence numbers wrap at 2^16: the reply belongs to the latest request with these low bits.
            full = max((s for s in sent if s & 0xFFFF == rseq), default=None)
            if full is None or full in replies:
                continue
            replies[full] = (got, got - sent[full])
            if not announced:
                print("up", flush=True)
                announced = True
    lost = sorted(set(sent) - set(replies))
    print(json.dumps({
        "sent": len(sent),
        "received": len(replies),
        "lost": lost,
        "interval": interval,
        "first-send": sent[0] if sent else None,
        "send-times": [sent[s] for s in sorted(sent)],
        "rtts": {str(s): replies[s][1] for s in sorted(replies)},
    }), flush=True)


if __name__ == "__main__":
    main()
