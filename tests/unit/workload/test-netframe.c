/*
 * ferry-workload's network device without a TAP: the frame handling of netframe.c (ARP and ICMP echo replies,
 * the Internet checksum, drops of frames that are not for the device or are malformed, every truncation of a good
 * frame, and random damage, which under ASan also proves nothing is read beyond a frame) and the -netdev/-device
 * parsers of net.c with their error messages. The TAP itself is tested by tests/integration/test_tap.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "net.h"

static const NetIdentity me = { .mac = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 }, .ip = { 10, 0, 0, 2 } };
static const uint8_t peer_mac[6] = { 0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee };
static const uint8_t peer_ip[4] = { 10, 0, 0, 1 };

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/* An ARP request from the peer for @target; returns its length. */
static size_t arp_request(uint8_t *f, const uint8_t target[4])
{
    memset(f, 0xff, 6);
    memcpy(f + 6, peer_mac, 6);
    put16(f + 12, 0x0806);
    uint8_t *a = f + 14;
    put16(a, 1);
    put16(a + 2, 0x0800);
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, 1);
    memcpy(a + 8, peer_mac, 6);
    memcpy(a + 14, peer_ip, 4);
    memset(a + 18, 0, 6);
    memcpy(a + 24, target, 4);
    return 14 + 28;
}

/* An ICMP echo request from the peer to us with @payload_len bytes of data and @opt_words words of IP options;
 * returns its length. */
static size_t echo_request(uint8_t *f, size_t payload_len, unsigned opt_words)
{
    size_t ihl = 20 + 4 * opt_words;
    size_t total = ihl + 8 + payload_len;

    memcpy(f, me.mac, 6);
    memcpy(f + 6, peer_mac, 6);
    put16(f + 12, 0x0800);
    uint8_t *ip = f + 14;
    memset(ip, 0, ihl);
    ip[0] = (uint8_t)(0x40 | (ihl / 4));
    put16(ip + 2, (uint16_t)total);
    put16(ip + 4, 0x1234);
    put16(ip + 6, 0x4000); /* DF */
    ip[8] = 64;
    ip[9] = 1;
    memcpy(ip + 12, peer_ip, 4);
    memcpy(ip + 16, me.ip, 4);
    for (unsigned i = 0; i < opt_words; i++) {
        memcpy(ip + 20 + 4 * i, "\x01\x01\x01\x01", 4); /* NOP options */
    }
    put16(ip + 10, net_inet_checksum(ip, ihl));
    uint8_t *icmp = ip + ihl;
    icmp[0] = 8;
    icmp[1] = 0;
    put16(icmp + 2, 0);
    put16(icmp + 4, 0xbeef);
    put16(icmp + 6, 7);
    for (size_t i = 0; i < payload_len; i++) {
        icmp[8 + i] = (uint8_t)(i * 7 + 3);
    }
    put16(icmp + 2, net_inet_checksum(icmp, 8 + payload_len));
    return 14 + total;
}

static NetFrameKind answer(const uint8_t *f, size_t len, uint8_t *reply, size_t *reply_len, const char **why)
{
    return net_frame_answer(&me, f, len, reply, NET_FRAME_MAX, reply_len, why);
}

static void expect_drop(const uint8_t *f, size_t len, const char *reason)
{
    static uint8_t reply[NET_FRAME_MAX];
    size_t reply_len = 99;
    const char *why = NULL;

    assert_int_equal(answer(f, len, reply, &reply_len, &why), NET_FRAME_DROP);
    assert_int_equal(reply_len, 0);
    assert_non_null(why);
    if (reason && !strstr(why, reason)) {
        fail_msg("dropped for '%s', expected '%s'", why, reason);
    }
}

/* RFC 1071's worked example, an odd length, and the property that a buffer holding its checksum sums to 0. */
static void test_checksum(void **state)
{
    const uint8_t rfc[] = { 0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7 };
    assert_int_equal(net_inet_checksum(rfc, sizeof(rfc)), 0x220d);
    const uint8_t odd[] = { 0x01 };
    assert_int_equal(net_inet_checksum(odd, 1), 0xfeff);
    assert_int_equal(net_inet_checksum(odd, 0), 0xffff);
    uint8_t buf[10] = { 0x45, 0x00, 0x00, 0x1c, 0, 0, 0, 0, 0, 0 };
    put16(buf + 8, net_inet_checksum(buf, 8));
    assert_int_equal(net_inet_checksum(buf, 10), 0);
}

