/*
 * ferry-vm's NIC: a virtio-net device on the PCI bus (pci.c) in virtio's legacy interface (virtio 0.9.5: an I/O
 * BAR of registers, virtqueues given by page frame number with 4 KiB ring alignment), the interface Linux's
 * virtio_pci driver takes when a device offers no modern capabilities, on a TAP backend (-netdev tap). The TAP
 * is attached by name, or adopted from a migration source with backend-transfer exactly as ferry-workload's
 * device does (hosts/common/netdev.c has the TAP calls and the "virtio-net-tap" backend both devices register).
 *
 * Two virtqueues of 256 entries: receive (0) and transmit (1). Features offered: MAC and STATUS (link always up);
 * no checksum or segmentation offload, no mergeable buffers, no indirect descriptors, no event index, no control
 * queue, so every frame is a plain Ethernet frame behind a zero 10-byte virtio_net_hdr. Transmit runs in the
 * vCPU thread that wrote the queue-notify register: the frames go to the TAP before the guest's OUT returns.
 * Receive runs in the device's thread, which reads a frame from the TAP only when the guest has posted a buffer
 * for it; so no frame is ever held by the device itself: it is in the TAP's queue (which moves with the fd) or
 * in guest memory. A frame larger than the buffer is dropped and counted.
 *
 * Guest memory written from here (received frames, the used rings) is invisible to KVM's dirty log, so each write
 * is marked with vm_mark_dirty. The thread parks on stop (vm.c stops it after the vCPUs), so that a stopped
 * machine's memory and device state stay put while the engine saves them. The device's registers and its
 * queues' positions are the "virtio-net" section; the rings themselves are guest memory. The section carries the
 * MAC: a load refuses another device's unless the device has restore-mac=keep (snapshot clones, each with its own
 * mac=), in which case the device keeps its own and the guest reads that one in the configuration space from then
 * on. Nothing tells the guest (no configuration-change interrupt, no VIRTIO_NET_S_ANNOUNCE: both need what this
 * device does not offer), so a driver that read the MAC at probe goes on using the old one (docs/vm.md).
 *
 * Not modelled: multiqueue, the control virtqueue (no promiscuous or VLAN filtering, no MAC changes from the
 * guest; the guest gets every frame the TAP has), MSI-X, the modern (virtio 1.0) interface, link-down.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>

#include "vm.h"

/* Legacy register offsets (virtio 0.9.5, "PCI Discovery"); without MSI-X the device's configuration follows. */
#define REG_HOST_FEATURES 0
#define REG_GUEST_FEATURES 4
#define REG_QUEUE_PFN 8
#define REG_QUEUE_NUM 12
#define REG_QUEUE_SEL 14
#define REG_QUEUE_NOTIFY 16
#define REG_STATUS 18
#define REG_ISR 19
#define REG_CONFIG 20
#define CONFIG_SIZE 8 /* mac[6], status (u16) */
#define IO_SIZE 32u   /* REG_CONFIG + CONFIG_SIZE, rounded up to a power of two */

#define VIRTIO_NET_F_MAC 5
#define VIRTIO_NET_F_STATUS 16
#define HOST_FEATURES ((1u << VIRTIO_NET_F_MAC) | (1u << VIRTIO_NET_F_STATUS))
#define VIRTIO_NET_S_LINK_UP 1u
#define STATUS_DRIVER_OK 4u
#define ISR_QUEUE 1u

#define VRING_DESC_F_NEXT 1u
#define VRING_DESC_F_WRITE 2u
#define VRING_DESC_F_INDIRECT 4u
#define VRING_AVAIL_F_NO_INTERRUPT 1u
#define VRING_ALIGN 4096u
#define QUEUE_SIZE 256u
#define RXQ 0
#define TXQ 1
#define NQUEUES 2
#define NET_HDR_LEN 10u /* struct virtio_net_hdr without mergeable buffers */
/* One frame: a TAP hands over at most its MTU plus the Ethernet header; 64 KiB covers any MTU. */
#define FRAME_MAX 65550u

/* The PCI identity of a transitional virtio-net device (virtio 1.0, 4.1.2.1): legacy device id 0x1000,
 * revision 0, subsystem id 1 (network card). */
static const PciDevInfo pci_info = {
    .name = "virtio-net-pci", .vendor = 0x1af4, .device = 0x1000, .subsystem_vendor = 0x1af4, .subsystem = 1,
    .revision = 0, .class_code = 0x020000, .io_size = IO_SIZE,
};

