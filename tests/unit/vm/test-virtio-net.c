/*
 * Unit tests of ferry-vm's PCI bus (hosts/vm/pci.c) and virtio-net device (hosts/vm/virtio-net.c), without KVM:
 * a VM made by hand with guest RAM and no vCPUs, the test playing the guest's driver through the same port I/O
 * entry the vCPU threads use (pci_io), and a SOCK_SEQPACKET socket in place of the TAP (one frame per message, as
 * a TAP reads and writes them). Covered: configuration mechanism #1 (identification, absent devices, BAR sizing,
 * the command register), the legacy virtio registers, transmit and receive through the rings (header, chains,
 * used ring, ISR and the interrupt line's state), a frame larger than its buffer, the receive thread parking on
 * stop, a descriptor outside RAM, the "pci" and "virtio-net" sections' round trip and refusals, restore-mac (a
 * load into a device with another MAC: refused by default, taken with keep, the guest then reading the device's
 * own MAC) and the parsing of that property. The device
 * with a real TAP, under a real guest (Linux's virtio_pci and virtio_net), is tested in test_vm.py.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "vm-test.h"
#include "vm.h"

#define RAM BARE_VM_RAM
#define IO_BASE 0xc100u /* slot 1's window as pci.c assigns it */
#define RXQ_PFN 0x100u
#define TXQ_PFN 0x110u
#define QSIZE 256u
/* The legacy ring layout for 256 entries: descriptors, available ring, used ring at the next 4 KiB. */
#define AVAIL_OFF (16u * QSIZE)
#define USED_OFF 0x2000u

typedef struct Fixture {
    Vm *vm;
    VirtioNet *n;
    int peer; /* the "TAP"'s other end: what the host network sees */
} Fixture;

static const NetConfig nic_cfg = {
    .id = "n0", .ifname = "ftap0", .has_device = true, .ident = { .mac = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 } },
};

static int setup(void **state)
{
    Fixture *f = calloc(1, sizeof(*f));
    int sv[2];
    FerryError *err = NULL;

    assert_non_null(f);
    f->vm = bare_vm();
    f->n = virtio_net_new(f->vm, &nic_cfg, 0, &err);
    assert_non_null(f->n);
    f->vm->nics[f->vm->nnics++] = f->n;
    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    assert_int_equal(fcntl(sv[0], F_SETFL, O_NONBLOCK), 0);
    assert_true(virtio_net_attach_fd(f->n, sv[0], NULL));
    f->peer = sv[1];
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    Fixture *f = *state;

    bare_vm_free(f->vm);
    close(f->peer);
    free(f);
    return 0;
}

/* ---- The guest's side ---- */

static uint32_t io_in(Vm *vm, uint16_t port, unsigned size)
{
    uint8_t d[4] = { 0 };

    assert_true(pci_io(vm->pci, port, size, false, d));
    return size == 4 ? vm_rd32(d) : size == 2 ? vm_rd16(d) : d[0];
}

static void io_out(Vm *vm, uint16_t port, unsigned size, uint32_t v)
{
    uint8_t d[4];

    vm_wr32(d, v);
    assert_true(pci_io(vm->pci, port, size, true, d));
}

static uint32_t cfg_read(Vm *vm, unsigned slot, unsigned reg)
{
    io_out(vm, 0xcf8, 4, 0x80000000u | slot << 11 | reg);
    return io_in(vm, 0xcfc, 4);
}

static void cfg_write(Vm *vm, unsigned slot, unsigned reg, uint32_t v)
{
    io_out(vm, 0xcf8, 4, 0x80000000u | slot << 11 | reg);
    io_out(vm, 0xcfc, 4, v);
}

static uint8_t *gpa(Vm *vm, uint64_t a)
{
    return vm->ram_host + a;
}