static void test_arp_reply(void **state)
{
    uint8_t f[64], reply[NET_FRAME_MAX];
    size_t len = arp_request(f, me.ip), reply_len;
    const char *why = "unset";

    assert_int_equal(answer(f, len, reply, &reply_len, &why), NET_FRAME_ARP_REPLY);
    assert_null(why);
    assert_int_equal(reply_len, 42);
    assert_memory_equal(reply, peer_mac, 6);        /* to the asker */
    assert_memory_equal(reply + 6, me.mac, 6);      /* from us */
    assert_int_equal(get16(reply + 12), 0x0806);
    const uint8_t *a = reply + 14;
    assert_int_equal(get16(a), 1);
    assert_int_equal(get16(a + 2), 0x0800);
    assert_int_equal(a[4], 6);
    assert_int_equal(a[5], 4);
    assert_int_equal(get16(a + 6), 2);              /* reply */
    assert_memory_equal(a + 8, me.mac, 6);
    assert_memory_equal(a + 14, me.ip, 4);
    assert_memory_equal(a + 18, peer_mac, 6);
    assert_memory_equal(a + 24, peer_ip, 4);

    /* Unicast to our MAC (a cache refresh) is answered too; padding after the packet is ignored. */
    memcpy(f, me.mac, 6);
    memset(f + len, 0, sizeof(f) - len);
    assert_int_equal(answer(f, 60, reply, &reply_len, &why), NET_FRAME_ARP_REPLY);
    assert_int_equal(reply_len, 42);
}

static void test_arp_drops(void **state)
{
    uint8_t f[64];
    const uint8_t other[4] = { 10, 0, 0, 3 };
    size_t len;

    len = arp_request(f, other);
    expect_drop(f, len, "another address");
    len = arp_request(f, me.ip);
    put16(f + 14 + 6, 2);
    expect_drop(f, len, "not a request");
    len = arp_request(f, me.ip);
    put16(f + 14, 6); /* IEEE 802 hardware type */
    expect_drop(f, len, "Ethernet/IPv4");
    len = arp_request(f, me.ip);
    memcpy(f + 14 + 14, me.ip, 4); /* the sender claims our address */
    expect_drop(f, len, "our own address");
    len = arp_request(f, me.ip);
    memcpy(f, peer_mac, 6); /* for another station */
    expect_drop(f, len, "another MAC");
    len = arp_request(f, me.ip);
    f[6] |= 1; /* a multicast source is never a real sender */
    expect_drop(f, len, "multicast source");
    len = arp_request(f, me.ip);
    for (size_t n = 0; n < len; n++) {
        expect_drop(f, n, NULL);
    }
}

static void check_echo_reply(const uint8_t *req, size_t req_len, const uint8_t *reply, size_t reply_len)
{
    const uint8_t *rip = reply + 14, *qip = req + 14;
    size_t ihl = (size_t)(qip[0] & 0x0f) * 4, total = get16(qip + 2);

    assert_int_equal(reply_len, 14 + total);
    assert_memory_equal(reply, peer_mac, 6);
    assert_memory_equal(reply + 6, me.mac, 6);
    assert_int_equal(get16(reply + 12), 0x0800);
    assert_int_equal(rip[0], qip[0]);
    assert_int_equal(get16(rip + 2), total);
    assert_int_equal(rip[8], 64);
    assert_int_equal(rip[9], 1);
    assert_memory_equal(rip + 12, me.ip, 4);
    assert_memory_equal(rip + 16, peer_ip, 4);
    assert_memory_equal(rip + 20, qip + 20, ihl - 20);        /* options */
    assert_int_equal(net_inet_checksum(rip, ihl), 0);
    const uint8_t *ricmp = rip + ihl, *qicmp = qip + ihl;
    assert_int_equal(ricmp[0], 0);
    assert_int_equal(ricmp[1], 0);
    assert_int_equal(net_inet_checksum(ricmp, total - ihl), 0);
    assert_memory_equal(ricmp + 4, qicmp + 4, total - ihl - 4); /* identifier, sequence, data */
    (void)req_len;
}

