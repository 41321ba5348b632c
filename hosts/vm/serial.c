/*
 * The serial port: a 16550A UART at 0x3f8 (COM1, IRQ 4) as far as a guest console needs it. Output is written at
 * once (the transmitter is always empty, so LSR always shows THRE and TEMT); input comes from a thread reading
 * stdin into the 16-byte receive FIFO, which waits while the FIFO is full (no byte is dropped) or the machine is
 * not running. The interrupt line is level-triggered on the in-kernel irqchip, raised while any enabled
 * condition holds (received data, transmitter empty, modem status change), as the 16550's INTR pin is.
 *
 * Not modelled: baud rates (the divisor latch is stored and read back, nothing is timed), line errors, loopback
 * (MCR bit 4 is stored only), the transmit FIFO and the FIFO trigger levels (an interrupt is raised for any
 * received byte). The registers and the receive FIFO are the "serial" section: a migrated guest's console goes on
 * where it stopped, on the destination's output.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "vm.h"

/* Register offsets and bits, from the 16550 data sheet. */
enum { RBR_THR = 0, IER = 1, IIR_FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7 };
#define IER_RDI 0x01u
#define IER_THRI 0x02u
#define IER_MSI 0x08u
#define IIR_NONE 0x01u
#define IIR_THRI 0x02u
#define IIR_RDI 0x04u
#define IIR_MSI 0x00u
#define IIR_FIFO 0xc0u
#define FCR_ENABLE 0x01u
#define FCR_CLEAR_RX 0x02u
#define LCR_DLAB 0x80u
#define LSR_DR 0x01u
#define LSR_THRE 0x20u
#define LSR_TEMT 0x40u
#define MSR_DELTA 0x0fu
/* DCD, DSR and CTS asserted: a terminal is attached and ready. */
#define MSR_LINES 0xb0u

struct Serial {
    Vm *vm;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    SerialRegs r;
    bool irq_level;
    int out_fd;
    bool own_fd;
    int in_fd;
    pthread_t in_thread;
    bool in_started, quit;
    _Atomic uint64_t bytes_out;
};

Serial *serial_new(Vm *vm, int out_fd, bool own_fd, int in_fd)
{
    Serial *s = calloc(1, sizeof(*s));

    if (!s) {
        return NULL;
    }
    s->vm = vm;
    s->out_fd = out_fd;
    s->own_fd = own_fd;
    s->in_fd = in_fd;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->r.lsr = LSR_THRE | LSR_TEMT;
    s->r.msr = MSR_LINES;
    s->r.iir_thri = 0;
    s->r.dll = 12; /* 9600 baud, the reset value PC firmware leaves */
    return s;
}

/* The interrupt identification, in the 16550's priority order. Caller holds the lock. */
static uint8_t pending_iir(const Serial *s)
{
    if ((s->r.ier & IER_RDI) && s->r.rx_count) {
        return IIR_RDI;
    }
    if ((s->r.ier & IER_THRI) && s->r.iir_thri) {
        return IIR_THRI;
    }
    if ((s->r.ier & IER_MSI) && (s->r.msr & MSR_DELTA)) {
        return IIR_MSI;
    }
    return IIR_NONE;
}

/* Drive IRQ 4 to what the registers say. Caller holds the lock. */
static void update_irq(Serial *s)
{
    bool level = pending_iir(s) != IIR_NONE;

    if (level != s->irq_level && s->vm && s->vm->vm_fd >= 0) {
        struct kvm_irq_level irq = { .irq = VM_COM1_IRQ, .level = level };

        ioctl(s->vm->vm_fd, KVM_IRQ_LINE, &irq);
    }
    s->irq_level = level;
}

static void output(Serial *s, uint8_t c)
{
    if (s->out_fd >= 0) {
        ssize_t r;

        do {
            r = write(s->out_fd, &c, 1);
        } while (r < 0 && errno == EINTR);
    }
    atomic_fetch_add_explicit(&s->bytes_out, 1, memory_order_relaxed);
}

void serial_io(Serial *s, unsigned offset, bool is_write, uint8_t *val)
{
    SerialRegs *r = &s->r;
    bool dlab;

    pthread_mutex_lock(&s->lock);
    dlab = r->lcr & LCR_DLAB;
    if (is_write) {
        uint8_t v = *val;

        switch (offset) {
        case RBR_THR:
            if (dlab) {
                r->dll = v;
                break;
            }
            output(s, v);
            r->iir_thri = 1;
            break;
        case IER:
            if (dlab) {
                r->dlm = v;
                break;
            }
            /* Enabling the THR interrupt with the transmitter empty raises it at once, as on the chip. */
            if (!(r->ier & IER_THRI) && (v & IER_THRI)) {
                r->iir_thri = 1;
            }
            r->ier = v & 0x0f;
            break;
        case IIR_FCR:
            r->fcr = v & 0xc9;
            if (v & FCR_CLEAR_RX) {
                r->rx_count = 0;
                r->rx_head = 0;
                pthread_cond_broadcast(&s->cond);
            }
            break;
        case LCR:
            r->lcr = v;
            break;
        case MCR:
            r->mcr = v & 0x1f;
            break;
        case LSR:
        case MSR:
            break; /* read-only */
        case SCR:
            r->scr = v;
            break;
        }
    } else {
        switch (offset) {
        case RBR_THR:
            if (dlab) {
                *val = r->dll;
                break;
            }
            *val = 0;
            if (r->rx_count) {
                *val = r->rx[r->rx_head];
                r->rx_head = (r->rx_head + 1) % SERIAL_FIFO;
                r->rx_count--;
                pthread_cond_broadcast(&s->cond);
            }
            break;
        case IER:
            *val = dlab ? r->dlm : r->ier;
            break;
        case IIR_FCR: {
            uint8_t iir = pending_iir(s);

            /* Reading IIR while it reports THRE clears that condition. */
            if (iir == IIR_THRI) {
                r->iir_thri = 0;
            }
            *val = iir | ((r->fcr & FCR_ENABLE) ? IIR_FIFO : 0);
            break;
        }
        case LCR:
            *val = r->lcr;
            break;
        case MCR:
            *val = r->mcr;
            break;
        case LSR:
            *val = (uint8_t)((r->rx_count ? LSR_DR : 0) | LSR_THRE | LSR_TEMT);
            break;
        case MSR:
            *val = r->msr;
            r->msr &= ~MSR_DELTA;
            break;
        case SCR:
            *val = r->scr;
            break;
        }
    }
    update_irq(s);
    pthread_mutex_unlock(&s->lock);
}

