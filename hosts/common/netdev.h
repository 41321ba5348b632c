/*
 * The network options and the TAP, shared by the host programs ferry-workload and ferry-vm (hosts/common, compiled
 * into each): -netdev tap,... and -device virtio-net,... as QEMU spells them, and the TAP itself (attached by name
 * through /dev/net/tun, or checked when a migration source hands its fd over with backend-transfer). Not part of
 * libferry; like the programs it uses only the public API. Each program's device is its own (hosts/workload/net.c
 * answers ARP and ping itself; hosts/vm/virtio-net.c is a guest's NIC).
 */
#ifndef FERRY_HOSTS_NETDEV_H
#define FERRY_HOSTS_NETDEV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/ferry.h"

/* At most this many -netdev/-device pairs (each has its own thread and section instance). */
#define NET_MAX_DEVICES 4
/* The longest id accepted for -netdev id= and -device id= (QEMU ids are short names too). */
#define NET_ID_MAX 63
/* Linux's IFNAMSIZ, including the NUL. */
#define NET_IFNAME_SIZE 16
#define NET_ETH_ALEN 6
#define NET_TUN_PATH "/dev/net/tun"
/* The kind the devices register their TAP under with ferry_migration_register_backend (the id is the netdev's). */
#define NET_TAP_BACKEND_KIND "virtio-net-tap"

/* Who a device is on the wire. ip is in network byte order, as on the wire (all zero for a guest's NIC). */
typedef struct NetIdentity {
    uint8_t mac[NET_ETH_ALEN];
    uint8_t ip[4];
} NetIdentity;

/* One -netdev tap and the -device virtio-net that uses it. */
typedef struct NetConfig {
    char id[NET_ID_MAX + 1];          /* -netdev id=, the backend's id for backend-transfer */
    char ifname[NET_IFNAME_SIZE];     /* -netdev ifname= */
    bool has_device;                  /* a -device uses this netdev */
    char device_id[NET_ID_MAX + 1];   /* -device id= ("" if not given) */
    NetIdentity ident;                /* -device mac= and ip= */
} NetConfig;

typedef struct NetSetup {
    /* Set before parsing. false (ferry-workload): the device has no guest OS behind it and answers for an
     * address, so -device needs ip=. true (ferry-vm): the guest's stack has the addresses and ip= is refused. */
    bool guest_nic;
    NetConfig cfg[NET_MAX_DEVICES];
    unsigned n;
} NetSetup;

/* -netdev tap,id=ID,ifname=NAME[,script=no][,downscript=no]. The error names the option and the bad part. */
bool net_parse_netdev(NetSetup *setup, const char *arg, FerryError **errp);
/* -device virtio-net[-pci|-device],netdev=ID[,mac=MAC][,id=ID] and, unless setup->guest_nic, ip=A.B.C.D. Must
 * follow its -netdev. */
bool net_parse_device(NetSetup *setup, const char *arg, FerryError **errp);
/* After all options: every -netdev has its -device, and no two devices share a MAC. */
bool net_setup_check(const NetSetup *setup, FerryError **errp);

/* "52:54:00:12:34:56" -> bytes; false unless exactly six two-digit hex pairs separated by ':'. */
bool net_parse_mac(const char *s, uint8_t mac[NET_ETH_ALEN]);
/* Dotted quad -> bytes (inet_pton); false if it is not one. */
bool net_parse_ipv4(const char *s, uint8_t ip[4]);
void net_format_mac(const uint8_t mac[NET_ETH_ALEN], char out[18]);
void net_format_ipv4(const uint8_t ip[4], char out[16]);

/* Whether NET_TUN_PATH exists and is a character device (checked at start-up, so that a missing TUN/TAP driver is
 * an error then, not when a destination first runs). */
bool net_tun_available(FerryError **errp);
/* Attach the TAP @ifname for plain Ethernet frames (IFF_TAP | IFF_NO_PI; created if missing, as for QEMU; as one
 * more queue if it was made multi_queue). Returns its fd (close-on-exec, non-blocking), or -1 with *errp set and
 * *busy telling whether another process holds it. */
int net_tap_attach(const char *ifname, bool *multi_queue, bool *busy, FerryError **errp);
/* Whether @fd, received from a migration source, is what net_tap_attach(@ifname) would have given: an attached
 * TAP of plain Ethernet frames (no packet information, no vnet header) named @ifname. */
bool net_tap_verify(int fd, const char *ifname, bool *multi_queue, FerryError **errp);

#endif