static void test_echo_reply(void **state)
{
    static uint8_t f[2048], reply[NET_FRAME_MAX];
    size_t reply_len;
    const char *why;

    /* Even and odd payloads (the checksum's last byte), IP options, and Ethernet padding after a short one. */
    const size_t payloads[] = { 0, 1, 56, 57, 1472 };
    for (size_t i = 0; i < sizeof(payloads) / sizeof(payloads[0]); i++) {
        for (unsigned opts = 0; opts <= 2; opts += 2) {
            size_t len = echo_request(f, payloads[i], opts);
            assert_int_equal(answer(f, len, reply, &reply_len, &why), NET_FRAME_ECHO_REPLY);
            assert_null(why);
            check_echo_reply(f, len, reply, reply_len);
        }
    }
    size_t len = echo_request(f, 4, 0);
    memset(f + len, 0, 60 - len);
    assert_int_equal(answer(f, 60, reply, &reply_len, &why), NET_FRAME_ECHO_REPLY);
    check_echo_reply(f, len, reply, reply_len);
    assert_int_equal(reply_len, len);

    /* A reply buffer too small for the echo is a drop, not an overflow. */
    len = echo_request(f, 100, 0);
    assert_int_equal(net_frame_answer(&me, f, len, reply, len - 1, &reply_len, &why), NET_FRAME_DROP);
    assert_non_null(strstr(why, "reply buffer"));
}

static void test_echo_drops(void **state)
{
    static uint8_t f[2048];
    size_t len;
    uint8_t *ip = f + 14;

    len = echo_request(f, 56, 0);
    f[14 + 20 + 8] ^= 1; /* data changed, checksum not */
    expect_drop(f, len, "ICMP checksum");
    len = echo_request(f, 56, 0);
    ip[8] = 1; /* TTL changed, header checksum not */
    expect_drop(f, len, "header checksum");
    len = echo_request(f, 56, 0);
    put16(ip + 2, (uint16_t)(len - 14 + 1)); /* claims a byte more than the frame has */
    put16(ip + 10, 0);
    put16(ip + 10, net_inet_checksum(ip, 20));
    expect_drop(f, len, "total length");
    len = echo_request(f, 56, 0);
    put16(ip + 2, 19);
    put16(ip + 10, 0);
    put16(ip + 10, net_inet_checksum(ip, 20));
    expect_drop(f, len, "total length");
    len = echo_request(f, 56, 0);
    ip[0] = 0x44; /* header length 16 */
    expect_drop(f, len, "header length");
    len = echo_request(f, 56, 0);
    ip[0] = 0x65; /* version 6 in an IPv4 frame */
    expect_drop(f, len, "version");
    len = echo_request(f, 56, 0);
    put16(ip + 6, 0x2000); /* more fragments */
    put16(ip + 10, 0);
    put16(ip + 10, net_inet_checksum(ip, 20));
    expect_drop(f, len, "fragment");
    len = echo_request(f, 56, 0);
    ip[9] = 17; /* UDP */
    put16(ip + 10, 0);
    put16(ip + 10, net_inet_checksum(ip, 20));
    expect_drop(f, len, "not ICMP");
    len = echo_request(f, 56, 0);
    ip[19] = 3; /* to 10.0.0.3 */
    put16(ip + 10, 0);
    put16(ip + 10, net_inet_checksum(ip, 20));
    expect_drop(f, len, "another address");
    len = echo_request(f, 56, 0);
    ip[12] = 127; /* from loopback */
    put16(ip + 10, 0);
    put16(ip + 10, net_inet_checksum(ip, 20));
    expect_drop(f, len, "loopback");
    len = echo_request(f, 56, 0);
    ip[20] = 0; /* an echo reply: never answered, or two devices would ping-pong */
    put16(ip + 22, 0);
    put16(ip + 22, net_inet_checksum(ip + 20, len - 34));
    expect_drop(f, len, "not an echo request");
    len = echo_request(f, 56, 0);
    memcpy(f, peer_mac, 6);
    expect_drop(f, len, "another MAC");
    len = echo_request(f, 56, 0);
    memset(f, 0xff, 6); /* broadcast IPv4 is not for a single host */
    expect_drop(f, len, "another MAC");
    len = echo_request(f, 56, 0);
    put16(f + 12, 0x8100);
    expect_drop(f, len, "VLAN");
    len = echo_request(f, 56, 0);
    put16(f + 12, 0x86dd);
    expect_drop(f, len, "neither IPv4 nor ARP");
    /* Every truncation of a good request is dropped (the reply would need bytes that were not read). */
    len = echo_request(f, 57, 1);
    for (size_t n = 0; n < len; n++) {
        expect_drop(f, n, NULL);
    }
}

