"""Migrations over a real network link: the source in one network namespace, the destination in another, joined
by a veth pair (netns.py, the `netpair` fixture). A plain precopy migration over TCP across the veth; a
migration through a rate-limited link, whose measured throughput (query-migrate's mbps) follows the link's rate;
one over a link with delay and loss (needs sch_netem); and a link cut for 2 to 2.5 s mid-migration, which fails
a source whose io-timeout is shorter than the cut (it keeps running intact and migrates again once the link is
back) and is ridden out by one whose io-timeout is longer.

The link is cut by taking both veth ends down: nothing crosses and nobody is told (no RST, no ICMP), as with a
pulled cable; TCP retransmits with its usual backoff and carries on when the link comes back."""

import time

import pytest

from ferrytest import free_port, wait_until
from netns import Unsupported, netpair  # noqa: F401 (netpair: the fixture)
from test_failures import assert_source_intact, wait_all_written, wait_transferring
from test_migration import AB, FAST, check_running_destination

# A workload that dirties 64 MiB/s while the migration may send 16 MiB/s: it cannot converge, so the migration
# is surely still in a pass when the link goes down; raising max-bandwidth afterwards lets it finish.
SLOW_AB = ["-m", "64M", "-smp", "2", "-pattern", "ab", "-dirty-rate", "64"]
SLOW = 16 << 20


def start_destination(wl, pair, name, args):
    """A destination in namespace b listening on its address; it stays up after a failure, to be asked."""
    uri = pair.tcp_uri(free_port())
    dst = wl.start(name, *args, "-incoming", "defer", prefix=pair.b.prefix)
    dst.cmd("migrate-incoming", uri=uri, exit_on_error=False)
    pair.wait_listening(uri)
    return dst, uri


def start_source(wl, pair, args):
    src = wl.start("src", *args, prefix=pair.a.prefix)
    src.enable_events()
    return src


def test_precopy_across_namespaces(wl, netpair):
    dst, uri = start_destination(wl, netpair, "dst", AB)
    src = start_source(wl, netpair, AB)
    src.set_params(**{"max-bandwidth": FAST})
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    assert info["ram"]["transferred"] > 0, info
    check_running_destination(src, dst)
    # The stream crossed the veth: b's end received at least what the source sent.
    assert netpair.b.counters()["rx_bytes"] >= info["ram"]["transferred"], (netpair.b.counters(), info)