/* What Linux's legacy driver does: reset, acknowledge, features, the two queues, DRIVER_OK. */
static void driver_init(Vm *vm)
{
    io_out(vm, IO_BASE + 18, 1, 0);
    io_out(vm, IO_BASE + 18, 1, 1 | 2);
    uint32_t host = io_in(vm, IO_BASE + 0, 4);
    assert_true(host & (1u << 5)); /* MAC */
    io_out(vm, IO_BASE + 4, 4, host);
    for (unsigned q = 0; q < 2; q++) {
        io_out(vm, IO_BASE + 14, 2, q);
        assert_int_equal(io_in(vm, IO_BASE + 12, 2), QSIZE);
        io_out(vm, IO_BASE + 8, 4, q == 0 ? RXQ_PFN : TXQ_PFN);
    }
    io_out(vm, IO_BASE + 18, 1, 1 | 2 | 4);
}

static void put_desc(Vm *vm, uint32_t pfn, unsigned i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
    uint8_t *d = gpa(vm, (uint64_t)pfn * 4096 + 16u * i);

    vm_wr64(d, addr);
    vm_wr32(d + 8, len);
    vm_wr16(d + 12, flags);
    vm_wr16(d + 14, next);
}

/* Make chain @head available as entry @idx of the available ring and move its index on. */
static void make_avail(Vm *vm, uint32_t pfn, uint16_t idx, uint16_t head)
{
    uint8_t *avail = gpa(vm, (uint64_t)pfn * 4096 + AVAIL_OFF);

    vm_wr16(avail + 4 + 2u * (idx % QSIZE), head);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    vm_wr16(avail + 2, (uint16_t)(idx + 1));
}

static uint16_t used_idx(Vm *vm, uint32_t pfn)
{
    return (uint16_t)__atomic_load_n((uint16_t *)gpa(vm, (uint64_t)pfn * 4096 + USED_OFF + 2), __ATOMIC_ACQUIRE);
}

static void used_elem(Vm *vm, uint32_t pfn, uint16_t idx, uint32_t *id, uint32_t *len)
{
    uint8_t *e = gpa(vm, (uint64_t)pfn * 4096 + USED_OFF + 4 + 8u * (idx % QSIZE));

    *id = vm_rd32(e);
    *len = vm_rd32(e + 4);
}

static bool irq_pending(Vm *vm)
{
    json_t *a = pci_query(vm->pci);
    bool pending = false;

    for (size_t i = 0; i < json_array_size(a); i++) {
        json_t *d = json_array_get(a, i);
        if (json_integer_value(json_object_get(d, "slot")) == 1) {
            pending = json_is_true(json_object_get(d, "irq-pending"));
        }
    }
    json_decref(a);
    return pending;
}

static json_int_t counter(VirtioNet *n, const char *name)
{
    json_t *o = virtio_net_query(n);
    json_int_t v = json_integer_value(json_object_get(o, name));

    json_decref(o);
    return v;
}

static bool wait_used(Vm *vm, uint32_t pfn, uint16_t want, int ms)
{
    for (int i = 0; i < ms; i++) {
        if (used_idx(vm, pfn) == want) {
            return true;
        }
        usleep(1000);
    }
    return used_idx(vm, pfn) == want;
}

/* ---- Tests ---- */

