/*
 * The network options and the TAP, shared by the host programs (ferry-workload and ferry-vm): the -netdev tap and
 * -device virtio-net command-line options as QEMU spells them, and attaching a TAP through /dev/net/tun or
 * checking one received from a migration source, and the TAP as the migration backend both programs' devices
 * register (get_fd, set_fd, release). What each program's device does with the TAP (the workload's
 * answering model, ferry-vm's virtio-net for a guest) is its own. Uses only the public API; not part of libferry.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include "netdev.h"

/* QEMU's default MAC for the first NIC. */
static const uint8_t net_default_mac[NET_ETH_ALEN] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };

/* ---- Command line ---- */

/* Split "key=value,..." at the first ','; copies the pair into @buf. Returns the rest, or NULL at the end. A
 * pair longer than @bufsize is reported rather than cut, so that a long value is never half read. */
static bool next_pair(const char **rest, char *buf, size_t bufsize, const char **key, const char **value,
                      const char *opt, FerryError **errp)
{
    const char *s = *rest;
    const char *end = strchr(s, ',');
    size_t len = end ? (size_t)(end - s) : strlen(s);

    if (len >= bufsize) {
        ferry_error_setg(errp, "%s: '%.*s...' is too long", opt, 32, s);
        return false;
    }
    memcpy(buf, s, len);
    buf[len] = '\0';
    *key = buf;
    *value = NULL;
    char *eq = strchr(buf, '=');
    if (eq) {
        *eq = '\0';
        *value = eq + 1;
    }
    *rest = end ? end + 1 : NULL;
    return true;
}

/* An id QEMU would take: a letter, then letters, digits, '-', '.', '_'. It names the backend in the stream too. */
static bool valid_id(const char *s)
{
    size_t len = strlen(s);

    if (len == 0 || len > NET_ID_MAX || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z'))) {
        return false;
    }
    for (const char *c = s; *c; c++) {
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-' ||
              *c == '.' || *c == '_')) {
            return false;
        }
    }
    return true;
}

/* A Linux interface name that names one interface: the destination attaches it by this name, so a template the
 * kernel fills in ("tap%d") cannot be used. */
static bool valid_ifname(const char *s)
{
    size_t len = strlen(s);

    if (len == 0 || len >= NET_IFNAME_SIZE || strcmp(s, ".") == 0 || strcmp(s, "..") == 0) {
        return false;
    }
    for (const char *c = s; *c; c++) {
        if (*c <= ' ' || *c == '/' || *c == ':' || *c == '%' || *c == 0x7f) {
            return false;
        }
    }
    return true;
}

