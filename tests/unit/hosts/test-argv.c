/*
 * Unit tests of the host programs' shared command line and main() (hosts/common/argv.c) with a made-up program:
 * the shared options land in HostArgs, the program's own ones (with an argument or without) reach its callback,
 * everything else goes to the host runtime; -opt and --opt; the exit codes and messages of a refused command
 * line; the checks after the options (memory backend, NICs, the program's finish); and main()'s order on the way
 * out. The real programs' command lines are tested in test_cmdline.py and test_vm.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "argv.h"

#define MAX_CALLS 8

typedef struct Prog {
    HostArgs args;
    unsigned usage_calls;
    char opts[MAX_CALLS][32];  /* the own options the callback saw, "OPT=ARG" or "OPT" */
    unsigned nopts;
    unsigned finish_calls;
    bool finish_fails;
    bool setup_fails;
    char order[16];            /* main()'s callbacks in order: s(etup), t (stop), f(ree) */
} Prog;

static Prog *usage_prog;

static void usage(FILE *out)
{
    (void)out;
    usage_prog->usage_calls++;
}

static bool option(void *opaque, const char *opt, const char *arg, FerryError **errp)
{
    Prog *p = opaque;

    if (arg && strcmp(arg, "bad") == 0) {
        ferry_error_setg(errp, "%s: 'bad' is bad", opt);
        return false;
    }
    assert_true(p->nopts < MAX_CALLS);
    snprintf(p->opts[p->nopts++], sizeof(p->opts[0]), "%s%s%s", opt, arg ? "=" : "", arg ? arg : "");
    return true;
}

static bool finish(void *opaque, HostArgs *a, FerryError **errp)
{
    Prog *p = opaque;

    assert_ptr_equal(a, &p->args);
    p->finish_calls++;
    if (p->finish_fails) {
        ferry_error_setg(errp, "the program says no");
        return false;
    }
    return true;
}

static void append(Prog *p, char c)
{
    size_t n = strlen(p->order);

    p->order[n] = c;
    p->order[n + 1] = '\0';
}

static bool setup(void *opaque, FerryHost *host, FerryError **errp)
{
    Prog *p = opaque;

    (void)host;
    append(p, 's');
    if (p->setup_fails) {
        ferry_error_setg(errp, "no machine today");
        return false;
    }
    return true;
}

static void stop(void *opaque)
{
    append(opaque, 't');
}

static void do_free(void *opaque)
{
    append(opaque, 'f');
}

static const char *const with_arg[] = { "-pattern", "-seed", NULL };
static const char *const flags[] = { "-nographic", NULL };

static const HostProgram program = {
    .name = "ferry-test",
    .usage = usage,
    .ram_min_mib = 2,
    .smp_max = 8,
    .smp_unit = "workers",
    .with_arg = with_arg,
    .flags = flags,
    .option = option,
    .finish = finish,
    .setup = setup,
    .stop = stop,
    .free = do_free,
};

static void prog_init(Prog *p)
{
    memset(p, 0, sizeof(*p));
    p->args.ram.size = UINT64_C(128) << 20;
    p->args.smp = 1;
    usage_prog = p;
}

/* Run host_args_parse on a fresh host with @argv (NULL-terminated, without the program name); *stderr_out gets
 * what it printed (malloc'd). */
static int parse(Prog *p, const char *const *argv, bool *incoming, char **stderr_out)
{
    char *av[32] = { "ferry-test" };
    int ac = 1, saved = dup(STDERR_FILENO), status;
    FILE *cap = tmpfile();
    FerryHost *host = ferry_host_new("ferry-test", NULL);
    long len;

    assert_non_null(host);
    assert_non_null(cap);
    for (; argv[ac - 1]; ac++) {
        av[ac] = (char *)argv[ac - 1];
    }
    fflush(stderr);
    dup2(fileno(cap), STDERR_FILENO);
    status = host_args_parse(&program, p, &p->args, host, ac, av);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    if (incoming) {
        *incoming = ferry_host_incoming(host);
    }
    ferry_host_free(host);
    len = ftell(cap);
    *stderr_out = calloc(1, (size_t)len + 1);
    rewind(cap);
    assert_int_equal(fread(*stderr_out, 1, (size_t)len, cap), (size_t)len);
    fclose(cap);
    return status;
}

/* @argv is refused with @status and a message that contains @text. */
static void refused(const char *const *argv, int status, const char *text)
{
    Prog p;
    char *err;

    prog_init(&p);
    assert_int_equal(parse(&p, argv, NULL, &err), status);
    if (!strstr(err, text)) {
        fail_msg("'%s' not in '%s'", text, err);
    }
    free(err);
}