static void test_config_space(void **state)
{
    Fixture *f = *state;
    Vm *vm = f->vm;

    /* The host bridge and the NIC, identified as Linux's virtio_pci legacy driver wants it. */
    assert_int_equal(cfg_read(vm, 0, 0x00), 0x00081b36);
    assert_int_equal(cfg_read(vm, 0, 0x08) >> 8, 0x060000);
    assert_int_equal(cfg_read(vm, 1, 0x00), 0x10001af4);
    assert_int_equal(cfg_read(vm, 1, 0x08), 0x02000000); /* class 02 00 00, revision 0 */
    assert_int_equal(cfg_read(vm, 1, 0x2c), 0x00011af4);
    assert_int_equal(cfg_read(vm, 1, 0x3c) >> 8 & 0xff, 1); /* INTA# */
    /* No device, another function, another bus: all ones. */
    assert_int_equal(cfg_read(vm, 2, 0x00), 0xffffffff);
    io_out(vm, 0xcf8, 4, 0x80000000u | 1u << 11 | 1u << 8);
    assert_int_equal(io_in(vm, 0xcfc, 4), 0xffffffff);
    io_out(vm, 0xcf8, 4, 0x80000000u | 1u << 16 | 1u << 11);
    assert_int_equal(io_in(vm, 0xcfc, 4), 0xffffffff);
    /* The address register reads back (Linux's probe of mechanism #1 checks that). */
    io_out(vm, 0xcf8, 4, 0x80000000u);
    assert_int_equal(io_in(vm, 0xcf8, 4), 0x80000000u);
    /* The identification is read-only. */
    cfg_write(vm, 1, 0x00, 0x12345678);
    assert_int_equal(cfg_read(vm, 1, 0x00), 0x10001af4);
    /* BAR0: pre-assigned, sized the standard way, an I/O BAR whatever is written, and movable. */
    assert_int_equal(cfg_read(vm, 1, 0x10), IO_BASE | 1);
    cfg_write(vm, 1, 0x10, 0xffffffff);
    assert_int_equal(cfg_read(vm, 1, 0x10), 0xffe1); /* 32 bytes of I/O */
    cfg_write(vm, 1, 0x10, 0xd000);
    assert_int_equal(cfg_read(vm, 1, 0x10), 0xd001);
    assert_int_equal(io_in(vm, 0xd000 + 20, 1), 0x52); /* the MAC's first byte, at the new place */
    uint8_t d[1];
    assert_false(pci_io(vm->pci, IO_BASE + 20, 1, false, d));
    /* I/O decoding off: the window is gone. */
    cfg_write(vm, 1, 0x04, 0);
    assert_false(pci_io(vm->pci, 0xd000 + 20, 1, false, d));
    cfg_write(vm, 1, 0x04, 1);
    cfg_write(vm, 1, 0x10, IO_BASE);
    assert_int_equal(io_in(vm, IO_BASE + 20, 1), 0x52);
    /* Below the PCI window nothing is claimed (the serial port and the PIT live there). */
    assert_false(pci_io(vm->pci, 0x3f8, 1, false, d));
    assert_int_equal(pci_slot_gsi(1), 16);
    assert_true(pci_slot_has_intx(vm->pci, 1));
    assert_false(pci_slot_has_intx(vm->pci, 0));
}

static void test_registers(void **state)
{
    Fixture *f = *state;
    Vm *vm = f->vm;

    driver_init(vm);
    assert_int_equal(io_in(vm, IO_BASE + 18, 1), 7);
    io_out(vm, IO_BASE + 14, 2, 1);
    assert_int_equal(io_in(vm, IO_BASE + 8, 4), TXQ_PFN);
    io_out(vm, IO_BASE + 14, 2, 2);
    assert_int_equal(io_in(vm, IO_BASE + 12, 2), 0); /* no third queue (no control queue offered) */
    /* The configuration: the MAC, then the link status (up). */
    for (unsigned i = 0; i < 6; i++) {
        assert_int_equal(io_in(vm, IO_BASE + 20 + i, 1), nic_cfg.ident.mac[i]);
    }
    assert_int_equal(io_in(vm, IO_BASE + 26, 2), 1);
    /* Features the device did not offer cannot be taken. */
    io_out(vm, IO_BASE + 4, 4, 0xffffffff);
    assert_int_equal(io_in(vm, IO_BASE + 4, 4), io_in(vm, IO_BASE + 0, 4));
    /* Reset forgets everything. */
    io_out(vm, IO_BASE + 18, 1, 0);
    assert_int_equal(io_in(vm, IO_BASE + 18, 1), 0);
    assert_int_equal(io_in(vm, IO_BASE + 4, 4), 0);
    io_out(vm, IO_BASE + 14, 2, 0);
    assert_int_equal(io_in(vm, IO_BASE + 8, 4), 0);
    /* A queue outside RAM is refused (the device stops using its queues and says why). */
    io_out(vm, IO_BASE + 8, 4, 0x100000); /* 4 GiB */
    assert_int_equal(io_in(vm, IO_BASE + 8, 4), 0);
    json_t *o = virtio_net_query(f->n);
    assert_non_null(json_object_get(o, "error"));
    json_decref(o);
}