def test_rate_limited_link(wl, netpair):
    """20 Mbit/s on the source's side of the link: the source measures about that (loose bounds; the sender
    is held by the link, not by max-bandwidth, which is unlimited here)."""
    netpair.shape(netpair.a, rate="20mbit")
    dst, uri = start_destination(wl, netpair, "dst", AB)
    src = start_source(wl, netpair, AB)
    # Pages never written cost nothing to send; once all are, 64 MiB take half a minute at 20 Mbit/s.
    wait_all_written(src)
    src.set_params(**{"max-bandwidth": FAST})
    src.migrate(uri)
    wait_transferring(src)
    # The first MiBs fill the socket buffers at memory speed; measure after that. The source publishes its
    # counters once per chunk of a few MiB (a second or more at this rate), so mbps is read many times and
    # its median taken; the link's own counter says what really crossed it.
    time.sleep(1.5)
    samples = []
    rx0, t0 = netpair.b.counters()["rx_bytes"], time.monotonic()
    while time.monotonic() - t0 < 4.0:
        time.sleep(0.25)
        info = src.query_migrate()
        assert info["status"] == "active", info
        samples.append(info["ram"]["mbps"])
    link = (netpair.b.counters()["rx_bytes"] - rx0) * 8 / 1e6 / (time.monotonic() - t0)
    median = sorted(samples)[len(samples) // 2]
    print(f"20 Mbit/s link: {link:.1f} Mbit/s crossed it, query-migrate mbps median {median:.1f} of {samples}")
    assert 15 <= link <= 25, f"{link:.1f} Mbit/s crossed a link shaped to 20 Mbit/s"
    assert 10 <= median <= 30, f"median mbps {median:.1f} at a 20 Mbit/s link; samples {samples}"
    # Unshaped, the same migration finishes.
    netpair.unshape()
    info = src.wait_migration()
    assert info["status"] == "completed", info
    check_running_destination(src, dst)


def test_delay_and_loss(wl, netpair):
    """20 ms each way and 1 % loss from the source (sch_netem; skipped where the kernel has none): the
    migration completes over the lossy link and the destination runs intact."""
    try:
        netpair.shape(netpair.a, delay="20ms", loss=1)
        netpair.shape(netpair.b, delay="20ms")
    except Unsupported as e:
        pytest.skip(str(e))
    dst, uri = start_destination(wl, netpair, "dst", AB)
    src = start_source(wl, netpair, AB)
    src.set_params(**{"max-bandwidth": FAST})
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    check_running_destination(src, dst)


def test_cut_shorter_io_timeout_fails_source_intact(wl, netpair):
    """io-timeout 500 ms, link down for 2.5 s: the source's writes stop moving once the socket buffers are full
    (about a second at 16 MiB/s), and it gives up naming io-timeout while the link is still down; its workload
    never stopped. After the link is back, it migrates again over the same link."""
    dst, uri = start_destination(wl, netpair, "dst", SLOW_AB)
    src = start_source(wl, netpair, SLOW_AB)
    wait_all_written(src)
    src.set_params(**{"max-bandwidth": SLOW, "io-timeout": 500})
    src.migrate(uri)
    wait_transferring(src)
    cut = netpair.cut(2.5)
    assert cut.down.wait(10)
    info = src.wait_migration(timeout=30)
    failed_at = time.monotonic()
    assert info["status"] == "failed", info
    desc = info.get("error-desc", "")
    assert "no progress for 500 ms (io-timeout)" in desc, desc
    assert not cut.up.is_set(), f"the source failed only after the link came back ({desc})"
    wait_until(lambda: "failed" in src.migration_events(), 10, "a MIGRATION event with status failed")
    assert_source_intact(src)
    cut.join(15)
    print(f"source failed {failed_at - cut.t_down:.2f} s into a {cut.t_up - cut.t_down:.2f} s cut")
    # The destination finds the stream ended once the link carries the source's close; it never ran.
    info = dst.wait_migration(statuses=("failed",), timeout=30)
    assert info.get("error-desc"), info
    assert dst.status() == "inmigrate", dst.status()

    dst2, uri2 = start_destination(wl, netpair, "dst2", SLOW_AB)
    src.set_params(**{"max-bandwidth": FAST, "io-timeout": 0})
    src.migrate(uri2)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    check_running_destination(src, dst2)


def test_cut_longer_io_timeout_completes(wl, netpair):
    """io-timeout 10 s, link down for 2 s: the migration stalls and carries on. The stall the source sees is
    longer than the cut (TCP's retransmission timer backs off while the link is down: the first retransmission
    after the link is back can come a second or more later), hence the margin."""
    dst, uri = start_destination(wl, netpair, "dst", SLOW_AB)
    src = start_source(wl, netpair, SLOW_AB)
    wait_all_written(src)
    src.set_params(**{"max-bandwidth": SLOW, "io-timeout": 10000})
    src.migrate(uri)
    wait_transferring(src)
    cut = netpair.cut(2.0)
    assert cut.down.wait(10)
    cut.join(15)
    info = src.query_migrate()
    assert info["status"] == "active", info
    stalled = info["ram"]["transferred"]
    # Progress again after the link is back, still within the same migration.
    t_up = time.monotonic()
    wait_until(lambda: src.query_migrate()["ram"]["transferred"] > stalled, 15, "RAM to flow again after the cut")
    print(f"RAM flowed again {time.monotonic() - t_up:.2f} s after the link came back")
    src.set_params(**{"max-bandwidth": FAST})
    info = src.wait_migration()
    assert info["status"] == "completed", info
    assert "failed" not in src.migration_events(), src.qmp.events
    check_running_destination(src, dst)
