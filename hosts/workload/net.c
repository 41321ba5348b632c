/*
 * ferry-workload's network device: the TAP backend (attached by name through /dev/net/tun, or adopted from a
 * migration source with backend-transfer; the options, the TAP calls and the "virtio-net-tap" backend it
 * registers with libferry are hosts/common/netdev.c's), the device thread that answers ARP and ICMP echo on it
 * (the frames themselves are netframe.c's) and its "virtio-net" state section. It uses only the public API.
 *
 * Who touches the TAP: only the device thread while the device runs; only the engine's callbacks (get_fd, set_fd,
 * release: hosts/common's NetTapBackend, under nd->lock) and start-up code while it is parked. net_dev_stop does
 * not return before the thread is parked, and the thread parks only between two frames, so a stopped device has
 * no frame half handled and the engine sees the TAP and the counters at rest. The fd changes only with nd->lock
 * held: by the thread itself (attaching a TAP, dropping a failed one) or by others while it is parked.
 *
 * The TAP across a migration (docs/local-migration.md has the reasons):
 *   - backend-transfer on: the source passes its fd during switchover; the destination verifies it (TUNGETIFF:
 *     a TAP, plain Ethernet frames, the same ifname) and reads from that very open file: frames that arrived
 *     while the device was stopped wait in the TAP's queue in the kernel and are answered by the destination.
 *   - backend-transfer off: the destination attaches the TAP by name when it first runs. A TAP without multi_queue
 *     takes one process at a time, so the source lets go of it (release) as soon as the destination has
 *     acknowledged, and the destination retries while the TAP is still busy (EBUSY). A multi_queue TAP is attached
 *     as one more queue, which needs no wait. The TAP must outlive the source's fd: a persistent one (ip tuntap
 *     add), as with QEMU.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>

#include "net.h"

struct NetDev {
    NetConfig cfg;
    unsigned index;
    FerryMigration *m;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
    bool thread_started;
    int wake_fd;                /* eventfd: stop and quit interrupt the thread's poll() */
    bool run, quit;
    bool parked;                /* the thread waits and touches neither the TAP nor the state */

    NetTap tap;                 /* the TAP (hosts/common/netdev.h), its counters and why there is none */
    NetTapBackend backend;      /* the TAP as the engine sees it (hosts/common/netdev.h) */
    bool attach_pending;        /* started without a TAP: attach one by name... */
    int64_t attach_deadline_ms; /* ... retrying until then while it is busy */

    uint8_t *frame, *reply;     /* NET_FRAME_MAX bytes each, the thread's */

    /* Device state: written by the thread while it runs, read by anyone (query-netdev), replaced by a load only
     * while it is parked. */
    _Atomic uint64_t rx_frames, rx_bytes, tx_frames, tx_bytes, arp_replies, echo_replies, dropped, tx_errors;
};

static void set_error(NetDev *nd, const FerryError *err)
{
    snprintf(nd->tap.error, sizeof(nd->tap.error), "%s", ferry_error_msg(err));
    fprintf(stderr, "ferry-workload: netdev %s: %s\n", nd->cfg.id, nd->tap.error);
}

/* Attach by name, with nd->lock held and the device not handling frames. */
static bool attach_locked(NetDev *nd, bool *busy, FerryError **errp)
{
    if (!net_tap_open(&nd->tap, nd->cfg.ifname, busy, errp)) {
        return false;
    }
    nd->attach_pending = false;
    return true;
}

/* ---- The device thread ---- */

static void count_tx(NetDev *nd, ssize_t n, size_t len)
{
    if (n == (ssize_t)len) {
        atomic_fetch_add_explicit(&nd->tx_frames, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&nd->tx_bytes, len, memory_order_relaxed);
    } else {
        atomic_fetch_add_explicit(&nd->tx_errors, 1, memory_order_relaxed);
    }
}