static void test_transmit(void **state)
{
    Fixture *f = *state;
    Vm *vm = f->vm;
    uint8_t frame[60], got[200];
    uint32_t id, len;

    driver_init(vm);
    for (unsigned i = 0; i < sizeof(frame); i++) {
        frame[i] = (uint8_t)(i * 7);
    }
    /* A chain of the header and the frame in two pieces, as Linux's driver queues a frame without ANY_LAYOUT. */
    memset(gpa(vm, 0x200000), 0, 10);
    memcpy(gpa(vm, 0x201000), frame, 20);
    memcpy(gpa(vm, 0x202000), frame + 20, 40);
    put_desc(vm, TXQ_PFN, 5, 0x200000, 10, 1, 9);
    put_desc(vm, TXQ_PFN, 9, 0x201000, 20, 1, 2);
    put_desc(vm, TXQ_PFN, 2, 0x202000, 40, 0, 0);
    make_avail(vm, TXQ_PFN, 0, 5);
    assert_false(irq_pending(vm));
    io_out(vm, IO_BASE + 16, 2, 1); /* notify the transmit queue: sent before the OUT returns */
    ssize_t r = recv(f->peer, got, sizeof(got), MSG_DONTWAIT);
    assert_int_equal(r, sizeof(frame));
    assert_memory_equal(got, frame, sizeof(frame));
    assert_int_equal(used_idx(vm, TXQ_PFN), 1);
    used_elem(vm, TXQ_PFN, 0, &id, &len);
    assert_int_equal(id, 5);
    /* The interrupt: raised, and acknowledged by reading the ISR, which clears it and lowers the line. */
    assert_true(irq_pending(vm));
    assert_int_equal(io_in(vm, IO_BASE + 19, 1), 1);
    assert_false(irq_pending(vm));
    assert_int_equal(io_in(vm, IO_BASE + 19, 1), 0);
    assert_int_equal(counter(f->n, "tx-frames"), 1);
    assert_int_equal(counter(f->n, "tx-bytes"), sizeof(frame));
    /* The guest asked for no interrupt (VRING_AVAIL_F_NO_INTERRUPT): the frame goes, the line stays low. */
    vm_wr16(gpa(vm, TXQ_PFN * 4096u + AVAIL_OFF), 1);
    put_desc(vm, TXQ_PFN, 7, 0x200000, 70, 0, 0); /* header and frame in one buffer */
    memcpy(gpa(vm, 0x200000 + 10), frame, sizeof(frame));
    make_avail(vm, TXQ_PFN, 1, 7);
    io_out(vm, IO_BASE + 16, 2, 1);
    assert_int_equal(recv(f->peer, got, sizeof(got), MSG_DONTWAIT), sizeof(frame));
    assert_int_equal(used_idx(vm, TXQ_PFN), 2);
    assert_false(irq_pending(vm));
}

