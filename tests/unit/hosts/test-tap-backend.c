/*
 * Unit tests of the TAP as a migration backend (hosts/common/netdev.c's NetTapBackend), which both host programs'
 * devices register: get_fd, set_fd and release on a NetTap, each under the device's lock, with a socketpair in
 * place of the TAP (as tests/unit/vm/test-virtio-net.c does) where no TAP is needed. One test adopts a real TAP
 * and skips where this process may not create one. The devices around it are tested in tests/unit/workload,
 * tests/unit/vm and test_tap.py.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "netdev.h"

/* The parts of a device the backend sees. */
typedef struct Dev {
    pthread_mutex_t lock;
    NetTap tap;
    bool run;
    NetConfig cfg;
    NetTapBackend backend;
} Dev;

static void dev_init(Dev *d, const char *ifname)
{
    memset(d, 0, sizeof(*d));
    pthread_mutex_init(&d->lock, NULL);
    net_tap_init(&d->tap);
    strcpy(d->cfg.id, "n0");
    snprintf(d->cfg.ifname, sizeof(d->cfg.ifname), "%s", ifname);
    d->backend = (NetTapBackend){ .lock = &d->lock, .tap = &d->tap, .running = &d->run, .cfg = &d->cfg };
}

static void dev_fini(Dev *d)
{
    net_tap_close(&d->tap);
    pthread_mutex_destroy(&d->lock);
}

