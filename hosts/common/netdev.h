/*
 * The network options and the TAP, shared by the host programs ferry-workload and ferry-vm (hosts/common, compiled
 * into each): -netdev tap,... and -device virtio-net,... as QEMU spells them, and the TAP itself (attached by name
 * through /dev/net/tun, or checked when a migration source hands its fd over with backend-transfer). Not part of
 * libferry; like the programs it uses only the public API. Each program's device is its own (hosts/workload/net.c
 * answers ARP and ping itself; hosts/vm/virtio-net.c is a guest's NIC).
 */
#ifndef FERRY_HOSTS_NETDEV_H
#define FERRY_HOSTS_NETDEV_H

#include <pthread.h>
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

/*
 * -device ...,restore-mac= (ferry-vm only): what loading device state does when the incoming MAC is not this
 * device's mac=. SAVED (the default): the state is refused, a migration keeps the NIC's identity. KEEP: the state
 * is taken and the device keeps its own mac= (for clones restored from one snapshot, each with its own MAC).
 */
typedef enum NetRestoreMac {
    NET_RESTORE_MAC_SAVED,
    NET_RESTORE_MAC_KEEP,
} NetRestoreMac;

/* One -netdev tap and the -device virtio-net that uses it. */
typedef struct NetConfig {
    char id[NET_ID_MAX + 1];          /* -netdev id=, the backend's id for backend-transfer */
    char ifname[NET_IFNAME_SIZE];     /* -netdev ifname= */
    bool has_device;                  /* a -device uses this netdev */
    char device_id[NET_ID_MAX + 1];   /* -device id= ("" if not given) */
    NetIdentity ident;                /* -device mac= and ip= */
    NetRestoreMac restore_mac;        /* -device restore-mac= (always SAVED for ferry-workload) */
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
/* -device virtio-net[-pci|-device],netdev=ID[,mac=MAC][,id=ID] and, unless setup->guest_nic, ip=A.B.C.D; if
 * setup->guest_nic, [,restore-mac=saved|keep] (keep needs mac=). Must follow its -netdev. */
bool net_parse_device(NetSetup *setup, const char *arg, FerryError **errp);
/* After all options: every -netdev has its -device, and no two devices share a MAC. */
bool net_setup_check(const NetSetup *setup, FerryError **errp);

/* "52:54:00:12:34:56" -> bytes; false unless exactly six two-digit hex pairs separated by ':'. */
bool net_parse_mac(const char *s, uint8_t mac[NET_ETH_ALEN]);
/* Dotted quad -> bytes (inet_pton); false if it is not one. */
bool net_parse_ipv4(const char *s, uint8_t ip[4]);
void net_format_mac(const uint8_t mac[NET_ETH_ALEN], char out[18]);
/* restore-mac='s value for @r: "saved" or "keep". */
const char *net_restore_mac_name(NetRestoreMac r);
void net_format_ipv4(const uint8_t ip[4], char out[16]);

/* Whether NET_TUN_PATH exists and is a character device (checked at start-up, so that a missing TUN/TAP driver is
 * an error then, not when a destination first runs). */
bool net_tun_available(FerryError **errp);

/*
 * A device's TAP as both programs' devices keep it. It has no lock of its own: every call, and every access to
 * the fields, is made under the device's lock, with the device not reading or writing frames.
 */
typedef struct NetTap {
    int fd;             /* the TAP (close-on-exec, non-blocking), -1 while there is none */
    bool multi_queue;   /* it is one queue of a multi_queue TAP */
    uint64_t opens;     /* how often this process attached it by name (not migrated) */
    uint64_t adoptions; /* how many fds it adopted from a migration source (not migrated) */
    char error[256];    /* why there is none, when that is an error ("" otherwise); the device sets it */
} NetTap;

/*
 * backend-transfer off: how long a device that starts without a TAP keeps trying to attach one that is busy, and
 * how often. The source lets go of it right after the destination acknowledged, which is well under a
 * millisecond before the destination starts on a local machine; the bound only keeps a TAP held by some other
 * program from being polled forever.
 */
#define NET_TAP_RETRY_MS 5000
#define NET_TAP_RETRY_INTERVAL_MS 2
/* CLOCK_MONOTONIC in milliseconds, for those deadlines. */
int64_t net_now_ms(void);

void net_tap_init(NetTap *t);
/* Attach the TAP @ifname for plain Ethernet frames (IFF_TAP | IFF_NO_PI; created if missing, as for QEMU; as one
 * more queue if it was made multi_queue). False with *errp set and *busy telling whether another process holds
 * it (then retrying makes sense). */
bool net_tap_open(NetTap *t, const char *ifname, bool *busy, FerryError **errp);
/* backend-transfer's set_fd: take @fd if it is what net_tap_open(@ifname) would have given (an attached TAP of
 * plain Ethernet frames, no packet information, no vnet header, named @ifname), closing the one the device had
 * (a second incoming migration, after a failed one, brings the fd again). On false @fd stays the caller's. */
bool net_tap_adopt(NetTap *t, int fd, const char *ifname, FerryError **errp);
/* backend-transfer's release, and teardown: close the TAP, if any. */
void net_tap_close(NetTap *t);
/* query-netdev's members for the TAP: attached, fd, multi-queue, opens, adopted, and error if there is one. */
void net_tap_query(const NetTap *t, json_t *o);

/*
 * A device's TAP as the migration engine sees it: the backend of kind NET_TAP_BACKEND_KIND (id: the netdev's)
 * whose FerryBackendOps (include/ferry/backend.h) are net_tap_backend_ops. get_fd gives the TAP's fd (-1 for
 * none); set_fd adopts the source's fd with net_tap_adopt, refused while the device runs (it would be reading its
 * own TAP); release closes the TAP once the destination has it (a device resumed anyway attaches it by name
 * again). Each takes the device's lock. The device fills one in with pointers to its own fields and keeps it as
 * long as the engine may call it (until ferry_host_free).
 */
typedef struct NetTapBackend {
    pthread_mutex_t *lock;  /* the device's lock, which guards *tap and *running */
    NetTap *tap;
    const bool *running;    /* the device runs (reads and writes frames) */
    const NetConfig *cfg;   /* the netdev's id and ifname */
} NetTapBackend;

extern const FerryBackendOps net_tap_backend_ops;

/* Register @b with @m (opaque: @b). */
bool net_tap_backend_register(NetTapBackend *b, FerryMigration *m, FerryError **errp);
/*
 * Start-up: /dev/net/tun must exist; a migration source (!@incoming) attaches its TAP by name now, so that a bad
 * name or a busy TAP is an error at once, while a destination waits for the source's fd or attaches by name when
 * it first runs. Errors name the netdev.
 */
bool net_tap_backend_init(NetTapBackend *b, bool incoming, FerryError **errp);

#endif