/*
 * Wait for one frame or a wake-up, and handle the frame. Returns false if the TAP failed for good (its
 * interface was deleted, ...): the caller drops it. The counters of a frame are updated before the thread can
 * park again, so a stopped device's state covers every frame it read.
 */
static bool serve_one(NetDev *nd, int fd)
{
    struct pollfd p[2] = { { .fd = fd, .events = POLLIN }, { .fd = nd->wake_fd, .events = POLLIN } };

    if (poll(p, 2, -1) < 0) {
        return true; /* EINTR: the caller looks at the state again */
    }
    if (p[1].revents & POLLIN) {
        uint64_t v;

        /* The wake-up is for the caller to see (stop, quit); draining it here keeps a stale one from ending
         * the next wait early. It can only fail with EAGAIN, when another wake-up drained it already. */
        (void)!read(nd->wake_fd, &v, sizeof(v));
        return true;
    }
    if (!(p[0].revents & (POLLIN | POLLERR | POLLHUP))) {
        return true;
    }
    ssize_t n = read(fd, nd->frame, NET_FRAME_MAX);
    if (n < 0) {
        int err = errno;

        if (err == EAGAIN || err == EINTR) {
            return true;
        }
        FerryError *e = NULL;
        ferry_error_setg_errno(&e, err, "reading from TAP '%s'", nd->cfg.ifname);
        pthread_mutex_lock(&nd->lock);
        set_error(nd, e);
        pthread_mutex_unlock(&nd->lock);
        ferry_error_free(e);
        return false;
    }
    atomic_fetch_add_explicit(&nd->rx_frames, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&nd->rx_bytes, (uint64_t)n, memory_order_relaxed);

    size_t reply_len;
    const char *why;
    NetFrameKind kind = net_frame_answer(&nd->cfg.ident, nd->frame, (size_t)n, nd->reply, NET_FRAME_MAX,
                                         &reply_len, &why);
    switch (kind) {
    case NET_FRAME_ARP_REPLY:
        atomic_fetch_add_explicit(&nd->arp_replies, 1, memory_order_relaxed);
        count_tx(nd, write(fd, nd->reply, reply_len), reply_len);
        break;
    case NET_FRAME_ECHO_REPLY:
        atomic_fetch_add_explicit(&nd->echo_replies, 1, memory_order_relaxed);
        count_tx(nd, write(fd, nd->reply, reply_len), reply_len);
        break;
    case NET_FRAME_DROP:
        atomic_fetch_add_explicit(&nd->dropped, 1, memory_order_relaxed);
        break;
    }
    return true;
}