static void test_receive(void **state)
{
    Fixture *f = *state;
    Vm *vm = f->vm;
    uint8_t frame[100];
    uint32_t id, len;

    driver_init(vm);
    assert_true(virtio_net_start_thread(f->n, NULL));
    virtio_net_start(f->n);
    for (unsigned i = 0; i < sizeof(frame); i++) {
        frame[i] = (uint8_t)(0xa0 + i);
    }
    /* A frame that arrives before the guest has a buffer waits in the "TAP". */
    assert_int_equal(send(f->peer, frame, sizeof(frame), 0), sizeof(frame));
    usleep(50000);
    assert_int_equal(used_idx(vm, RXQ_PFN), 0);
    /* A chain of two writable buffers, the first shorter than the header. */
    memset(gpa(vm, 0x300000), 0xee, 4096);
    memset(gpa(vm, 0x301000), 0xee, 4096);
    put_desc(vm, RXQ_PFN, 3, 0x300000, 6, 1 | 2, 4);
    put_desc(vm, RXQ_PFN, 4, 0x301000, 1600, 2, 0);
    make_avail(vm, RXQ_PFN, 0, 3);
    io_out(vm, IO_BASE + 16, 2, 0);
    assert_true(wait_used(vm, RXQ_PFN, 1, 5000));
    used_elem(vm, RXQ_PFN, 0, &id, &len);
    assert_int_equal(id, 3);
    assert_int_equal(len, 10 + sizeof(frame));
    uint8_t zero[10] = { 0 };
    assert_memory_equal(gpa(vm, 0x300000), zero, 6);
    assert_memory_equal(gpa(vm, 0x301000), zero, 4);
    assert_memory_equal(gpa(vm, 0x301000 + 4), frame, sizeof(frame));
    assert_int_equal(*gpa(vm, 0x301000 + 4 + sizeof(frame)), 0xee);
    assert_true(irq_pending(vm));
    assert_int_equal(counter(f->n, "rx-frames"), 1);

    /* Stopped, the device reads nothing and writes no guest memory; started again, the frame comes. */
    virtio_net_stop(f->n);
    put_desc(vm, RXQ_PFN, 8, 0x302000, 1600, 2, 0);
    make_avail(vm, RXQ_PFN, 1, 8);
    io_out(vm, IO_BASE + 16, 2, 0);
    assert_int_equal(send(f->peer, frame, sizeof(frame), 0), sizeof(frame));
    usleep(100000);
    assert_int_equal(used_idx(vm, RXQ_PFN), 1);
    virtio_net_start(f->n);
    assert_true(wait_used(vm, RXQ_PFN, 2, 5000));

    /* A frame larger than the buffer is dropped, counted, and the buffer given back empty. */
    put_desc(vm, RXQ_PFN, 11, 0x303000, 50, 2, 0);
    make_avail(vm, RXQ_PFN, 2, 11);
    io_out(vm, IO_BASE + 16, 2, 0);
    assert_int_equal(send(f->peer, frame, sizeof(frame), 0), sizeof(frame));
    assert_true(wait_used(vm, RXQ_PFN, 3, 5000));
    used_elem(vm, RXQ_PFN, 2, &id, &len);
    assert_int_equal(id, 11);
    assert_int_equal(len, 0);
    assert_int_equal(counter(f->n, "dropped"), 1);
    assert_int_equal(counter(f->n, "rx-frames"), 2);
    virtio_net_stop(f->n);
}

static void test_bad_descriptor(void **state)
{
    Fixture *f = *state;
    Vm *vm = f->vm;
    char got[64];

    driver_init(vm);
    put_desc(vm, TXQ_PFN, 0, RAM - 8, 64, 0, 0); /* runs past the end of RAM */
    make_avail(vm, TXQ_PFN, 0, 0);
    io_out(vm, IO_BASE + 16, 2, 1);
    assert_int_equal(recv(f->peer, got, sizeof(got), MSG_DONTWAIT), -1);
    assert_int_equal(used_idx(vm, TXQ_PFN), 0);
    json_t *o = virtio_net_query(f->n);
    assert_non_null(strstr(json_string_value(json_object_get(o, "error")), "not guest RAM"));
    json_decref(o);
    /* A looping chain is refused too, after a reset (which clears the broken state). */
    driver_init(vm);
    put_desc(vm, TXQ_PFN, 0, 0x200000, 10, 1, 1);
    put_desc(vm, TXQ_PFN, 1, 0x200000, 10, 1, 0);
    make_avail(vm, TXQ_PFN, 0, 0);
    io_out(vm, IO_BASE + 16, 2, 1);
    o = virtio_net_query(f->n);
    assert_non_null(strstr(json_string_value(json_object_get(o, "error")), "loops"));
    json_decref(o);
}