bool net_parse_netdev(NetSetup *setup, const char *arg, FerryError **errp)
{
    char buf[256];
    const char *key, *value;
    const char *rest = arg;
    NetConfig c = { 0 };

    if (!next_pair(&rest, buf, sizeof(buf), &key, &value, "-netdev", errp)) {
        return false;
    }
    if (value || strcmp(key, "tap") != 0) {
        ferry_error_setg(errp, "-netdev: unknown backend type '%s' (only tap)", key);
        return false;
    }
    while (rest && *rest) {
        if (!next_pair(&rest, buf, sizeof(buf), &key, &value, "-netdev tap", errp)) {
            return false;
        }
        if (!value) {
            ferry_error_setg(errp, "-netdev tap: '%s' needs a value (key=value)", key);
            return false;
        }
        if (strcmp(key, "id") == 0) {
            if (!valid_id(value)) {
                ferry_error_setg(errp, "-netdev tap: bad id '%s' (a letter, then letters, digits, '-', '.' or '_'; "
                                 "at most %d)", value, NET_ID_MAX);
                return false;
            }
            strcpy(c.id, value);
        } else if (strcmp(key, "ifname") == 0) {
            if (!valid_ifname(value)) {
                ferry_error_setg(errp, "-netdev tap: bad ifname '%s' (an interface name of 1 to %d bytes without "
                                 "spaces, '/', ':' or '%%')", value, NET_IFNAME_SIZE - 1);
                return false;
            }
            strcpy(c.ifname, value);
        } else if (strcmp(key, "script") == 0 || strcmp(key, "downscript") == 0) {
            /* QEMU runs /etc/qemu-ifup by default; this program runs no scripts, so it must be told "no". */
            if (strcmp(value, "no") != 0) {
                ferry_error_setg(errp, "-netdev tap: %s=%s is not supported (this program runs no scripts: give "
                                 "%s=no and configure the TAP beforehand)", key, value, key);
                return false;
            }
        } else {
            ferry_error_setg(errp, "-netdev tap: unknown property '%s' (id, ifname, script, downscript)", key);
            return false;
        }
    }
    if (!c.id[0]) {
        ferry_error_setg(errp, "-netdev tap: id= is required");
        return false;
    }
    if (!c.ifname[0]) {
        ferry_error_setg(errp, "-netdev tap,id=%s: ifname= is required (the destination of a migration attaches "
                         "the TAP by its name)", c.id);
        return false;
    }
    for (unsigned i = 0; i < setup->n; i++) {
        if (strcmp(setup->cfg[i].id, c.id) == 0) {
            ferry_error_setg(errp, "-netdev tap: duplicate id '%s'", c.id);
            return false;
        }
        if (strcmp(setup->cfg[i].ifname, c.ifname) == 0) {
            ferry_error_setg(errp, "-netdev tap: ifname '%s' is used by netdev '%s' already", c.ifname,
                             setup->cfg[i].id);
            return false;
        }
    }
    if (setup->n == NET_MAX_DEVICES) {
        ferry_error_setg(errp, "-netdev: at most %d netdevs", NET_MAX_DEVICES);
        return false;
    }
    setup->cfg[setup->n++] = c;
    return true;
}

/* What one -device virtio-net says. */
typedef struct DeviceOpts {
    char netdev[NET_ID_MAX + 1], id[NET_ID_MAX + 1];
    uint8_t mac[NET_ETH_ALEN], ip[4]; /* a guest's NIC has no address of its own: ip all zero */
    bool has_mac, has_ip;
    NetRestoreMac restore_mac;
} DeviceOpts;

/* One key=value of -device virtio-net. */
static bool parse_device_property(const NetSetup *setup, DeviceOpts *d, const char *key, const char *value,
                                  FerryError **errp)
{
    if (strcmp(key, "netdev") == 0 || strcmp(key, "id") == 0) {
        if (!valid_id(value)) {
            ferry_error_setg(errp, "-device virtio-net: bad %s '%s'", key[0] == 'n' ? "netdev id" : "id", value);
            return false;
        }
        strcpy(key[0] == 'n' ? d->netdev : d->id, value);
    } else if (strcmp(key, "mac") == 0) {
        if (!net_parse_mac(value, d->mac)) {
            ferry_error_setg(errp, "-device virtio-net: mac '%s' is not a MAC address (six hex pairs: "
                             "52:54:00:12:34:56)", value);
            return false;
        }
        if (d->mac[0] & 1) {
            ferry_error_setg(errp, "-device virtio-net: mac '%s' is a multicast address (the first byte must "
                             "be even)", value);
            return false;
        }
        d->has_mac = true;
    } else if (strcmp(key, "ip") == 0 && !setup->guest_nic) {
        if (!net_parse_ipv4(value, d->ip)) {
            ferry_error_setg(errp, "-device virtio-net: ip '%s' is not an IPv4 address (A.B.C.D)", value);
            return false;
        }
        if (d->ip[0] == 0 || d->ip[0] == 127 || d->ip[0] >= 224) {
            ferry_error_setg(errp, "-device virtio-net: ip '%s' is not a unicast host address", value);
            return false;
        }
        d->has_ip = true;
    } else if (strcmp(key, "restore-mac") == 0 && setup->guest_nic) {
        /* Only a guest's NIC is restored from a snapshot into clones; the workload's device has no guest whose
         * view of the MAC could change, and its ip= would have to change along with it. */
        if (strcmp(value, "saved") == 0) {
            d->restore_mac = NET_RESTORE_MAC_SAVED;
        } else if (strcmp(value, "keep") == 0) {
            d->restore_mac = NET_RESTORE_MAC_KEEP;
        } else {
            ferry_error_setg(errp, "-device virtio-net: restore-mac '%s' is not one of saved, keep (saved: incoming "
                             "state must have this device's mac=; keep: this device keeps its mac= and the "
                             "incoming one is replaced)", value);
            return false;
        }
    } else {
        ferry_error_setg(errp, "-device virtio-net: unknown property '%s' (netdev, mac, %sid)", key,
                         setup->guest_nic ? "restore-mac, " : "ip, ");
        return false;
    }
    return true;
}

