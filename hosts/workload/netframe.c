/*
 * The frames ferry-workload's network device understands, as pure functions: given one Ethernet frame read from
 * the TAP, decide whether it is an ARP request for the device's IPv4 address or an ICMP echo request to it, and
 * build the reply (RFC 826 for ARP, RFC 792 and RFC 1071 for ICMP and its checksum). Everything else is dropped
 * with a reason. No I/O, no state: net.c does the reading, writing and counting.
 *
 * Every length comes from the frame and is checked against the bytes actually read before it is used, so a
 * truncated or lying frame is dropped, never trusted.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "net.h"

#define ETHERTYPE_IPV4 0x0800
#define ETHERTYPE_ARP 0x0806
#define ETHERTYPE_VLAN 0x8100
#define ARP_HTYPE_ETHERNET 1
#define ARP_OP_REQUEST 1
#define ARP_OP_REPLY 2
#define IPPROTO_ICMP_ 1
#define ICMP_ECHO_REPLY 0
#define ICMP_ECHO_REQUEST 8
#define IPV4_FLAG_MF 0x2000
#define IPV4_FRAG_OFFSET 0x1fff
/* The TTL of the replies, Linux's default. */
#define REPLY_TTL 64

static const uint8_t broadcast_mac[NET_ETH_ALEN] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