/* Random damage to good frames: never a crash or an out-of-bounds read (ASan), and whatever is answered carries
 * correct checksums. Deterministic (fixed seed). */
static void test_random_frames(void **state)
{
    static uint8_t f[256], reply[NET_FRAME_MAX];
    uint64_t x = 0x9e3779b97f4a7c15u;
    unsigned answered = 0;

    for (int i = 0; i < 200000; i++) {
        size_t len = (i & 1) ? echo_request(f, 40, (unsigned)(i / 2) % 3) : arp_request(f, me.ip);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        unsigned flips = (unsigned)(x % 4);
        for (unsigned k = 0; k < flips; k++) {
            f[(x >> (8 + 8 * k)) % len] ^= (uint8_t)(1u << ((x >> (40 + k)) % 8));
        }
        if (x & 0x100000) {
            len = (size_t)((x >> 24) % (len + 1));
        }
        /* A copy of exactly @len bytes on the heap, so that ASan sees a read past the frame. */
        uint8_t *copy = malloc(len ? len : 1);
        assert_non_null(copy);
        memcpy(copy, f, len);
        size_t reply_len;
        const char *why;
        NetFrameKind k = answer(copy, len, reply, &reply_len, &why);
        if (k == NET_FRAME_ECHO_REPLY) {
            size_t ihl = (size_t)(reply[14] & 0x0f) * 4;
            assert_int_equal(net_inet_checksum(reply + 14, ihl), 0);
            assert_int_equal(net_inet_checksum(reply + 14 + ihl, reply_len - 14 - ihl), 0);
            answered++;
        } else if (k == NET_FRAME_ARP_REPLY) {
            assert_int_equal(reply_len, 42);
            answered++;
        } else {
            assert_non_null(why);
        }
        free(copy);
    }
    /* Without damage (flips == 0, no truncation) frames are answered: the loop did test both outcomes. */
    assert_true(answered > 1000);
}

static void test_parse_addresses(void **state)
{
    uint8_t mac[6], ip[4];
    char s[18];

    assert_true(net_parse_mac("52:54:00:AB:cd:0f", mac));
    net_format_mac(mac, s);
    assert_string_equal(s, "52:54:00:ab:cd:0f");
    const char *bad_macs[] = { "", "52:54:00:12:34", "52:54:00:12:34:56:78", "52-54-00-12-34-56", "5:54:00:12:34:56",
                               "52:54:00:12:34:5g", "52:54:00:12:34:56:", "525400123456" };
    for (size_t i = 0; i < sizeof(bad_macs) / sizeof(bad_macs[0]); i++) {
        if (net_parse_mac(bad_macs[i], mac)) {
            fail_msg("'%s' parsed as a MAC", bad_macs[i]);
        }
    }
    assert_true(net_parse_ipv4("10.0.0.2", ip));
    net_format_ipv4(ip, s);
    assert_string_equal(s, "10.0.0.2");
    assert_false(net_parse_ipv4("10.0.0", ip));
    assert_false(net_parse_ipv4("10.0.0.256", ip));
    assert_false(net_parse_ipv4("::1", ip));
}

static void expect_parse_error(bool netdev, const char *arg, const char *needle)
{
    NetSetup setup = { .n = 0 };
    FerryError *err = NULL;

    assert_true(net_parse_netdev(&setup, "tap,id=n0,ifname=ftap0,script=no", NULL));
    bool ok = netdev ? net_parse_netdev(&setup, arg, &err) : net_parse_device(&setup, arg, &err);
    if (ok) {
        fail_msg("'%s' was accepted", arg);
    }
    if (!strstr(ferry_error_msg(err), needle)) {
        fail_msg("'%s': message '%s' lacks '%s'", arg, ferry_error_msg(err), needle);
    }
    ferry_error_free(err);
}