/* Put the device @d on its netdev, which must have been given and have no device yet. */
static bool attach_device(NetSetup *setup, const DeviceOpts *d, FerryError **errp)
{
    NetConfig *c = NULL;

    for (unsigned i = 0; i < setup->n; i++) {
        if (strcmp(setup->cfg[i].id, d->netdev) == 0) {
            c = &setup->cfg[i];
        }
    }
    if (!c) {
        ferry_error_setg(errp, "-device virtio-net: netdev '%s' not found (give -netdev tap,id=%s,... first)",
                         d->netdev, d->netdev);
        return false;
    }
    if (c->has_device) {
        ferry_error_setg(errp, "-device virtio-net: netdev '%s' is used by another device already", d->netdev);
        return false;
    }
    c->has_device = true;
    strcpy(c->device_id, d->id);
    memcpy(c->ident.mac, d->has_mac ? d->mac : net_default_mac, NET_ETH_ALEN);
    memcpy(c->ident.ip, d->ip, 4);
    c->restore_mac = d->restore_mac;
    return true;
}

bool net_parse_device(NetSetup *setup, const char *arg, FerryError **errp)
{
    char buf[256];
    const char *key, *value;
    const char *rest = arg;
    DeviceOpts d = { .netdev = "" };

    if (!next_pair(&rest, buf, sizeof(buf), &key, &value, "-device", errp)) {
        return false;
    }
    /* QEMU's names for the same model on its transports; there is no bus here. */
    if (value || (strcmp(key, "virtio-net") != 0 && strcmp(key, "virtio-net-pci") != 0 &&
                  strcmp(key, "virtio-net-device") != 0)) {
        ferry_error_setg(errp, "-device: unknown device '%s' (only virtio-net, virtio-net-pci, virtio-net-device)",
                         key);
        return false;
    }
    while (rest && *rest) {
        if (!next_pair(&rest, buf, sizeof(buf), &key, &value, "-device virtio-net", errp)) {
            return false;
        }
        if (!value) {
            ferry_error_setg(errp, "-device virtio-net: '%s' needs a value (key=value)", key);
            return false;
        }
        if (!parse_device_property(setup, &d, key, value, errp)) {
            return false;
        }
    }
    if (!d.netdev[0]) {
        ferry_error_setg(errp, "-device virtio-net: netdev= is required");
        return false;
    }
    /* The workload has no guest OS to configure an address, so the device must be told its own; a guest's NIC
     * has none: the guest's network stack has the addresses. */
    if (!d.has_ip && !setup->guest_nic) {
        ferry_error_setg(errp, "-device virtio-net,netdev=%s: ip= is required (the workload has no guest OS: the "
                         "device answers ARP and ping for this IPv4 address)", d.netdev);
        return false;
    }
    /* Clones restored from one snapshot each keep the MAC they are given; the default MAC would be the same in
     * every one of them, which is the clash restore-mac=keep exists to avoid. */
    if (d.restore_mac == NET_RESTORE_MAC_KEEP && !d.has_mac) {
        ferry_error_setg(errp, "-device virtio-net,netdev=%s: restore-mac=keep needs mac= (the MAC this device "
                         "keeps when it loads another device's state)", d.netdev);
        return false;
    }
    return attach_device(setup, &d, errp);
}