/* @src's state loaded into a fresh device of @cfg on a machine of its own: refused, with @why in the message. */
static void assert_refused(VirtioNet *src, const NetConfig *cfg, const char *why)
{
    Vm *vm = bare_vm();
    FerryError *err = NULL;
    VirtioNet *n = virtio_net_new(vm, cfg, 0, NULL);

    assert_non_null(n);
    vm->nics[vm->nnics++] = n;
    assert_false(section_roundtrip(virtio_net_section, src, n, &err));
    assert_non_null(strstr(ferry_error_msg(err), why));
    ferry_error_free(err);
    bare_vm_free(vm);
}

static void test_state_roundtrip(void **state)
{
    Fixture *f = *state;
    Vm *vm = f->vm;
    Vm *vm2 = bare_vm();
    FerryError *err = NULL;
    uint8_t frame[60] = { 1, 2, 3 }, got[100];
    int sv[2];

    driver_init(vm);
    cfg_write(vm, 1, 0x10, 0xd000); /* the guest moved the BAR */
    put_desc(vm, TXQ_PFN, 0, 0x200000, 70, 0, 0);
    memset(gpa(vm, 0x200000), 0, 10);
    memcpy(gpa(vm, 0x200000 + 10), frame, sizeof(frame));
    make_avail(vm, TXQ_PFN, 0, 0);
    io_out(vm, 0xd000 + 16, 2, 1);
    assert_int_equal(recv(f->peer, got, sizeof(got), MSG_DONTWAIT), sizeof(frame));
    assert_true(irq_pending(vm)); /* saved with the interrupt pending */

    VirtioNet *n2 = virtio_net_new(vm2, &nic_cfg, 0, NULL);
    assert_non_null(n2);
    vm2->nics[vm2->nnics++] = n2;
    memcpy(vm2->ram_host, vm->ram_host, RAM); /* what the RAM migration does */
    assert_true(section_roundtrip(pci_section, vm->pci, vm2->pci, NULL));
    assert_true(section_roundtrip(virtio_net_section, f->n, n2, NULL));
    /* The destination's device is where the source's was: BAR, registers, queues, interrupt, counters. */
    assert_int_equal(cfg_read(vm2, 1, 0x10), 0xd001);
    assert_int_equal(io_in(vm2, 0xd000 + 18, 1), 7);
    io_out(vm2, 0xd000 + 14, 2, 1);
    assert_int_equal(io_in(vm2, 0xd000 + 8, 4), TXQ_PFN);
    assert_true(irq_pending(vm2));
    assert_int_equal(io_in(vm2, 0xd000 + 19, 1), 1);
    assert_false(irq_pending(vm2));
    assert_int_equal(counter(n2, "tx-frames"), 1);
    /* It goes on with the next available entry, not the first again. */
    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    assert_int_equal(fcntl(sv[0], F_SETFL, O_NONBLOCK), 0);
    assert_true(virtio_net_attach_fd(n2, sv[0], NULL));
    frame[0] = 9;
    memcpy(gpa(vm2, 0x200000 + 10), frame, sizeof(frame));
    put_desc(vm2, TXQ_PFN, 1, 0x200000, 70, 0, 0);
    make_avail(vm2, TXQ_PFN, 1, 1);
    io_out(vm2, 0xd000 + 16, 2, 1);
    assert_int_equal(recv(sv[1], got, sizeof(got), MSG_DONTWAIT), sizeof(frame));
    assert_int_equal(got[0], 9);
    assert_int_equal(recv(sv[1], got, sizeof(got), MSG_DONTWAIT), -1);
    assert_int_equal(used_idx(vm2, TXQ_PFN), 2);
    assert_int_equal(counter(n2, "tx-frames"), 2);
    close(sv[1]);

    /* Refused: a device on another netdev, or with another MAC. */
    NetConfig other = nic_cfg;
    strcpy(other.id, "n1");
    assert_refused(f->n, &other, "netdev 'n0'");
    other = nic_cfg;
    other.ident.mac[5] = 0x57;
    assert_refused(f->n, &other, "mac 52:54:00:12:34:56");
    /* A machine without the NIC refuses the bus. */
    Vm *vm5 = bare_vm();
    assert_false(section_roundtrip(pci_section, vm->pci, vm5->pci, &err));
    assert_non_null(strstr(ferry_error_msg(err), "devices"));
    ferry_error_free(err);
    bare_vm_free(vm5);
    bare_vm_free(vm2);
}