/* Caller holds nd->lock: wait as parked (touching nothing) until signalled or @deadline_ms (0: no deadline). */
static void park_wait(NetDev *nd, int64_t deadline_ms)
{
    nd->parked = true;
    pthread_cond_broadcast(&nd->cond);
    if (!deadline_ms) {
        pthread_cond_wait(&nd->cond, &nd->lock);
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t left = deadline_ms - net_now_ms();
    if (left > 0) {
        ts.tv_sec += left / 1000;
        ts.tv_nsec += (left % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&nd->cond, &nd->lock, &ts);
    }
}

static void *net_thread(void *arg)
{
    NetDev *nd = arg;

    pthread_mutex_lock(&nd->lock);
    while (!nd->quit) {
        if (!nd->run || (nd->tap.fd < 0 && !nd->attach_pending)) {
            park_wait(nd, 0);
            continue;
        }
        nd->parked = false;
        if (nd->tap.fd < 0) {
            /* Running without a TAP: no fd came with the migration (or this process let go of it), so attach
             * it by name. While the source still holds a TAP without multi_queue, that is EBUSY for a moment. */
            FerryError *err = NULL;
            bool busy;

            if (!attach_locked(nd, &busy, &err)) {
                if (busy && net_now_ms() < nd->attach_deadline_ms) {
                    ferry_error_free(err);
                    park_wait(nd, net_now_ms() + NET_TAP_RETRY_INTERVAL_MS);
                    continue;
                }
                /* No link until the next start tries again. */
                set_error(nd, err);
                ferry_error_free(err);
                nd->attach_pending = false;
            }
            continue;
        }
        int fd = nd->tap.fd;
        pthread_mutex_unlock(&nd->lock);
        bool ok = serve_one(nd, fd);
        pthread_mutex_lock(&nd->lock);
        if (!ok && nd->tap.fd == fd) {
            /* The TAP is gone (its interface was deleted, ...): no link until the next start attaches one. */
            net_tap_close(&nd->tap);
        }
    }
    nd->parked = true;
    pthread_cond_broadcast(&nd->cond);
    pthread_mutex_unlock(&nd->lock);
    return NULL;
}

static void wake(NetDev *nd)
{
    uint64_t one = 1;

    /* An eventfd counter only fails to take 1 when it is near 2^64: it is readable then anyway. */
    (void)!write(nd->wake_fd, &one, sizeof(one));
}

void net_dev_stop(NetDev *nd)
{
    pthread_mutex_lock(&nd->lock);
    nd->run = false;
    wake(nd);
    while (nd->thread_started && !nd->parked) {
        pthread_cond_wait(&nd->cond, &nd->lock);
    }
    pthread_mutex_unlock(&nd->lock);
}

void net_dev_start(NetDev *nd)
{
    pthread_mutex_lock(&nd->lock);
    nd->run = true;
    /* A device that starts without a TAP attaches one by name: a destination to which no fd came, or a source
     * resumed after it let go of its TAP, or one whose TAP failed. */
    if (nd->tap.fd < 0) {
        nd->attach_pending = true;
        nd->attach_deadline_ms = net_now_ms() + NET_TAP_RETRY_MS;
    }
    pthread_cond_broadcast(&nd->cond);
    pthread_mutex_unlock(&nd->lock);
}

bool net_dev_start_thread(NetDev *nd, FerryError **errp)
{
    int err = pthread_create(&nd->thread, NULL, net_thread, nd);

    if (err) {
        ferry_error_setg_errno(errp, err, "creating the thread of netdev %s", nd->cfg.id);
        return false;
    }
    pthread_mutex_lock(&nd->lock);
    nd->thread_started = true;
    while (!nd->parked) {
        pthread_cond_wait(&nd->cond, &nd->lock);
    }
    pthread_mutex_unlock(&nd->lock);
    return true;
}

void net_dev_stop_thread(NetDev *nd)
{
    bool join;

    if (!nd) {
        return;
    }
    pthread_mutex_lock(&nd->lock);
    nd->quit = true;
    wake(nd);
    pthread_cond_broadcast(&nd->cond);
    join = nd->thread_started;
    pthread_mutex_unlock(&nd->lock);
    if (join) {
        pthread_join(nd->thread, NULL);
    }
    /* Forgotten once joined, so that a second call does not join again; stop returns at once from now on. */
    pthread_mutex_lock(&nd->lock);
    nd->thread_started = false;
    nd->parked = true;
    pthread_mutex_unlock(&nd->lock);
}

/* ---- Device state ---- */

typedef struct NetState {
    uint64_t rx_frames, rx_bytes, tx_frames, tx_bytes, arp_replies, echo_replies, dropped, tx_errors;
} NetState;

static bool visit_identity(NetDev *nd, FerryVisitor *v, bool load, FerryError **errp)
{
    char *netdev = strdup(nd->cfg.id), *ifname = strdup(nd->cfg.ifname);
    uint8_t mac[NET_ETH_ALEN], ip[4];
    char a[18], b[18];
    bool ok = false;

    memcpy(mac, nd->cfg.ident.mac, sizeof(mac));
    memcpy(ip, nd->cfg.ident.ip, sizeof(ip));
    if (!netdev || !ifname) {
        ferry_error_setg(errp, "out of memory");
        goto out;
    }
    if (!ferry_visit_str(v, "netdev", &netdev, errp)) {
        goto out;
    }
    if (load && strcmp(netdev, nd->cfg.id) != 0) {
        ferry_error_setg(errp, "incoming virtio-net state %u is for netdev '%s', this device uses netdev '%s'",
                         nd->index, netdev, nd->cfg.id);
        goto out;
    }
    /* The TAP's name is the host's business (a destination may use another TAP without backend-transfer): it is
     * sent for people and tools reading the stream, and not checked. */
    ferry_visit_attrs(v, FERRY_FIELD_SKIPPABLE | FERRY_FIELD_DEFAULT);
    if (!ferry_visit_str(v, "ifname", &ifname, errp) || !ferry_visit_bytes(v, "mac", mac, sizeof(mac), errp)) {
        goto out;
    }
    if (load && memcmp(mac, nd->cfg.ident.mac, sizeof(mac)) != 0) {
        net_format_mac(mac, a);
        net_format_mac(nd->cfg.ident.mac, b);
        ferry_error_setg(errp, "incoming virtio-net state for netdev %s has mac %s, this device has mac=%s",
                         nd->cfg.id, a, b);
        goto out;
    }
    if (!ferry_visit_bytes(v, "ip", ip, sizeof(ip), errp)) {
        goto out;
    }
    if (load && memcmp(ip, nd->cfg.ident.ip, sizeof(ip)) != 0) {
        net_format_ipv4(ip, a);
        net_format_ipv4(nd->cfg.ident.ip, b);
        ferry_error_setg(errp, "incoming virtio-net state for netdev %s has ip %s, this device has ip=%s",
                         nd->cfg.id, a, b);
        goto out;
    }
    ok = true;
out:
    free(netdev);
    free(ifname);
    return ok;
}

/*
 * The section: identity, then the counters. The device has no virtqueues (there is no guest) and no frame in
 * flight when it is stopped, so the counters are its whole position; the TAP's own queue stays in the kernel and
 * moves with the fd.
 */
static bool net_section(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    NetDev *nd = opaque;
    bool load = ferry_visitor_kind(v) == FERRY_VISITOR_INPUT;
    NetState st = { 0 };

    if (load && version != 1) {
        ferry_error_setg(errp, "virtio-net state version %" PRIu32 " is not supported (this program reads "
                         "version 1)", version);
        return false;
    }
    if (!load) {
        st = (NetState){ atomic_load(&nd->rx_frames),    atomic_load(&nd->rx_bytes),
                         atomic_load(&nd->tx_frames),    atomic_load(&nd->tx_bytes),
                         atomic_load(&nd->arp_replies),  atomic_load(&nd->echo_replies),
                         atomic_load(&nd->dropped),      atomic_load(&nd->tx_errors) };
    }
    if (!ferry_visit_start_struct(v, "virtio-net", errp) || !visit_identity(nd, v, load, errp) ||
        !ferry_visit_u64(v, "rx-frames", &st.rx_frames, errp) ||
        !ferry_visit_u64(v, "rx-bytes", &st.rx_bytes, errp) ||
        !ferry_visit_u64(v, "tx-frames", &st.tx_frames, errp) ||
        !ferry_visit_u64(v, "tx-bytes", &st.tx_bytes, errp) ||
        !ferry_visit_u64(v, "arp-replies", &st.arp_replies, errp) ||
        !ferry_visit_u64(v, "echo-replies", &st.echo_replies, errp) ||
        !ferry_visit_u64(v, "dropped", &st.dropped, errp) ||
        !ferry_visit_u64(v, "tx-errors", &st.tx_errors, errp) || !ferry_visit_end_struct(v, errp)) {
        return false;
    }
    if (load) {
        /* Sections load only after the whole stream was checked, and with the device never run: apply. */
        atomic_store(&nd->rx_frames, st.rx_frames);
        atomic_store(&nd->rx_bytes, st.rx_bytes);
        atomic_store(&nd->tx_frames, st.tx_frames);
        atomic_store(&nd->tx_bytes, st.tx_bytes);
        atomic_store(&nd->arp_replies, st.arp_replies);
        atomic_store(&nd->echo_replies, st.echo_replies);
        atomic_store(&nd->dropped, st.dropped);
        atomic_store(&nd->tx_errors, st.tx_errors);
    }
    return true;
}

/* ---- Life cycle ---- */

NetDev *net_dev_new(const NetConfig *cfg, unsigned index, FerryMigration *m, FerryError **errp)
{
    NetDev *nd = calloc(1, sizeof(*nd));

    if (!nd) {
        ferry_error_setg(errp, "out of memory");
        return NULL;
    }
    nd->cfg = *cfg;
    nd->index = index;
    nd->m = m;
    net_tap_init(&nd->tap);
    nd->backend = (NetTapBackend){ .lock = &nd->lock, .tap = &nd->tap, .running = &nd->run, .cfg = &nd->cfg };
    nd->wake_fd = -1;
    pthread_mutex_init(&nd->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&nd->cond, &ca);
    pthread_condattr_destroy(&ca);
    nd->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    nd->frame = malloc(NET_FRAME_MAX);
    nd->reply = malloc(NET_FRAME_MAX);
    if (nd->wake_fd < 0 || !nd->frame || !nd->reply) {
        ferry_error_setg_errno(errp, nd->wake_fd < 0 ? errno : ENOMEM, "creating netdev %s", cfg->id);
        net_dev_free(nd);
        return NULL;
    }
    return nd;
}

bool net_dev_register(NetDev *nd, FerryError **errp)
{
    if (!ferry_migration_register_section(nd->m, "virtio-net", nd->index, 1, net_section, nd, errp) ||
        !net_tap_backend_register(&nd->backend, nd->m, errp)) {
        ferry_error_prepend(errp, "netdev %s: ", nd->cfg.id);
        return false;
    }
    return true;
}

bool net_dev_init_backend(NetDev *nd, bool incoming, FerryError **errp)
{
    /* A destination waits: see net.h. */
    return net_tap_backend_init(&nd->backend, incoming, errp);
}

void net_dev_free(NetDev *nd)
{
    if (!nd) {
        return;
    }
    net_dev_stop_thread(nd);
    net_tap_close(&nd->tap);
    if (nd->wake_fd >= 0) {
        close(nd->wake_fd);
    }
    free(nd->frame);
    free(nd->reply);
    pthread_cond_destroy(&nd->cond);
    pthread_mutex_destroy(&nd->lock);
    free(nd);
}

json_t *net_dev_query(NetDev *nd)
{
    char mac[18], ip[16];

    net_format_mac(nd->cfg.ident.mac, mac);
    net_format_ipv4(nd->cfg.ident.ip, ip);
    pthread_mutex_lock(&nd->lock);
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "id", nd->cfg.id, "type", "tap", "ifname",
                          nd->cfg.ifname, "model", "virtio-net", "mac", mac, "ip", ip);
    if (o && nd->cfg.device_id[0]) {
        json_object_set_new(o, "device", json_string(nd->cfg.device_id));
    }
    if (o) {
        net_tap_query(&nd->tap, o);
    }
    pthread_mutex_unlock(&nd->lock);
    if (!o) {
        return NULL;
    }
    static const char *const names[] = { "rx-frames", "rx-bytes", "tx-frames", "tx-bytes", "arp-replies",
                                         "echo-replies", "dropped", "tx-errors" };
    _Atomic uint64_t *const vals[] = { &nd->rx_frames, &nd->rx_bytes, &nd->tx_frames, &nd->tx_bytes,
                                       &nd->arp_replies, &nd->echo_replies, &nd->dropped, &nd->tx_errors };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        json_object_set_new(o, names[i], json_integer((json_int_t)atomic_load(vals[i])));
    }
    return o;
}