bool net_setup_check(const NetSetup *setup, FerryError **errp)
{
    for (unsigned i = 0; i < setup->n; i++) {
        if (!setup->cfg[i].has_device) {
            ferry_error_setg(errp, "-netdev tap,id=%s is not used: add -device virtio-net,netdev=%s%s",
                             setup->cfg[i].id, setup->cfg[i].id, setup->guest_nic ? "" : ",ip=A.B.C.D");
            return false;
        }
        for (unsigned j = 0; j < i; j++) {
            if (memcmp(setup->cfg[i].ident.mac, setup->cfg[j].ident.mac, NET_ETH_ALEN) == 0) {
                ferry_error_setg(errp, "-device virtio-net: netdevs '%s' and '%s' have the same mac (give mac=)",
                                 setup->cfg[j].id, setup->cfg[i].id);
                return false;
            }
        }
    }
    return true;
}

/* ---- The TAP ---- */

/* Whether /dev/net/tun is there to be opened: checked at start-up so that a missing TUN/TAP driver is an error
 * then, not when the destination first runs. */
bool net_tun_available(FerryError **errp)
{
    struct stat st;

    if (stat(NET_TUN_PATH, &st) < 0) {
        ferry_error_setg_errno(errp, errno, NET_TUN_PATH " is missing (no TUN/TAP support: load the tun module, or "
                               "create the device node with mknod " NET_TUN_PATH " c 10 200)");
        return false;
    }
    if (!S_ISCHR(st.st_mode)) {
        ferry_error_setg(errp, NET_TUN_PATH " is not a character device");
        return false;
    }
    return true;
}

/* TUNSETIFF for a TAP of plain Ethernet frames; 0 or the errno. */
static int set_iff(int fd, const char *ifname, bool multi_queue)
{
    struct ifreq ifr;

    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (multi_queue ? IFF_MULTI_QUEUE : 0);
    return ioctl(fd, TUNSETIFF, &ifr) < 0 ? errno : 0;
}

/* Attach the TAP @ifname (creating it if there is none: the kernel does that, as for QEMU). Returns its fd
 * (close-on-exec, non-blocking), or -1 with *errp set and *busy telling whether another process holds it. */
static int tap_attach(const char *ifname, bool *multi_queue, bool *busy, FerryError **errp)
{
    int fd = open(NET_TUN_PATH, O_RDWR | O_CLOEXEC | O_NONBLOCK);
    int err;

    *busy = false;
    *multi_queue = false;
    if (fd < 0) {
        err = errno;
        ferry_error_setg_errno(errp, err, "opening " NET_TUN_PATH "%s",
                               err == ENOENT || err == ENODEV || err == ENXIO ? " (no TUN/TAP support: load the tun "
                                                                               "module)" : "");
        return -1;
    }
    err = set_iff(fd, ifname, false);
    if (err == EINVAL) {
        /* A TAP created with multi_queue (ip tuntap add NAME mode tap multi_queue) refuses an attach without
         * IFF_MULTI_QUEUE ("flags mismatch"): attach as one more of its queues. That is also what lets a
         * destination attach it while the source still holds its own queue. A failed TUNSETIFF leaves the file
         * unattached, so it can be tried again. */
        err = set_iff(fd, ifname, true);
        *multi_queue = err == 0;
        if (err == EINVAL) {
            close(fd);
            ferry_error_setg(errp, "attaching TAP '%s': the interface exists and is not a TAP device", ifname);
            return -1;
        }
    }
    if (err) {
        close(fd);
        *busy = err == EBUSY;
        if (err == EBUSY) {
            ferry_error_setg(errp, "attaching TAP '%s': it is busy (another process has it attached, and a TAP "
                             "without multi_queue takes one at a time)", ifname);
        } else if (err == EPERM) {
            ferry_error_setg_errno(errp, err, "attaching TAP '%s' (creating a TAP, or attaching one whose owner "
                                   "is another user, needs CAP_NET_ADMIN)", ifname);
        } else {
            ferry_error_setg_errno(errp, err, "attaching TAP '%s'", ifname);
        }
        return -1;
    }
    return fd;
}