/* A device of @cfg on a machine of its own, for loading another device's state into. */
static VirtioNet *new_device(const NetConfig *cfg, Vm **vm)
{
    VirtioNet *n;

    *vm = bare_vm();
    n = virtio_net_new(*vm, cfg, 0, NULL);
    assert_non_null(n);
    (*vm)->nics[(*vm)->nnics++] = n;
    return n;
}

static const uint8_t clone_mac[6] = { 0x52, 0x54, 0x00, 0x00, 0x00, 0x02 };

/* Snapshot clones: the state of a device with one MAC loaded into a device with another. */
static void test_restore_mac(void **state)
{
    Fixture *f = *state;
    FerryError *err = NULL;
    NetConfig cfg = nic_cfg;
    Vm *vm2, *vm3;
    char mac[18];

    driver_init(f->vm);
    memcpy(cfg.ident.mac, clone_mac, 6);
    /* restore-mac=saved (the default, NetConfig's zero): refused, and the message names the way out. */
    assert_int_equal(cfg.restore_mac, NET_RESTORE_MAC_SAVED);
    assert_refused(f->n, &cfg, "has mac 52:54:00:12:34:56, this device has mac=52:54:00:00:00:02");
    assert_refused(f->n, &cfg, "restore-mac=keep");

    /* restore-mac=keep: taken; the device keeps its own MAC, and that is what the guest reads in the
     * configuration space, what query-netdev shows and what the device's own state carries on. */
    cfg.restore_mac = NET_RESTORE_MAC_KEEP;
    VirtioNet *n2 = new_device(&cfg, &vm2);
    memcpy(vm2->ram_host, f->vm->ram_host, RAM);
    assert_true(section_roundtrip(virtio_net_section, f->n, n2, &err));
    assert_null(err);
    for (unsigned i = 0; i < 6; i++) {
        assert_int_equal(io_in(vm2, IO_BASE + 20 + i, 1), clone_mac[i]);
    }
    assert_int_equal(io_in(vm2, IO_BASE + 26, 2), 1);  /* link up */
    assert_int_equal(io_in(vm2, IO_BASE + 18, 1), 7);  /* the rest of the state did arrive */
    io_out(vm2, IO_BASE + 14, 2, 1);
    assert_int_equal(io_in(vm2, IO_BASE + 8, 4), TXQ_PFN);
    json_t *o = virtio_net_query(n2);
    net_format_mac(clone_mac, mac);
    assert_string_equal(json_string_value(json_object_get(o, "mac")), mac);
    assert_string_equal(json_string_value(json_object_get(o, "restore-mac")), "keep");
    json_decref(o);
    o = virtio_net_query(f->n);
    assert_string_equal(json_string_value(json_object_get(o, "restore-mac")), "saved");
    json_decref(o);
    /* The clone's state has the clone's MAC: it migrates on to a device with that MAC under the default. */
    cfg.restore_mac = NET_RESTORE_MAC_SAVED;
    VirtioNet *n3 = new_device(&cfg, &vm3);
    assert_true(section_roundtrip(virtio_net_section, n2, n3, NULL));
    for (unsigned i = 0; i < 6; i++) {
        assert_int_equal(io_in(vm3, IO_BASE + 20 + i, 1), clone_mac[i]);
    }
    /* keep does not take another netdev's state. */
    cfg.restore_mac = NET_RESTORE_MAC_KEEP;
    strcpy(cfg.id, "n1");
    assert_refused(f->n, &cfg, "netdev 'n0'");
    bare_vm_free(vm3);
    bare_vm_free(vm2);
}