static void test_parse_options(void **state)
{
    NetSetup setup = { .n = 0 };
    FerryError *err = NULL;

    assert_true(net_parse_netdev(&setup, "tap,id=n0,ifname=ftap0,script=no,downscript=no", &err));
    assert_false(net_setup_check(&setup, &err));
    assert_non_null(strstr(ferry_error_msg(err), "not used"));
    ferry_error_free(err);
    err = NULL;
    assert_true(net_parse_device(&setup, "virtio-net-pci,netdev=n0,ip=10.0.0.2,id=nic0", &err));
    assert_true(net_setup_check(&setup, &err));
    assert_int_equal(setup.n, 1);
    assert_string_equal(setup.cfg[0].id, "n0");
    assert_string_equal(setup.cfg[0].ifname, "ftap0");
    assert_string_equal(setup.cfg[0].device_id, "nic0");
    assert_memory_equal(setup.cfg[0].ident.mac, me.mac, 6); /* QEMU's default */
    assert_memory_equal(setup.cfg[0].ident.ip, me.ip, 4);

    expect_parse_error(true, "user,id=n1", "'user'");
    expect_parse_error(true, "tap,ifname=ftap1", "id= is required");
    expect_parse_error(true, "tap,id=n1", "ifname= is required");
    expect_parse_error(true, "tap,id=n0,ifname=ftap1", "duplicate id 'n0'");
    expect_parse_error(true, "tap,id=n1,ifname=ftap0", "'ftap0' is used");
    expect_parse_error(true, "tap,id=n1,ifname=tap%d", "bad ifname 'tap%d'");
    expect_parse_error(true, "tap,id=n1,ifname=this-name-is-too-long", "bad ifname");
    expect_parse_error(true, "tap,id=1n,ifname=ftap1", "bad id '1n'");
    expect_parse_error(true, "tap,id=n1,ifname=ftap1,script=/etc/qemu-ifup", "script=/etc/qemu-ifup");
    expect_parse_error(true, "tap,id=n1,ifname=ftap1,vhost=on", "'vhost'");
    expect_parse_error(true, "tap,id=n1,ifname", "'ifname' needs a value");
    expect_parse_error(false, "e1000,netdev=n0,ip=10.0.0.2", "'e1000'");
    expect_parse_error(false, "virtio-net,ip=10.0.0.2", "netdev= is required");
    expect_parse_error(false, "virtio-net,netdev=n9,ip=10.0.0.2", "netdev 'n9' not found");
    expect_parse_error(false, "virtio-net,netdev=n0", "ip= is required");
    expect_parse_error(false, "virtio-net,netdev=n0,ip=10.0.0.300", "'10.0.0.300'");
    expect_parse_error(false, "virtio-net,netdev=n0,ip=224.0.0.1", "not a unicast");
    expect_parse_error(false, "virtio-net,netdev=n0,ip=10.0.0.2,mac=52:54:00:12:34", "'52:54:00:12:34'");
    expect_parse_error(false, "virtio-net,netdev=n0,ip=10.0.0.2,mac=01:00:5e:00:00:01", "multicast");
    expect_parse_error(false, "virtio-net,netdev=n0,ip=10.0.0.2,queues=4", "'queues'");

    /* A second device on the same netdev; two devices with the default MAC. */
    assert_false(net_parse_device(&setup, "virtio-net,netdev=n0,ip=10.0.0.3", &err));
    assert_non_null(strstr(ferry_error_msg(err), "used by another device"));
    ferry_error_free(err);
    err = NULL;
    assert_true(net_parse_netdev(&setup, "tap,id=n1,ifname=ftap1,script=no", &err));
    assert_true(net_parse_device(&setup, "virtio-net,netdev=n1,ip=10.0.1.2", &err));
    assert_false(net_setup_check(&setup, &err));
    assert_non_null(strstr(ferry_error_msg(err), "same mac"));
    ferry_error_free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checksum),
        cmocka_unit_test(test_arp_reply),
        cmocka_unit_test(test_arp_drops),
        cmocka_unit_test(test_echo_reply),
        cmocka_unit_test(test_echo_drops),
        cmocka_unit_test(test_random_frames),
        cmocka_unit_test(test_parse_addresses),
        cmocka_unit_test(test_parse_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