/*
 * Whether @fd, received from a migration source, is what this device would have attached itself: an attached
 * TUN/TAP file, a TAP (Ethernet frames), frames without packet information or vnet header (the format the device
 * reads), and the interface this netdev names. The device uses it as it is, so anything else is refused.
 */
static bool tap_verify(int fd, const char *ifname, bool *multi_queue, FerryError **errp)
{
    struct ifreq ifr;

    memset(&ifr, 0, sizeof(ifr));
    if (ioctl(fd, TUNGETIFF, &ifr) < 0) {
        int err = errno;

        if (err == EBADFD) {
            ferry_error_setg(errp, "the received fd is a " NET_TUN_PATH " file not attached to any interface");
        } else {
            ferry_error_setg_errno(errp, err, "the received fd is not a TAP (TUNGETIFF)");
        }
        return false;
    }
    ifr.ifr_name[sizeof(ifr.ifr_name) - 1] = '\0';
    if (!(ifr.ifr_flags & IFF_TAP)) {
        ferry_error_setg(errp, "the received fd is TUN device '%s' (IP packets), not a TAP", ifr.ifr_name);
        return false;
    }
    if (!(ifr.ifr_flags & IFF_NO_PI) || (ifr.ifr_flags & IFF_VNET_HDR)) {
        ferry_error_setg(errp, "the received TAP '%s' has flags 0x%x: this device reads plain Ethernet frames "
                         "(IFF_NO_PI, no vnet header)", ifr.ifr_name, (unsigned)(uint16_t)ifr.ifr_flags);
        return false;
    }
    if (strcmp(ifr.ifr_name, ifname) != 0) {
        ferry_error_setg(errp, "the received fd is TAP '%s', but this netdev has ifname=%s", ifr.ifr_name, ifname);
        return false;
    }
    *multi_queue = ifr.ifr_flags & IFF_MULTI_QUEUE;
    return true;
}

int64_t net_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void net_tap_init(NetTap *t)
{
    memset(t, 0, sizeof(*t));
    t->fd = -1;
}

bool net_tap_open(NetTap *t, const char *ifname, bool *busy, FerryError **errp)
{
    bool mq;
    int fd = tap_attach(ifname, &mq, busy, errp);

    if (fd < 0) {
        return false;
    }
    net_tap_close(t);
    t->fd = fd;
    t->multi_queue = mq;
    t->error[0] = '\0';
    t->opens++;
    return true;
}

bool net_tap_adopt(NetTap *t, int fd, const char *ifname, FerryError **errp)
{
    bool mq;

    if (!tap_verify(fd, ifname, &mq, errp)) {
        return false;
    }
    net_tap_close(t);
    t->fd = fd;
    t->multi_queue = mq;
    t->error[0] = '\0';
    t->adoptions++;
    return true;
}

void net_tap_close(NetTap *t)
{
    if (t->fd >= 0) {
        close(t->fd);
        t->fd = -1;
    }
}

void net_tap_query(const NetTap *t, json_t *o)
{
    json_object_set_new(o, "attached", json_boolean(t->fd >= 0));
    json_object_set_new(o, "fd", json_integer(t->fd));
    json_object_set_new(o, "multi-queue", json_boolean(t->fd >= 0 && t->multi_queue));
    json_object_set_new(o, "opens", json_integer((json_int_t)t->opens));
    json_object_set_new(o, "adopted", json_integer((json_int_t)t->adoptions));
    if (t->error[0]) {
        json_object_set_new(o, "error", json_string(t->error));
    }
}

/* ---- The TAP as a migration backend (include/ferry/backend.h) ---- */