static void test_shared_and_own(void **state)
{
    static const char *const argv[] = {
        "-m", "64M", "--smp", "3", "-mem-prealloc", "-pattern", "ab", "--nographic", "-seed", "7",
        "-netdev", "tap,id=n0,ifname=ft0", "-device", "virtio-net,netdev=n0,ip=10.0.0.2", "-incoming", "defer",
        NULL,
    };
    Prog p;
    char *err;
    bool incoming;

    (void)state;
    prog_init(&p);
    assert_int_equal(parse(&p, argv, &incoming, &err), -1);
    assert_string_equal(err, "");
    free(err);
    assert_int_equal(p.args.ram.size, UINT64_C(64) << 20);
    assert_true(p.args.m_given);
    assert_int_equal(p.args.smp, 3);
    assert_true(p.args.ram.prealloc);
    assert_int_equal(p.args.ram.prealloc_threads, 3); /* -mem-prealloc: one per -smp, as QEMU */
    assert_false(p.args.ram.memfd);
    assert_int_equal(p.args.net.n, 1);
    assert_string_equal(p.args.net.cfg[0].ifname, "ft0");
    assert_true(incoming); /* the host runtime's option */
    assert_int_equal(p.nopts, 3);
    assert_string_equal(p.opts[0], "-pattern=ab");
    assert_string_equal(p.opts[1], "-nographic");
    assert_string_equal(p.opts[2], "-seed=7");
    assert_int_equal(p.finish_calls, 1);
}

/* -object memory-backend-* and -machine choose the RAM; -mem-prealloc and prealloc=on add up. */
static void test_memory_backend(void **state)
{
    static const char *const argv[] = {
        "-object", "memory-backend-memfd,id=m,size=8M,share=on", "-machine", "memory-backend=m", NULL,
    };
    Prog p;
    char *err;

    (void)state;
    prog_init(&p);
    assert_int_equal(parse(&p, argv, NULL, &err), -1);
    free(err);
    assert_int_equal(p.args.ram.size, UINT64_C(8) << 20);
    assert_true(p.args.ram.memfd);
    assert_true(p.args.ram.memfd_share);
    assert_false(p.args.ram.prealloc);
    assert_false(p.args.m_given);
}

/* memory-backend-memfd is shared unless share=off (QEMU's default); prealloc-threads= wins over -smp. */
static void test_memory_backend_defaults(void **state)
{
    static const char *const argv[] = {
        "-smp", "4", "-mem-prealloc", "-object", "memory-backend-memfd,id=m,size=8M,prealloc-threads=2",
        "-machine", "memory-backend=m", NULL,
    };
    static const char *const plain[] = { "-m", "8M", NULL };
    Prog p;
    char *err;

    (void)state;
    prog_init(&p);
    assert_int_equal(parse(&p, argv, NULL, &err), -1);
    free(err);
    assert_true(p.args.ram.memfd);
    assert_true(p.args.ram.memfd_share);
    assert_true(p.args.ram.prealloc);
    assert_int_equal(p.args.ram.prealloc_threads, 2);
    prog_init(&p);
    assert_int_equal(parse(&p, plain, NULL, &err), -1);
    free(err);
    assert_false(p.args.ram.prealloc);
    assert_int_equal(p.args.ram.prealloc_threads, 1);
    refused((const char *const[]){ "-object", "memory-backend-memfd,id=m,size=8M,prealloc-threads=0", NULL },
            HOST_EXIT_BAD_VALUE, "prealloc-threads '0' is not a number from 1 to 64");
    refused((const char *const[]){ "-object", "memory-backend-file,id=m,size=8M,mem-path=/x,prealloc-threads=a",
                                   NULL }, HOST_EXIT_BAD_VALUE, "prealloc-threads 'a'");
}

static void test_help(void **state)
{
    static const char *const argv[] = { "-m", "64M", "--help", "-frobnicate", NULL };
    Prog p;
    char *err;

    (void)state;
    prog_init(&p);
    assert_int_equal(parse(&p, argv, NULL, &err), EXIT_SUCCESS);
    free(err);
    assert_int_equal(p.usage_calls, 1);
    assert_int_equal(p.finish_calls, 0);
}

static void test_usage_errors(void **state)
{
    (void)state;
    refused((const char *const[]){ "-frobnicate", NULL }, HOST_EXIT_USAGE,
            "ferry-test: unknown option '-frobnicate' (try --help)\n");
    refused((const char *const[]){ "stray", NULL }, HOST_EXIT_USAGE,
            "ferry-test: unexpected argument 'stray' (try --help)\n");
    refused((const char *const[]){ "-m", NULL }, HOST_EXIT_USAGE, "ferry-test: option -m needs an argument");
    refused((const char *const[]){ "--seed", NULL }, HOST_EXIT_USAGE, "ferry-test: option -seed needs an argument");
}

