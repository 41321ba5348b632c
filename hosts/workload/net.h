/*
 * ferry-workload's network device, the program's own internal interface: a virtio-net NIC model (QEMU's
 * `-device virtio-net`) on a TAP backend (`-netdev tap`). Since the workload has no guest OS, the device itself
 * plays the guest's network stack for one IPv4 address: a thread reads Ethernet frames from the TAP and answers ARP
 * requests for that address and ICMP echo requests to it, so that `ping` from the host reaches the workload. Its
 * state (MAC, address, counters) migrates in a "virtio-net" section; its TAP moves with backend-transfer
 * (include/ferry/backend.h) or is opened again by name on the destination.
 *
 * This header is shared by main.c, net.c, netframe.c and tests/unit/workload only; it is not part of libferry.
 * The frame functions (netframe.c) do no I/O, so they can be tested without a TAP.
 */
#ifndef FERRY_WORKLOAD_NET_H
#define FERRY_WORKLOAD_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/ferry.h"
#include "netdev.h" /* the options and the TAP, shared with ferry-vm (hosts/common) */

#define NET_ETH_HLEN 14
#define NET_ARP_LEN 28    /* ARP for Ethernet/IPv4 */
/* A TAP hands over one frame per read: at most its MTU plus the Ethernet header. 64 KiB covers any MTU. */
#define NET_FRAME_MAX 65550

/* ---- Frames (netframe.c) ---- */

typedef enum NetFrameKind {
    NET_FRAME_DROP,       /* not answered: not for us, or malformed (*why says which) */
    NET_FRAME_ARP_REPLY,  /* an ARP request for our address: *reply is the ARP reply */
    NET_FRAME_ECHO_REPLY, /* an ICMP echo request to our address: *reply is the echo reply */
} NetFrameKind;

/*
 * Look at one frame as read from the TAP (IFF_NO_PI: it starts with the Ethernet header) and build the answer
 * into @reply (@reply_cap bytes; NET_FRAME_MAX is always enough). Returns the kind, *reply_len the length of the
 * reply (0 for a drop), and *why a static string naming the reason of a drop (NULL otherwise). Never reads
 * beyond @len: a short, truncated or lying frame is dropped, not trusted.
 */
NetFrameKind net_frame_answer(const NetIdentity *id, const uint8_t *frame, size_t len, uint8_t *reply,
                              size_t reply_cap, size_t *reply_len, const char **why);
/* The Internet checksum (RFC 1071) of @len bytes: the one's complement of their one's complement sum. A buffer
 * that includes a correct checksum sums to 0. */
uint16_t net_inet_checksum(const void *data, size_t len);

/* ---- The device (net.c) ---- */

typedef struct NetDev NetDev;

/* A device for @m, not yet registered, attached to no TAP, its thread not started. @index is its section
 * instance id. */
NetDev *net_dev_new(const NetConfig *cfg, unsigned index, FerryMigration *m, FerryError **errp);
/* Register the "virtio-net" section and the "virtio-net-tap" backend (id = the netdev id) with the engine, which
 * holds on to the device from then on: free the engine (ferry_host_free) before the device. */
bool net_dev_register(NetDev *nd, FerryError **errp);
/*
 * Start-up (net_tap_backend_init, hosts/common/netdev.h): a migration source (no -incoming) attaches its TAP by
 * name now, so that a bad name or a busy TAP is an error at once. A destination attaches nothing: with
 * backend-transfer the source's fd will come, and without it the source still holds the TAP until it has handed
 * over, so the device opens it by name when it first runs (net_dev_start) if no fd came by then. Either way
 * /dev/net/tun must exist.
 */
bool net_dev_init_backend(NetDev *nd, bool incoming, FerryError **errp);
/* The device thread, parked until net_dev_start. */
bool net_dev_start_thread(NetDev *nd, FerryError **errp);
/* FerryHostOps: stop returns once the thread is parked and will not touch the TAP or the state; start resumes
 * it (attaching the TAP by name first if the device has none). */
void net_dev_stop(NetDev *nd);
void net_dev_start(NetDev *nd);
/* Stop and join the thread for good (idempotent); the TAP stays attached until net_dev_free. */
void net_dev_stop_thread(NetDev *nd);
/* Joins the thread and closes the TAP; NULL is a no-op. Call after ferry_host_free (the engine may still call
 * the backend's release until its migration threads are joined). */
void net_dev_free(NetDev *nd);
/* query-netdev's entry for this device (new reference). */
json_t *net_dev_query(NetDev *nd);

#endif