typedef struct VirtQueue {
    uint32_t pfn;          /* the guest's QUEUE_PFN: the ring's page, 0 while not set up */
    uint16_t last_avail;   /* free-running index of the next available entry the device takes */
    uint16_t used_idx;     /* free-running index the device last published in the used ring */
    uint64_t desc, avail, used; /* guest-physical addresses derived from pfn */
} VirtQueue;

struct VirtioNet {
    Vm *vm;
    PciDev *pci;
    NetConfig cfg;
    unsigned index;
    FerryMigration *m;

    pthread_mutex_t lock;  /* everything below */
    pthread_cond_t cond;
    pthread_t thread;
    bool thread_started, run, quit, parked;
    int wake_fd;           /* eventfd: the guest posted receive buffers, or stop/quit */

    NetTap tap;            /* the TAP (hosts/common/netdev.h) */
    NetTapBackend backend; /* the TAP as the engine sees it (hosts/common/netdev.h) */
    bool attach_pending;
    int64_t attach_deadline_ms;

    /* Registers and queues: the migrated state. */
    uint32_t guest_features;
    uint16_t queue_sel;
    uint8_t status, isr;
    VirtQueue vq[NQUEUES];
    bool broken;           /* the guest gave a ring the device cannot use: it stops touching the queues... */
    char broken_why[192];  /* ... for this reason, until it resets the device */

    uint8_t *rx_frame, *tx_frame; /* FRAME_MAX + NET_HDR_LEN each */
    uint64_t rx_frames, rx_bytes, tx_frames, tx_bytes, dropped, tx_errors;
};

static void wake(VirtioNet *n)
{
    uint64_t one = 1;
    ssize_t r = write(n->wake_fd, &one, sizeof(one));

    (void)r; /* an eventfd counter that is already set is just as good */
}

/* ---- Virtqueues ---- */

/* The legacy layout: descriptors, then the available ring, then (aligned) the used ring. */
static uint64_t ring_bytes(void)
{
    uint64_t avail_end = 16u * QUEUE_SIZE + 6u + 2u * QUEUE_SIZE;

    return (avail_end + VRING_ALIGN - 1) / VRING_ALIGN * VRING_ALIGN + 6u + 8u * QUEUE_SIZE;
}

/* Derive the addresses from vq->pfn; false if the rings are not all guest RAM. */
static bool queue_map(VirtioNet *n, VirtQueue *vq)
{
    uint64_t base = (uint64_t)vq->pfn * VRING_ALIGN;

    if (!vm_gpa_to_host(n->vm, base, ring_bytes())) {
        return false;
    }
    vq->desc = base;
    vq->avail = base + 16u * QUEUE_SIZE;
    vq->used = base + (16u * QUEUE_SIZE + 6u + 2u * QUEUE_SIZE + VRING_ALIGN - 1) / VRING_ALIGN * VRING_ALIGN;
    return true;
}

static bool queue_ready(const VirtioNet *n, const VirtQueue *vq)
{
    return vq->pfn && (n->status & STATUS_DRIVER_OK) && !n->broken;
}

/* The rings are checked to be RAM when the queue is set up: these pointers are always valid. */
static uint8_t *ring_ptr(VirtioNet *n, uint64_t gpa, uint64_t len)
{
    return vm_gpa_to_host(n->vm, gpa, len);
}

static uint16_t avail_idx(VirtioNet *n, const VirtQueue *vq)
{
    /* Acquire: the ring entries and descriptors the guest wrote before it moved idx are visible after. */
    return __atomic_load_n((uint16_t *)ring_ptr(n, vq->avail + 2, 2), __ATOMIC_ACQUIRE);
}

static void set_broken(VirtioNet *n, const char *why)
{
    if (!n->broken) {
        snprintf(n->broken_why, sizeof(n->broken_why), "virtqueues stopped: %s", why);
        fprintf(stderr, "ferry-vm: netdev %s: %s\n", n->cfg.id, n->broken_why);
    }
    n->broken = true;
}

/* One descriptor of a chain, checked: a buffer in RAM, no indirect table (not offered). */
typedef struct Desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
} Desc;

static bool read_desc(VirtioNet *n, const VirtQueue *vq, uint16_t i, Desc *d)
{
    const uint8_t *p = ring_ptr(n, vq->desc + 16u * i, 16);

    d->addr = (uint64_t)vm_rd32(p) | (uint64_t)vm_rd32(p + 4) << 32;
    d->len = vm_rd32(p + 8);
    d->flags = (uint16_t)vm_rd16(p + 12);
    d->next = (uint16_t)vm_rd16(p + 14);
    if (d->flags & VRING_DESC_F_INDIRECT) {
        set_broken(n, "an indirect descriptor (the feature was not offered)");
        return false;
    }
    if (d->len && !vm_gpa_to_host(n->vm, d->addr, d->len)) {
        set_broken(n, "a descriptor's buffer is not guest RAM");
        return false;
    }
    if ((d->flags & VRING_DESC_F_NEXT) && d->next >= QUEUE_SIZE) {
        set_broken(n, "a descriptor's next index is out of the ring");
        return false;
    }
    return true;
}