static void stand_in(int sv[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
}

static bool fd_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

static void test_get_fd(void **state)
{
    Dev d;
    int sv[2];

    (void)state;
    dev_init(&d, "ftap0");
    assert_int_equal(net_tap_backend_ops.get_fd(&d.backend), -1);
    stand_in(sv);
    d.tap.fd = sv[0];
    assert_int_equal(net_tap_backend_ops.get_fd(&d.backend), sv[0]);
    dev_fini(&d);
    close(sv[1]);
}

/* release closes the TAP: the peer of the stand-in sees the end, and the device has no fd. */
static void test_release(void **state)
{
    Dev d;
    int sv[2];
    char c;

    (void)state;
    dev_init(&d, "ftap0");
    stand_in(sv);
    d.tap.fd = sv[0];
    net_tap_backend_ops.release(&d.backend);
    assert_int_equal(d.tap.fd, -1);
    assert_int_equal(read(sv[1], &c, 1), 0);
    net_tap_backend_ops.release(&d.backend); /* nothing left: a no-op */
    assert_int_equal(d.tap.fd, -1);
    dev_fini(&d);
    close(sv[1]);
}

/* set_fd refuses what is not a TAP; the fd stays the caller's (open) and the device's TAP is untouched. */
static void test_set_fd_not_a_tap(void **state)
{
    Dev d;
    int sv[2], old[2];
    FerryError *err = NULL;

    (void)state;
    dev_init(&d, "ftap0");
    stand_in(sv);
    stand_in(old);
    d.tap.fd = old[0];
    assert_false(net_tap_backend_ops.set_fd(&d.backend, sv[0], &err));
    assert_non_null(err);
    assert_non_null(strstr(ferry_error_msg(err), "not a TAP"));
    ferry_error_free(err);
    assert_true(fd_open(sv[0]));
    assert_int_equal(d.tap.fd, old[0]);
    assert_int_equal(d.tap.adoptions, 0);
    dev_fini(&d);
    close(sv[0]);
    close(sv[1]);
    close(old[1]);
}

/* A running device would be reading its own TAP: set_fd refuses, naming the netdev, before looking at the fd. */
static void test_set_fd_running(void **state)
{
    Dev d;
    int sv[2];
    FerryError *err = NULL;

    (void)state;
    dev_init(&d, "ftap0");
    d.run = true;
    stand_in(sv);
    assert_false(net_tap_backend_ops.set_fd(&d.backend, sv[0], &err));
    assert_non_null(err);
    assert_string_equal(ferry_error_msg(err), "netdev n0 is running and cannot take another TAP");
    ferry_error_free(err);
    assert_true(fd_open(sv[0]));
    assert_int_equal(d.tap.fd, -1);
    dev_fini(&d);
    close(sv[0]);
    close(sv[1]);
}

typedef struct Call {
    Dev *d;
    int which; /* 0 get_fd, 1 set_fd, 2 release */
    int fd;
    _Atomic bool done;
} Call;

static void *call_thread(void *arg)
{
    Call *c = arg;
    FerryError *err = NULL;

    if (c->which == 0) {
        net_tap_backend_ops.get_fd(&c->d->backend);
    } else if (c->which == 1) {
        net_tap_backend_ops.set_fd(&c->d->backend, c->fd, &err);
        ferry_error_free(err);
    } else {
        net_tap_backend_ops.release(&c->d->backend);
    }
    c->done = true;
    return NULL;
}

/* Each callback waits for the device's lock: none returns while the test holds it. */
static void test_callbacks_take_the_lock(void **state)
{
    int sv[2];

    (void)state;
    stand_in(sv);
    for (int which = 0; which < 3; which++) {
        Dev d;
        Call c = { .d = &d, .which = which, .fd = sv[0] };
        pthread_t t;
        struct timespec ts = { 0, 50 * 1000 * 1000 };

        dev_init(&d, "ftap0");
        pthread_mutex_lock(&d.lock);
        assert_int_equal(pthread_create(&t, NULL, call_thread, &c), 0);
        nanosleep(&ts, NULL);
        assert_false(c.done);
        pthread_mutex_unlock(&d.lock);
        assert_int_equal(pthread_join(t, NULL), 0);
        assert_true(c.done);
        dev_fini(&d);
    }
    close(sv[0]);
    close(sv[1]);
}

/* net_tap_backend_init on a device whose ifname is @ifname: whether it succeeds, and with what error. */
static bool init(const char *ifname, bool incoming, char *msg, size_t msg_size)
{
    Dev d;
    FerryError *err = NULL;
    bool ok;

    if (!net_tun_available(NULL)) {
        skip();
    }
    dev_init(&d, ifname);
    ok = net_tap_backend_init(&d.backend, incoming, &err);
    snprintf(msg, msg_size, "%s", err ? ferry_error_msg(err) : "");
    ferry_error_free(err);
    assert_int_equal(d.tap.fd, -1); /* neither attaches: a destination waits, and "lo" is no TAP */
    assert_int_equal(d.tap.opens, 0);
    dev_fini(&d);
    return ok;
}

/* A destination waits for its TAP: init attaches nothing. A source attaches by name at start-up; a name that
 * cannot be a TAP is an error naming the netdev. */
static void test_init(void **state)
{
    char msg[256];

    (void)state;
    assert_true(init("ftap0", true, msg, sizeof(msg)));
    assert_string_equal(msg, "");
    assert_false(init("lo", false, msg, sizeof(msg)));
    assert_non_null(strstr(msg, "netdev n0: "));
}

/* Open a TAP named @name as net_tap_open would (plain Ethernet frames); -1 where this process may not. */
static int make_tap(const char *name)
{
    struct ifreq ifr;
    int fd = open(NET_TUN_PATH, O_RDWR | O_CLOEXEC | O_NONBLOCK);

    if (fd < 0) {
        return -1;
    }
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* set_fd adopts a real TAP of the netdev's name (closing the stand-in the device had), and refuses one of
 * another name. The TAP is not persistent: it goes when the last fd does. */
static void test_set_fd_adopts_a_tap(void **state)
{
    char name[IFNAMSIZ];
    Dev d;
    int sv[2], fd;
    FerryError *err = NULL;
    char c;

    (void)state;
    snprintf(name, sizeof(name), "fbt%d", (int)getpid() % 100000);
    fd = make_tap(name);
    if (fd < 0) {
        skip();
    }
    dev_init(&d, "fbt-other");
    assert_false(net_tap_backend_ops.set_fd(&d.backend, fd, &err));
    assert_non_null(strstr(ferry_error_msg(err), "but this netdev has ifname=fbt-other"));
    ferry_error_free(err);
    err = NULL;
    dev_fini(&d);

    dev_init(&d, name);
    stand_in(sv);
    d.tap.fd = sv[0];
    assert_true(net_tap_backend_ops.set_fd(&d.backend, fd, &err));
    assert_null(err);
    assert_int_equal(d.tap.fd, fd);
    assert_int_equal(d.tap.adoptions, 1);
    assert_false(d.tap.multi_queue);
    assert_int_equal(read(sv[1], &c, 1), 0); /* the old one was closed */
    assert_int_equal(net_tap_backend_ops.get_fd(&d.backend), fd);
    net_tap_backend_ops.release(&d.backend);
    assert_int_equal(d.tap.fd, -1);
    assert_false(fd_open(fd)); /* nothing else in this test opens an fd that could take its number */
    dev_fini(&d);
    close(sv[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_fd),
        cmocka_unit_test(test_release),
        cmocka_unit_test(test_set_fd_not_a_tap),
        cmocka_unit_test(test_set_fd_running),
        cmocka_unit_test(test_callbacks_take_the_lock),
        cmocka_unit_test(test_init),
        cmocka_unit_test(test_set_fd_adopts_a_tap),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