static void test_bad_values(void **state)
{
    (void)state;
    refused((const char *const[]){ "-m", "1M", NULL }, HOST_EXIT_BAD_VALUE,
            "ferry-test: -m: '1M' is not a RAM size (a multiple of the ");
    refused((const char *const[]){ "-m", "1M", NULL }, HOST_EXIT_BAD_VALUE, "at least 2M");
    refused((const char *const[]){ "-m", "2049K", NULL }, HOST_EXIT_BAD_VALUE, "'2049K' is not a RAM size");
    refused((const char *const[]){ "-smp", "9", NULL }, HOST_EXIT_BAD_VALUE,
            "ferry-test: -smp: '9' is not a number of workers in 1..8\n");
    refused((const char *const[]){ "-smp", "0", NULL }, HOST_EXIT_BAD_VALUE, "'0' is not a number of workers");
    refused((const char *const[]){ "-seed", "bad", NULL }, HOST_EXIT_BAD_VALUE, "ferry-test: -seed: 'bad' is bad\n");
    refused((const char *const[]){ "-object", "memory-backend-epc,id=m,size=1M", NULL }, HOST_EXIT_BAD_VALUE,
            "unknown object type 'memory-backend-epc'");
    refused((const char *const[]){ "-netdev", "user,id=n0", NULL }, HOST_EXIT_BAD_VALUE, "'user'");
    refused((const char *const[]){ "-incoming", "bogus:1", NULL }, HOST_EXIT_BAD_VALUE, "bogus");
}

/* After the options: the backend and the NICs are checked before the program's finish, which is not called then. */
static void test_checks_after_options(void **state)
{
    Prog p;
    char *err;

    (void)state;
    refused((const char *const[]){ "-m", "64M", "-object", "memory-backend-memfd,id=m,size=32M", "-machine",
                                   "memory-backend=m", NULL },
            HOST_EXIT_BAD_VALUE, "does not match");
    refused((const char *const[]){ "-object", "memory-backend-memfd,id=m,size=32M", NULL }, HOST_EXIT_BAD_VALUE,
            "add -machine memory-backend=m");
    refused((const char *const[]){ "-netdev", "tap,id=n0,ifname=ft0", NULL }, HOST_EXIT_BAD_VALUE, "not used");

    prog_init(&p);
    p.finish_fails = true;
    assert_int_equal(parse(&p, (const char *const[]){ NULL }, NULL, &err), HOST_EXIT_BAD_VALUE);
    assert_string_equal(err, "ferry-test: the program says no\n");
    free(err);
    assert_int_equal(p.finish_calls, 1);

    prog_init(&p);
    assert_int_equal(parse(&p, (const char *const[]){ "-netdev", "tap,id=n0,ifname=ft0", NULL }, NULL, &err),
                     HOST_EXIT_BAD_VALUE);
    free(err);
    assert_int_equal(p.finish_calls, 0);
}

/* -monitor stdio goes to the host runtime, and the program learns the terminal is taken. */
static void test_monitor_stdio(void **state)
{
    Prog p;
    char *err;

    (void)state;
    prog_init(&p);
    assert_int_equal(parse(&p, (const char *const[]){ "-monitor", "stdio", NULL }, NULL, &err), -1);
    free(err);
    assert_true(p.args.monitor_stdio);
}

/* main(): a machine that fails to build is still stopped, then freed after the host; --help builds nothing. */
static void test_main_order(void **state)
{
    char *av[] = { "ferry-test", NULL, NULL };
    Prog p;
    int saved = dup(STDERR_FILENO);
    FILE *null = fopen("/dev/null", "w");

    (void)state;
    assert_non_null(null);
    prog_init(&p);
    p.setup_fails = true;
    fflush(stderr);
    dup2(fileno(null), STDERR_FILENO);
    assert_int_equal(host_main(&program, &p, &p.args, 1, av), EXIT_FAILURE);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    fclose(null);
    assert_string_equal(p.order, "stf");

    prog_init(&p);
    av[1] = "-h";
    assert_int_equal(host_main(&program, &p, &p.args, 2, av), EXIT_SUCCESS);
    assert_string_equal(p.order, "");
    assert_int_equal(p.usage_calls, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_and_own),
        cmocka_unit_test(test_memory_backend),
        cmocka_unit_test(test_memory_backend_defaults),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_checks_after_options),
        cmocka_unit_test(test_monitor_stdio),
        cmocka_unit_test(test_main_order),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