/* Put chain @head in the used ring with @len bytes written, and interrupt the guest unless it asked not to be. */
static void push_used(VirtioNet *n, VirtQueue *vq, uint16_t head, uint32_t len)
{
    uint64_t elem_gpa = vq->used + 4 + 8u * (vq->used_idx % QUEUE_SIZE);
    uint8_t *elem = ring_ptr(n, elem_gpa, 8);

    vm_wr32(elem, head);
    vm_wr32(elem + 4, len);
    vq->used_idx++;
    /* Release: the element (and the buffer's bytes) are visible before the index that hands them over. */
    __atomic_store_n((uint16_t *)ring_ptr(n, vq->used + 2, 2), vq->used_idx, __ATOMIC_RELEASE);
    vm_mark_dirty(n->vm, elem_gpa, 8);
    vm_mark_dirty(n->vm, vq->used + 2, 2);
    /* Full barrier: the guest sets NO_INTERRUPT and then re-reads used idx; reading the flag before the index
     * is visible could miss an interrupt it needs. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t flags = __atomic_load_n((uint16_t *)ring_ptr(n, vq->avail, 2), __ATOMIC_RELAXED);
    if (!(flags & VRING_AVAIL_F_NO_INTERRUPT)) {
        n->isr |= ISR_QUEUE;
        pci_set_irq(n->pci, true);
    }
}

/* Transmit everything the guest has queued. Caller holds the lock. */
static void tx_flush(VirtioNet *n)
{
    VirtQueue *vq = &n->vq[TXQ];

    while (queue_ready(n, vq) && vq->last_avail != avail_idx(n, vq)) {
        uint16_t head = (uint16_t)vm_rd16(ring_ptr(n, vq->avail + 4 + 2u * (vq->last_avail % QUEUE_SIZE), 2));
        uint16_t i = head;
        size_t len = 0;
        bool more = true, too_long = false;
        Desc d;

        if (head >= QUEUE_SIZE) {
            set_broken(n, "an available transmit entry is out of the ring");
            return;
        }
        for (unsigned k = 0; more; k++) {
            if (k == QUEUE_SIZE) {
                set_broken(n, "a transmit descriptor chain loops");
                return;
            }
            if (!read_desc(n, vq, i, &d)) {
                return;
            }
            if (len + d.len > FRAME_MAX + NET_HDR_LEN) {
                too_long = true;
            } else if (d.len) {
                memcpy(n->tx_frame + len, vm_gpa_to_host(n->vm, d.addr, d.len), d.len);
                len += d.len;
            }
            more = d.flags & VRING_DESC_F_NEXT;
            i = d.next;
        }
        vq->last_avail++;
        if (too_long || len < NET_HDR_LEN + 14) {
            n->dropped++;
        } else if (n->tap.fd < 0) {
            n->tx_errors++; /* no TAP (yet): the frame is lost as on an unplugged cable */
        } else {
            ssize_t w = write(n->tap.fd, n->tx_frame + NET_HDR_LEN, len - NET_HDR_LEN);

            if (w == (ssize_t)(len - NET_HDR_LEN)) {
                n->tx_frames++;
                n->tx_bytes += len - NET_HDR_LEN;
            } else {
                n->tx_errors++;
            }
        }
        push_used(n, vq, head, 0);
    }
}

/* Whether the guest has a receive buffer posted. Caller holds the lock. */
static bool rx_has_buffer(VirtioNet *n)
{
    VirtQueue *vq = &n->vq[RXQ];

    return queue_ready(n, vq) && vq->last_avail != avail_idx(n, vq);
}

/* Put the frame in rx_frame (after its zero header; @len bytes of frame) into the next receive buffer. Caller
 * holds the lock and has seen rx_has_buffer. */
static void rx_deliver(VirtioNet *n, size_t len)
{
    VirtQueue *vq = &n->vq[RXQ];
    uint16_t head = (uint16_t)vm_rd16(ring_ptr(n, vq->avail + 4 + 2u * (vq->last_avail % QUEUE_SIZE), 2));
    size_t total = NET_HDR_LEN + len, done = 0;
    uint16_t i = head;
    bool more = true;
    Desc d;

    if (head >= QUEUE_SIZE) {
        set_broken(n, "an available receive entry is out of the ring");
        return;
    }
    memset(n->rx_frame, 0, NET_HDR_LEN);
    for (unsigned k = 0; more && done < total; k++) {
        if (k == QUEUE_SIZE) {
            set_broken(n, "a receive descriptor chain loops");
            return;
        }
        if (!read_desc(n, vq, i, &d)) {
            return;
        }
        if (!(d.flags & VRING_DESC_F_WRITE)) {
            set_broken(n, "a receive descriptor is not device-writable");
            return;
        }
        size_t c = d.len < total - done ? d.len : total - done;
        if (c) { /* an empty descriptor's address is not checked (read_desc), so it is not used either */
            memcpy(vm_gpa_to_host(n->vm, d.addr, d.len), n->rx_frame + done, c);
            vm_mark_dirty(n->vm, d.addr, c);
            done += c;
        }
        more = d.flags & VRING_DESC_F_NEXT;
        i = d.next;
    }
    vq->last_avail++;
    if (done < total) {
        /* The buffer is given back empty: a frame cut short would be delivered as a different frame. */
        n->dropped++;
        push_used(n, vq, head, 0);
        return;
    }
    n->rx_frames++;
    n->rx_bytes += len;
    push_used(n, vq, head, (uint32_t)total);
}

/* ---- Registers ---- */

static void device_reset(VirtioNet *n)
{
    n->guest_features = 0;
    n->queue_sel = 0;
    n->status = 0;
    n->isr = 0;
    n->broken = false;
    memset(n->vq, 0, sizeof(n->vq));
    pci_set_irq(n->pci, false);
}

static void io(void *opaque, unsigned off, unsigned size, bool is_write, uint8_t *data)
{
    VirtioNet *n = opaque;
    uint8_t regs[IO_SIZE];
    uint32_t v = size == 4 ? vm_rd32(data) : size == 2 ? vm_rd16(data) : data[0];
    bool kick_rx = false;

    pthread_mutex_lock(&n->lock);
    if (!is_write) {
        memset(regs, 0, sizeof(regs));
        vm_wr32(regs + REG_HOST_FEATURES, HOST_FEATURES);
        vm_wr32(regs + REG_GUEST_FEATURES, n->guest_features);
        vm_wr32(regs + REG_QUEUE_PFN, n->queue_sel < NQUEUES ? n->vq[n->queue_sel].pfn : 0);
        vm_wr16(regs + REG_QUEUE_NUM, n->queue_sel < NQUEUES ? QUEUE_SIZE : 0);
        vm_wr16(regs + REG_QUEUE_SEL, n->queue_sel);
        regs[REG_STATUS] = n->status;
        regs[REG_ISR] = n->isr;
        memcpy(regs + REG_CONFIG, n->cfg.ident.mac, NET_ETH_ALEN);
        vm_wr16(regs + REG_CONFIG + NET_ETH_ALEN, VIRTIO_NET_S_LINK_UP);
        memcpy(data, regs + off, size);
        /* Reading the ISR acknowledges it and lowers the interrupt line. */
        if (off <= REG_ISR && off + size > REG_ISR) {
            n->isr = 0;
            pci_set_irq(n->pci, false);
        }
        pthread_mutex_unlock(&n->lock);
        return;
    }
    switch (off) {
    case REG_GUEST_FEATURES:
        if (size == 4) {
            n->guest_features = v & HOST_FEATURES;
        }
        break;
    case REG_QUEUE_PFN:
        if (size != 4 || n->queue_sel >= NQUEUES) {
            break;
        }
        VirtQueue *vq = &n->vq[n->queue_sel];
        memset(vq, 0, sizeof(*vq));
        vq->pfn = v;
        if (v && !queue_map(n, vq)) {
            vq->pfn = 0;
            set_broken(n, "a virtqueue's rings are not in guest RAM");
        }
        kick_rx = n->queue_sel == RXQ;
        break;
    case REG_QUEUE_SEL:
        if (size == 2) {
            n->queue_sel = (uint16_t)v;
        }
        break;
    case REG_QUEUE_NOTIFY:
        if (size == 2 && v == TXQ) {
            tx_flush(n);
        } else if (size == 2 && v == RXQ) {
            kick_rx = true;
        }
        break;
    case REG_STATUS:
        if (size == 1) {
            if (v == 0) {
                device_reset(n);
            } else {
                n->status = (uint8_t)v;
                kick_rx = true;
            }
        }
        break;
    default:
        break; /* read-only registers; the MAC is not writable here (no VIRTIO_NET_F_CTRL_MAC_ADDR either) */
    }
    pthread_mutex_unlock(&n->lock);
    if (kick_rx) {
        wake(n);
    }
}

/* ---- The receive thread ---- */

static bool attach_locked(VirtioNet *n, bool *busy, FerryError **errp)
{
    if (!net_tap_open(&n->tap, n->cfg.ifname, busy, errp)) {
        return false;
    }
    n->attach_pending = false;
    return true;
}

static void drain_wake(VirtioNet *n)
{
    uint64_t v;
    ssize_t r = read(n->wake_fd, &v, sizeof(v));

    (void)r;
}

/* Wait with the lock dropped for the TAP to have a frame (if @tap) or a wake-up, at most @ms (-1: no limit). */
static void wait_io(VirtioNet *n, bool tap, int ms)
{
    struct pollfd p[2] = { { .fd = n->wake_fd, .events = POLLIN }, { .fd = n->tap.fd, .events = POLLIN } };

    pthread_mutex_unlock(&n->lock);
    poll(p, tap ? 2 : 1, ms);
    drain_wake(n);
    pthread_mutex_lock(&n->lock);
}

static void *rx_main(void *arg)
{
    VirtioNet *n = arg;

    pthread_mutex_lock(&n->lock);
    while (!n->quit) {
        if (!n->run) {
            n->parked = true;
            pthread_cond_broadcast(&n->cond);
            while (!n->run && !n->quit) {
                pthread_cond_wait(&n->cond, &n->lock);
            }
            n->parked = false;
            continue;
        }
        if (n->tap.fd < 0) {
            FerryError *err = NULL;
            bool busy = false;

            if (!n->attach_pending) {
                wait_io(n, false, -1);
            } else if (!attach_locked(n, &busy, &err)) {
                if (busy && net_now_ms() < n->attach_deadline_ms) {
                    wait_io(n, false, NET_TAP_RETRY_INTERVAL_MS);
                } else {
                    n->attach_pending = false;
                    snprintf(n->tap.error, sizeof(n->tap.error), "%s", ferry_error_msg(err));
                    fprintf(stderr, "ferry-vm: netdev %s: %s\n", n->cfg.id, n->tap.error);
                }
                ferry_error_free(err);
            }
            continue;
        }
        if (!rx_has_buffer(n)) {
            wait_io(n, false, -1);
            continue;
        }
        wait_io(n, true, -1);
        if (!n->run || n->tap.fd < 0 || !rx_has_buffer(n)) {
            continue;
        }
        /* Read only now, with a buffer for the frame: whatever is not read stays in the TAP's queue. The read
         * is non-blocking and under the lock, so stop waits for a frame read to be delivered. */
        ssize_t r = read(n->tap.fd, n->rx_frame + NET_HDR_LEN, FRAME_MAX);
        if (r > 0) {
            rx_deliver(n, (size_t)r);
        } else if (r < 0 && errno != EAGAIN && errno != EINTR) {
            snprintf(n->tap.error, sizeof(n->tap.error), "reading the TAP: %s; the device dropped it",
                     strerror(errno));
            fprintf(stderr, "ferry-vm: netdev %s: %s\n", n->cfg.id, n->tap.error);
            net_tap_close(&n->tap);
        }
    }
    n->parked = true;
    pthread_cond_broadcast(&n->cond);
    pthread_mutex_unlock(&n->lock);
    return NULL;
}

void virtio_net_stop(VirtioNet *n)
{
    pthread_mutex_lock(&n->lock);
    n->run = false;
    wake(n);
    while (n->thread_started && !n->parked) {
        pthread_cond_wait(&n->cond, &n->lock);
    }
    pthread_mutex_unlock(&n->lock);
}

void virtio_net_start(VirtioNet *n)
{
    pthread_mutex_lock(&n->lock);
    if (n->tap.fd < 0) {
        /* A destination that got no fd from the source: attach by name now, before the vCPUs run (vm.c starts
         * the NICs first), so that the guest's first frames find the TAP; if the source still holds it, the
         * thread retries until it lets go. */
        FerryError *err = NULL;
        bool busy = false;

        if (!attach_locked(n, &busy, &err)) {
            n->attach_pending = true;
            n->attach_deadline_ms = net_now_ms() + (busy ? NET_TAP_RETRY_MS : 0);
        }
        ferry_error_free(err);
    }
    n->run = true;
    pthread_cond_broadcast(&n->cond);
    pthread_mutex_unlock(&n->lock);
    wake(n);
}

bool virtio_net_start_thread(VirtioNet *n, FerryError **errp)
{
    pthread_mutex_lock(&n->lock);
    n->parked = false;
    int err = pthread_create(&n->thread, NULL, rx_main, n);
    n->thread_started = err == 0;
    pthread_mutex_unlock(&n->lock);
    if (err) {
        ferry_error_setg_errno(errp, err, "netdev %s: creating its thread", n->cfg.id);
        return false;
    }
    virtio_net_stop(n); /* parked until the machine runs */
    return true;
}

bool virtio_net_attach_fd(VirtioNet *n, int fd, FerryError **errp)
{
    bool ok = false;

    pthread_mutex_lock(&n->lock);
    if (n->run || n->tap.fd >= 0) {
        ferry_error_setg(errp, "netdev %s is running or has its backend already", n->cfg.id);
    } else {
        n->tap.fd = fd;
        ok = true;
    }
    pthread_mutex_unlock(&n->lock);
    return ok;
}

/* ---- State ---- */

static bool visit_queue(FerryVisitor *v, VirtQueue *vq, FerryError **errp)
{
    uint32_t size = QUEUE_SIZE;

    return ferry_visit_start_struct(v, "queue", errp) && ferry_visit_u32(v, "pfn", &vq->pfn, errp) &&
           ferry_visit_u32(v, "size", &size, errp) && ferry_visit_u16(v, "last-avail", &vq->last_avail, errp) &&
           ferry_visit_u16(v, "used-idx", &vq->used_idx, errp) && ferry_visit_end_struct(v, errp) &&
           (size == QUEUE_SIZE || (ferry_error_setg(errp, "incoming virtio-net queue has %" PRIu32 " entries, "
                                                    "this device has %u", size, QUEUE_SIZE), false));
}

/* The device's migrated state, as saved or loaded: a copy taken under the lock, so that the visitor runs without
 * it. */
typedef struct NetSnap {
    uint8_t mac[NET_ETH_ALEN];
    bool mac_kept;         /* a load with restore-mac=keep found another MAC in mac, which this device replaces */
    VirtQueue vq[NQUEUES];
    uint32_t features;
    uint16_t sel;
    uint8_t status, isr;
    uint64_t c[6]; /* rx-frames, rx-bytes, tx-frames, tx-bytes, dropped, tx-errors */
} NetSnap;

static void snapshot(VirtioNet *n, NetSnap *st)
{
    pthread_mutex_lock(&n->lock);
    memcpy(st->mac, n->cfg.ident.mac, sizeof(st->mac));
    st->mac_kept = false;
    memcpy(st->vq, n->vq, sizeof(st->vq));
    st->features = n->guest_features;
    st->sel = n->queue_sel;
    st->status = n->status;
    st->isr = n->isr;
    st->c[0] = n->rx_frames, st->c[1] = n->rx_bytes, st->c[2] = n->tx_frames, st->c[3] = n->tx_bytes,
    st->c[4] = n->dropped, st->c[5] = n->tx_errors;
    pthread_mutex_unlock(&n->lock);
}

/* Who the device is: its netdev and MAC, which a load checks against this device's (with restore-mac=keep another
 * MAC is taken and noted in st->mac_kept: the device keeps its own). */
static bool visit_identity(VirtioNet *n, FerryVisitor *v, bool load, NetSnap *st, FerryError **errp)
{
    char *netdev = strdup(n->cfg.id);
    bool ok = false;

    if (!netdev) {
        ferry_error_setg(errp, "out of memory");
        return false;
    }
    if (!ferry_visit_str(v, "netdev", &netdev, errp)) {
        goto out;
    }
    if (load && strcmp(netdev, n->cfg.id) != 0) {
        ferry_error_setg(errp, "incoming virtio-net state %u is for netdev '%s', this device uses netdev '%s'",
                         n->index, netdev, n->cfg.id);
        goto out;
    }
    if (!ferry_visit_bytes(v, "mac", st->mac, sizeof(st->mac), errp)) {
        goto out;
    }
    if (load && memcmp(st->mac, n->cfg.ident.mac, sizeof(st->mac)) != 0) {
        char a[18], b[18];

        if (n->cfg.restore_mac == NET_RESTORE_MAC_KEEP) {
            st->mac_kept = true; /* st->mac keeps the incoming one for the log line once the load is applied */
        } else {
            net_format_mac(st->mac, a);
            net_format_mac(n->cfg.ident.mac, b);
            ferry_error_setg(errp, "incoming virtio-net state for netdev %s has mac %s, this device has mac=%s "
                             "(restore-mac=keep would take the state and keep mac=%s)", n->cfg.id, a, b, b);
            goto out;
        }
    }
    ok = true;
out:
    free(netdev);
    return ok;
}

/* The registers and the queues, then the counters. */
static bool visit_device(FerryVisitor *v, NetSnap *st, FerryError **errp)
{
    uint32_t nq = NQUEUES;
    uint64_t *c = st->c;

    if (!ferry_visit_u32(v, "guest-features", &st->features, errp) ||
        !ferry_visit_u16(v, "queue-sel", &st->sel, errp) || !ferry_visit_u8(v, "status", &st->status, errp) ||
        !ferry_visit_u8(v, "isr", &st->isr, errp) || !ferry_visit_start_list(v, "queues", &nq, NQUEUES, errp)) {
        return false;
    }
    if (nq != NQUEUES) {
        ferry_error_setg(errp, "incoming virtio-net state has %" PRIu32 " queues, this device has %d", nq,
                         NQUEUES);
        return false;
    }
    for (unsigned i = 0; i < NQUEUES; i++) {
        if (!visit_queue(v, &st->vq[i], errp)) {
            return false;
        }
    }
    return ferry_visit_end_list(v, errp) && ferry_visit_u64(v, "rx-frames", &c[0], errp) &&
           ferry_visit_u64(v, "rx-bytes", &c[1], errp) && ferry_visit_u64(v, "tx-frames", &c[2], errp) &&
           ferry_visit_u64(v, "tx-bytes", &c[3], errp) && ferry_visit_u64(v, "dropped", &c[4], errp) &&
           ferry_visit_u64(v, "tx-errors", &c[5], errp);
}

/* A load: check what only the whole state can tell (features offered, rings inside RAM), then apply it. */
static bool apply(VirtioNet *n, NetSnap *st, FerryError **errp)
{
    if (st->features & ~HOST_FEATURES) {
        ferry_error_setg(errp, "incoming virtio-net state has guest features 0x%" PRIx32 ", this device "
                         "offers 0x%x", st->features, HOST_FEATURES);
        return false;
    }
    pthread_mutex_lock(&n->lock);
    n->broken = false;
    for (unsigned i = 0; i < NQUEUES; i++) {
        if (st->vq[i].pfn && !queue_map(n, &st->vq[i])) {
            pthread_mutex_unlock(&n->lock);
            ferry_error_setg(errp, "incoming virtio-net queue %u has its rings at 0x%" PRIx64 ", outside "
                             "guest RAM", i, (uint64_t)st->vq[i].pfn * VRING_ALIGN);
            return false;
        }
    }
    memcpy(n->vq, st->vq, sizeof(st->vq));
    n->guest_features = st->features;
    n->queue_sel = st->sel;
    n->status = st->status;
    n->isr = st->isr;
    n->rx_frames = st->c[0], n->rx_bytes = st->c[1], n->tx_frames = st->c[2], n->tx_bytes = st->c[3],
    n->dropped = st->c[4], n->tx_errors = st->c[5];
    /* The line's level is the device's to drive (KVM's IOAPIC state does not hold who asserts a pin). */
    pci_set_irq(n->pci, st->isr != 0);
    pthread_mutex_unlock(&n->lock);
    if (st->mac_kept) {
        /* Said only now that the load is applied. The configuration space reads cfg.ident.mac, so the guest
         * sees mac= at its next read; a driver that cached the MAC at probe does not read it again. */
        char a[18], b[18];

        net_format_mac(st->mac, a);
        net_format_mac(n->cfg.ident.mac, b);
        fprintf(stderr, "ferry-vm: netdev %s: the incoming state has mac %s; this device keeps its mac=%s "
                "(restore-mac=keep)\n", n->cfg.id, a, b);
    }
    return true;
}

/*
 * The section: who the device is (netdev and MAC, checked; restore-mac=keep takes another MAC), its registers,
 * each queue's ring page and positions, and the counters. Saved with the machine stopped (the vCPUs and the
 * receive thread parked), so no frame is half handled; loaded before the destination ever ran.
 */
bool virtio_net_section(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    VirtioNet *n = opaque;
    bool load = ferry_visitor_kind(v) == FERRY_VISITOR_INPUT;
    NetSnap st;

    if (load && version != 1) {
        ferry_error_setg(errp, "virtio-net state version %" PRIu32 " is not supported (this program reads "
                         "version 1)", version);
        return false;
    }
    snapshot(n, &st);
    if (!ferry_visit_start_struct(v, "virtio-net", errp) || !visit_identity(n, v, load, &st, errp) ||
        !visit_device(v, &st, errp) || !ferry_visit_end_struct(v, errp)) {
        return false;
    }
    return !load || apply(n, &st, errp);
}

/* ---- Life cycle ---- */

VirtioNet *virtio_net_new(Vm *vm, const NetConfig *cfg, unsigned index, FerryError **errp)
{
    VirtioNet *n = calloc(1, sizeof(*n));

    if (!n) {
        ferry_error_setg(errp, "out of memory");
        return NULL;
    }
    n->vm = vm;
    n->cfg = *cfg;
    n->index = index;
    net_tap_init(&n->tap);
    n->backend = (NetTapBackend){ .lock = &n->lock, .tap = &n->tap, .running = &n->run, .cfg = &n->cfg };
    n->parked = true;
    pthread_mutex_init(&n->lock, NULL);
    pthread_cond_init(&n->cond, NULL);
    n->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    n->rx_frame = malloc(FRAME_MAX + NET_HDR_LEN);
    n->tx_frame = malloc(FRAME_MAX + NET_HDR_LEN);
    if (n->wake_fd < 0 || !n->rx_frame || !n->tx_frame) {
        ferry_error_setg_errno(errp, n->wake_fd < 0 ? errno : ENOMEM, "creating netdev %s", cfg->id);
        virtio_net_free(n);
        return NULL;
    }
    n->pci = pci_add_device(vm->pci, &pci_info, io, n, errp);
    if (!n->pci) {
        virtio_net_free(n);
        return NULL;
    }
    return n;
}

bool virtio_net_register(VirtioNet *n, FerryMigration *m, FerryError **errp)
{
    n->m = m;
    if (!ferry_migration_register_section(m, "virtio-net", n->index, 1, virtio_net_section, n, errp) ||
        !net_tap_backend_register(&n->backend, m, errp)) {
        ferry_error_prepend(errp, "netdev %s: ", n->cfg.id);
        return false;
    }
    return true;
}

bool virtio_net_init_backend(VirtioNet *n, bool incoming, FerryError **errp)
{
    return net_tap_backend_init(&n->backend, incoming, errp);
}

void virtio_net_stop_thread(VirtioNet *n)
{
    pthread_mutex_lock(&n->lock);
    bool join = n->thread_started;
    n->quit = true;
    pthread_cond_broadcast(&n->cond);
    pthread_mutex_unlock(&n->lock);
    if (join) {
        wake(n);
        pthread_join(n->thread, NULL);
    }
    pthread_mutex_lock(&n->lock);
    n->thread_started = false;
    n->parked = true;
    pthread_mutex_unlock(&n->lock);
}

void virtio_net_free(VirtioNet *n)
{
    if (!n) {
        return;
    }
    virtio_net_stop_thread(n);
    net_tap_close(&n->tap);
    if (n->wake_fd >= 0) {
        close(n->wake_fd);
    }
    free(n->rx_frame);
    free(n->tx_frame);
    pthread_cond_destroy(&n->cond);
    pthread_mutex_destroy(&n->lock);
    free(n); /* the PCI device is the bus's */
}

json_t *virtio_net_query(VirtioNet *n)
{
    char mac[18];

    net_format_mac(n->cfg.ident.mac, mac);
    pthread_mutex_lock(&n->lock);
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:i, s:b, s:I, s:I, s:I, s:I, s:I, s:I}", "id",
                          n->cfg.id, "type", "tap", "ifname", n->cfg.ifname, "model", "virtio-net-pci", "mac", mac,
                          "slot", (int)pci_dev_slot(n->pci), "status", (int)n->status, "driver-ok",
                          (n->status & STATUS_DRIVER_OK) != 0, "rx-frames", (json_int_t)n->rx_frames, "rx-bytes",
                          (json_int_t)n->rx_bytes, "tx-frames", (json_int_t)n->tx_frames, "tx-bytes",
                          (json_int_t)n->tx_bytes, "dropped", (json_int_t)n->dropped, "tx-errors",
                          (json_int_t)n->tx_errors);
    if (o && n->cfg.device_id[0]) {
        json_object_set_new(o, "device", json_string(n->cfg.device_id));
    }
    if (o) {
        json_object_set_new(o, "restore-mac", json_string(net_restore_mac_name(n->cfg.restore_mac)));
    }
    if (o) {
        net_tap_query(&n->tap, o);
        if (n->broken) {
            json_object_set_new(o, "error", json_string(n->broken_why));
        }
    }
    pthread_mutex_unlock(&n->lock);
    return o;
}