static void *input_main(void *arg)
{
    Serial *s = arg;
    uint8_t buf[64];

    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
    for (;;) {
        ssize_t n;

        /* Cancellation (serial_free) may end the thread in read(2) only, never while it holds the lock. */
        pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
        n = read(s->in_fd, buf, sizeof(buf));
        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return NULL; /* end of input: the line stays quiet */
        }
        pthread_mutex_lock(&s->lock);
        for (ssize_t i = 0; i < n; i++) {
            while (!s->quit && s->r.rx_count == SERIAL_FIFO) {
                pthread_cond_wait(&s->cond, &s->lock);
            }
            if (s->quit) {
                pthread_mutex_unlock(&s->lock);
                return NULL;
            }
            s->r.rx[(s->r.rx_head + s->r.rx_count) % SERIAL_FIFO] = buf[i];
            s->r.rx_count++;
            update_irq(s);
        }
        pthread_mutex_unlock(&s->lock);
    }
}

bool serial_start_input(Serial *s, FerryError **errp)
{
    int err;

    if (s->in_fd < 0) {
        return true;
    }
    err = pthread_create(&s->in_thread, NULL, input_main, s);
    if (err) {
        ferry_error_setg_errno(errp, err, "creating the serial input thread");
        return false;
    }
    s->in_started = true;
    return true;
}

void serial_free(Serial *s)
{
    if (!s) {
        return;
    }
    if (s->in_started) {
        pthread_mutex_lock(&s->lock);
        s->quit = true;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
        /* The thread may sit in read(2) on a terminal that never speaks again: it is cancelled there (read is a
         * cancellation point) rather than waited for. */
        pthread_cancel(s->in_thread);
        pthread_join(s->in_thread, NULL);
    }
    if (s->own_fd && s->out_fd >= 0) {
        close(s->out_fd);
    }
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

uint64_t serial_bytes_out(Serial *s)
{
    return atomic_load_explicit(&s->bytes_out, memory_order_relaxed);
}

void serial_get_regs(Serial *s, SerialRegs *r)
{
    pthread_mutex_lock(&s->lock);
    *r = s->r;
    pthread_mutex_unlock(&s->lock);
}

void serial_set_regs(Serial *s, const SerialRegs *r)
{
    pthread_mutex_lock(&s->lock);
    s->r = *r;
    pthread_cond_broadcast(&s->cond);
    update_irq(s);
    pthread_mutex_unlock(&s->lock);
}

bool serial_visit(FerryVisitor *v, SerialRegs *r, FerryError **errp)
{
    uint8_t fifo[SERIAL_FIFO];
    uint32_t n = r->rx_count;

    /* The FIFO travels in order, oldest byte first, so that the ring's position is not part of the format. */
    for (uint32_t i = 0; i < n && i < SERIAL_FIFO; i++) {
        fifo[i] = r->rx[(r->rx_head + i) % SERIAL_FIFO];
    }
    if (!ferry_visit_u8(v, "ier", &r->ier, errp) || !ferry_visit_u8(v, "thr-interrupt", &r->iir_thri, errp) ||
        !ferry_visit_u8(v, "lcr", &r->lcr, errp) || !ferry_visit_u8(v, "mcr", &r->mcr, errp) ||
        !ferry_visit_u8(v, "lsr", &r->lsr, errp) || !ferry_visit_u8(v, "msr", &r->msr, errp) ||
        !ferry_visit_u8(v, "scr", &r->scr, errp) || !ferry_visit_u8(v, "dll", &r->dll, errp) ||
        !ferry_visit_u8(v, "dlm", &r->dlm, errp) || !ferry_visit_u8(v, "fcr", &r->fcr, errp) ||
        !ferry_visit_start_list(v, "rx-fifo", &n, SERIAL_FIFO, errp)) {
        return false;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (!ferry_visit_u8(v, "byte", &fifo[i], errp)) {
            return false;
        }
    }
    if (!ferry_visit_end_list(v, errp)) {
        return false;
    }
    if (ferry_visitor_kind(v) == FERRY_VISITOR_INPUT) {
        memcpy(r->rx, fifo, n);
        r->rx_head = 0;
        r->rx_count = n;
    }
    return true;
}

bool serial_section(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    Serial *s = opaque;
    bool load = ferry_visitor_kind(v) == FERRY_VISITOR_INPUT;
    SerialRegs r;

    if (load && version != 1) {
        ferry_error_setg(errp, "serial state version %" PRIu32 " is not supported (this program reads version 1)",
                         version);
        return false;
    }
    serial_get_regs(s, &r);
    if (!ferry_visit_start_struct(v, "serial", errp) || !serial_visit(v, &r, errp) ||
        !ferry_visit_end_struct(v, errp)) {
        return false;
    }
    if (load) {
        serial_set_regs(s, &r);
    }
    return true;
}