/* Parse one -device for ferry-vm (a guest's NIC) or ferry-workload after -netdev tap,id=n0; NULL if taken, else
 * the error message (the caller frees it with free()). */
static char *parse_device(bool guest_nic, const char *arg, NetConfig *out)
{
    NetSetup setup = { .guest_nic = guest_nic };
    FerryError *err = NULL;

    assert_true(net_parse_netdev(&setup, "tap,id=n0,ifname=ftap0", NULL));
    if (!net_parse_device(&setup, arg, &err)) {
        char *msg = strdup(ferry_error_msg(err));
        ferry_error_free(err);
        return msg;
    }
    *out = setup.cfg[0];
    return NULL;
}

static void assert_parse_refused(bool guest_nic, const char *arg, const char *why)
{
    NetConfig c;
    char *msg = parse_device(guest_nic, arg, &c);

    assert_non_null(msg);
    if (!strstr(msg, why)) {
        fail_msg("'%s' was refused with '%s', which does not say '%s'", arg, msg, why);
    }
    free(msg);
}

static void test_restore_mac_option(void **state)
{
    NetConfig c;

    (void)state;
    assert_null(parse_device(true, "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:02,restore-mac=keep", &c));
    assert_int_equal(c.restore_mac, NET_RESTORE_MAC_KEEP);
    assert_memory_equal(c.ident.mac, clone_mac, 6);
    assert_null(parse_device(true, "virtio-net-pci,netdev=n0,restore-mac=saved", &c));
    assert_int_equal(c.restore_mac, NET_RESTORE_MAC_SAVED);
    assert_null(parse_device(true, "virtio-net-pci,netdev=n0", &c));
    assert_int_equal(c.restore_mac, NET_RESTORE_MAC_SAVED);
    /* Bad values name the property and what it takes. */
    assert_parse_refused(true, "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:02,restore-mac=new",
                         "restore-mac 'new' is not one of saved, keep");
    assert_parse_refused(true, "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:02,restore-mac=",
                         "restore-mac '' is not one of saved, keep");
    assert_parse_refused(true, "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:02,restore-mac=KEEP",
                         "restore-mac 'KEEP' is not one of saved, keep");
    assert_parse_refused(true, "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:02,restore-mac",
                         "'restore-mac' needs a value");
    /* keep without mac= would give every clone the default MAC. */
    assert_parse_refused(true, "virtio-net-pci,netdev=n0,restore-mac=keep", "restore-mac=keep needs mac=");
    /* ferry-workload's device has no guest: the property is not one of its. */
    assert_parse_refused(false, "virtio-net,netdev=n0,mac=52:54:00:00:00:02,ip=10.0.0.2,restore-mac=keep",
                         "unknown property 'restore-mac' (netdev, mac, ip, id)");
    assert_parse_refused(true, "virtio-net-pci,netdev=n0,ip=10.0.0.2",
                         "unknown property 'ip' (netdev, mac, restore-mac, id)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_config_space, setup, teardown),
        cmocka_unit_test_setup_teardown(test_registers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transmit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_receive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_descriptor, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restore_mac, setup, teardown),
        cmocka_unit_test(test_restore_mac_option),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