static int backend_get_fd(void *opaque)
{
    NetTapBackend *b = opaque;

    pthread_mutex_lock(b->lock);
    int fd = b->tap->fd;
    pthread_mutex_unlock(b->lock);
    return fd;
}

static bool backend_set_fd(void *opaque, int fd, FerryError **errp)
{
    NetTapBackend *b = opaque;
    bool ok = false;

    pthread_mutex_lock(b->lock);
    /* The engine calls this before the destination ever ran; a running device would be reading its own TAP. */
    if (*b->running) {
        ferry_error_setg(errp, "netdev %s is running and cannot take another TAP", b->cfg->id);
    } else {
        ok = net_tap_adopt(b->tap, fd, b->cfg->ifname, errp);
    }
    pthread_mutex_unlock(b->lock);
    return ok;
}

static void backend_release(void *opaque)
{
    NetTapBackend *b = opaque;

    /* The destination runs the device now (this side is stopped, its device parked). Should this process be
     * resumed anyway ("cont"), its device attaches the TAP by name again, which fails while the destination
     * holds a TAP without multi_queue: two devices must not serve one link. */
    pthread_mutex_lock(b->lock);
    net_tap_close(b->tap);
    pthread_mutex_unlock(b->lock);
}

const FerryBackendOps net_tap_backend_ops = {
    .get_fd = backend_get_fd,
    .set_fd = backend_set_fd,
    .release = backend_release,
};

bool net_tap_backend_register(NetTapBackend *b, FerryMigration *m, FerryError **errp)
{
    return ferry_migration_register_backend(m, NET_TAP_BACKEND_KIND, b->cfg->id, &net_tap_backend_ops, b, errp);
}

bool net_tap_backend_init(NetTapBackend *b, bool incoming, FerryError **errp)
{
    bool busy, ok = net_tun_available(errp);

    /* Whether backend-transfer is on does not matter here (-incoming config: applies it only later, and a source
     * may have it off anyway): a destination's device learns it from set_fd. */
    if (ok && !incoming) {
        pthread_mutex_lock(b->lock);
        ok = net_tap_open(b->tap, b->cfg->ifname, &busy, errp);
        pthread_mutex_unlock(b->lock);
    }
    if (!ok) {
        ferry_error_prepend(errp, "netdev %s: ", b->cfg->id);
    }
    return ok;
}

bool net_parse_mac(const char *s, uint8_t mac[NET_ETH_ALEN])
{
    for (int i = 0; i < NET_ETH_ALEN; i++) {
        unsigned v = 0;

        for (int d = 0; d < 2; d++) {
            char c = *s++;
            unsigned x;

            if (c >= '0' && c <= '9') {
                x = (unsigned)(c - '0');
            } else if (c >= 'a' && c <= 'f') {
                x = (unsigned)(c - 'a' + 10);
            } else if (c >= 'A' && c <= 'F') {
                x = (unsigned)(c - 'A' + 10);
            } else {
                return false;
            }
            v = v << 4 | x;
        }
        mac[i] = (uint8_t)v;
        if (*s != (i == NET_ETH_ALEN - 1 ? '\0' : ':')) {
            return false;
        }
        s++;
    }
    return true;
}

bool net_parse_ipv4(const char *s, uint8_t ip[4])
{
    struct in_addr a;

    if (inet_pton(AF_INET, s, &a) != 1) {
        return false;
    }
    memcpy(ip, &a.s_addr, 4);
    return true;
}

void net_format_mac(const uint8_t mac[NET_ETH_ALEN], char out[18])
{
    snprintf(out, 18, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
}

const char *net_restore_mac_name(NetRestoreMac r)
{
    return r == NET_RESTORE_MAC_KEEP ? "keep" : "saved";
}

void net_format_ipv4(const uint8_t ip[4], char out[16])
{
    snprintf(out, 16, "%u.%u.%u.%u", ip[0], ip[1], ip[2], ip[3]);
}