uint16_t net_inet_checksum(const void *data, size_t len)
{
    const uint8_t *p = data;
    uint32_t sum = 0;

    for (; len > 1; p += 2, len -= 2) {
        sum += get16(p);
    }
    if (len) {
        sum += (uint32_t)p[0] << 8; /* an odd last byte is padded with a zero byte */
    }
    while (sum >> 16) {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    return (uint16_t)~sum;
}

static NetFrameKind drop(const char **why, size_t *reply_len, const char *reason)
{
    *why = reason;
    *reply_len = 0;
    return NET_FRAME_DROP;
}

/* ARP for Ethernet/IPv4 (RFC 826): the payload at @arp holds NET_ARP_LEN bytes (checked by the caller). */
static NetFrameKind answer_arp(const NetIdentity *id, const uint8_t *frame, uint8_t *reply, size_t *reply_len,
                               const char **why)
{
    const uint8_t *arp = frame + NET_ETH_HLEN;
    const uint8_t *sha = arp + 8, *spa = arp + 14, *tpa = arp + 24;
    uint8_t *r = reply + NET_ETH_HLEN;

    if (get16(arp) != ARP_HTYPE_ETHERNET || get16(arp + 2) != ETHERTYPE_IPV4 || arp[4] != NET_ETH_ALEN ||
        arp[5] != 4) {
        return drop(why, reply_len, "ARP for another hardware or protocol type than Ethernet/IPv4");
    }
    if (get16(arp + 6) != ARP_OP_REQUEST) {
        return drop(why, reply_len, "ARP that is not a request");
    }
    if (memcmp(tpa, id->ip, 4) != 0) {
        return drop(why, reply_len, "ARP request for another address");
    }
    /* A sender claiming our own address (a probe or a conflict) gets no answer that would point it at us. */
    if (memcmp(spa, id->ip, 4) == 0) {
        return drop(why, reply_len, "ARP request from our own address");
    }
    memcpy(reply, sha, NET_ETH_ALEN);
    memcpy(reply + NET_ETH_ALEN, id->mac, NET_ETH_ALEN);
    put16(reply + 12, ETHERTYPE_ARP);
    memcpy(r, arp, 6); /* htype, ptype, hlen, plen as checked */
    put16(r + 6, ARP_OP_REPLY);
    memcpy(r + 8, id->mac, NET_ETH_ALEN);
    memcpy(r + 14, id->ip, 4);
    memcpy(r + 18, sha, NET_ETH_ALEN);
    memcpy(r + 24, spa, 4);
    *reply_len = NET_ETH_HLEN + NET_ARP_LEN;
    *why = NULL;
    return NET_FRAME_ARP_REPLY;
}

/* IPv4 carrying ICMP echo (RFC 791, 792): the reply is the request with addresses swapped, type 0, and both
 * checksums computed again; the identifier, sequence number and data come back unchanged, as ping expects. */
static NetFrameKind answer_ipv4(const NetIdentity *id, const uint8_t *frame, size_t len, uint8_t *reply,
                                size_t reply_cap, size_t *reply_len, const char **why)
{
    const uint8_t *ip = frame + NET_ETH_HLEN;
    size_t avail = len - NET_ETH_HLEN;

    if (avail < 20) {
        return drop(why, reply_len, "IPv4 packet shorter than its header");
    }
    size_t ihl = (size_t)(ip[0] & 0x0f) * 4;
    size_t total = get16(ip + 2);
    if (ip[0] >> 4 != 4 || ihl < 20) {
        return drop(why, reply_len, "bad IPv4 version or header length");
    }
    /* Ethernet pads short frames, so the frame may be longer than the packet, never shorter. */
    if (total < ihl || total > avail) {
        return drop(why, reply_len, "IPv4 total length beyond the frame or inside its header");
    }
    if (net_inet_checksum(ip, ihl) != 0) {
        return drop(why, reply_len, "bad IPv4 header checksum");
    }
    if (memcmp(ip + 16, id->ip, 4) != 0) {
        return drop(why, reply_len, "IPv4 packet to another address");
    }
    /* The device does not reassemble: a fragment is not a whole echo request. */
    if (get16(ip + 6) & (IPV4_FLAG_MF | IPV4_FRAG_OFFSET)) {
        return drop(why, reply_len, "IPv4 fragment");
    }
    if (ip[9] != IPPROTO_ICMP_) {
        return drop(why, reply_len, "IPv4 packet that is not ICMP");
    }
    const uint8_t *icmp = ip + ihl;
    size_t icmp_len = total - ihl;
    if (icmp_len < 8) {
        return drop(why, reply_len, "ICMP message shorter than its header");
    }
    if (icmp[0] != ICMP_ECHO_REQUEST || icmp[1] != 0) {
        return drop(why, reply_len, "ICMP message that is not an echo request");
    }
    if (net_inet_checksum(icmp, icmp_len) != 0) {
        return drop(why, reply_len, "bad ICMP checksum");
    }
    /* A source address that is not a unicast host must not be answered (RFC 1122 3.2.2.6 and 3.2.1.3). */
    if (ip[12] == 0 || ip[12] == 127 || ip[12] >= 224) {
        return drop(why, reply_len, "ICMP echo request from a non-unicast or loopback address");
    }
    if (NET_ETH_HLEN + total > reply_cap) {
        return drop(why, reply_len, "ICMP echo request larger than the reply buffer");
    }

    memcpy(reply, frame + NET_ETH_ALEN, NET_ETH_ALEN);
    memcpy(reply + NET_ETH_ALEN, id->mac, NET_ETH_ALEN);
    put16(reply + 12, ETHERTYPE_IPV4);
    uint8_t *rip = reply + NET_ETH_HLEN;
    memcpy(rip, ip, total); /* header with its options, then the ICMP message */
    memcpy(rip + 12, id->ip, 4);
    memcpy(rip + 16, ip + 12, 4);
    rip[8] = REPLY_TTL;
    put16(rip + 10, 0);
    put16(rip + 10, net_inet_checksum(rip, ihl));
    uint8_t *ricmp = rip + ihl;
    ricmp[0] = ICMP_ECHO_REPLY;
    put16(ricmp + 2, 0);
    put16(ricmp + 2, net_inet_checksum(ricmp, icmp_len));
    *reply_len = NET_ETH_HLEN + total;
    *why = NULL;
    return NET_FRAME_ECHO_REPLY;
}

NetFrameKind net_frame_answer(const NetIdentity *id, const uint8_t *frame, size_t len, uint8_t *reply,
                              size_t reply_cap, size_t *reply_len, const char **why)
{
    if (len < NET_ETH_HLEN) {
        return drop(why, reply_len, "frame shorter than an Ethernet header");
    }
    const uint8_t *dst = frame;
    bool to_us = memcmp(dst, id->mac, NET_ETH_ALEN) == 0;
    bool to_all = memcmp(dst, broadcast_mac, NET_ETH_ALEN) == 0;
    uint16_t type = get16(frame + 12);

    if (frame[NET_ETH_ALEN] & 1) {
        return drop(why, reply_len, "frame from a multicast source address");
    }
    if (type == ETHERTYPE_VLAN) {
        return drop(why, reply_len, "VLAN-tagged frame (the device has no VLAN)");
    }
    if (type == ETHERTYPE_ARP) {
        /* Requests are broadcast; a host refreshing its cache may ask us directly. */
        if (!to_us && !to_all) {
            return drop(why, reply_len, "ARP frame for another MAC address");
        }
        if (len < NET_ETH_HLEN + NET_ARP_LEN) {
            return drop(why, reply_len, "ARP frame shorter than an Ethernet/IPv4 ARP packet");
        }
        if (reply_cap < NET_ETH_HLEN + NET_ARP_LEN) {
            return drop(why, reply_len, "ARP request larger than the reply buffer");
        }
        return answer_arp(id, frame, reply, reply_len, why);
    }
    if (type == ETHERTYPE_IPV4) {
        if (!to_us) {
            return drop(why, reply_len, "IPv4 frame for another MAC address");
        }
        return answer_ipv4(id, frame, len, reply, reply_cap, reply_len, why);
    }
    return drop(why, reply_len, "neither IPv4 nor ARP");
}
