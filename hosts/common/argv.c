/*
 * The host programs' shared command line and main() (argv.h): the walk over argv, the options both programs
 * take, the host runtime's options, and the life cycle around the program's machine. Moved from the programs'
 * main.c files unchanged in what they accept; -m's and -smp's messages now have one wording that names the
 * program's bounds. What an option of one program only means stays in that program.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "argv.h"

/* Print "PROG: message" for @err, free it, and return @status. */
static int report(const HostProgram *p, FerryError *err, int status)
{
    fprintf(stderr, "%s: %s\n", p->name, ferry_error_msg(err));
    ferry_error_free(err);
    return status;
}

static bool in_list(const char *const *list, const char *opt)
{
    for (; list && *list; list++) {
        if (strcmp(*list, opt) == 0) {
            return true;
        }
    }
    return false;
}

static const char *const shared_with_arg[] = {
    "-m", "-smp", "-mem-path", "-object", "-machine", "-netdev", "-device", NULL,
};

static bool parse_ram_size(const HostProgram *p, HostArgs *a, const char *arg, FerryError **errp)
{
    size_t page_size = ferry_ram_page_size();
    uint64_t size;
    char least[32] = "";

    if (!opts_parse_size(arg, 20, &size) || size == 0 || size < ((uint64_t)p->ram_min_mib << 20) ||
        size % page_size) {
        if (p->ram_min_mib) {
            snprintf(least, sizeof(least), ", at least %uM", p->ram_min_mib);
        }
        ferry_error_setg(errp, "-m: '%s' is not a RAM size (a multiple of the %zu-byte page%s, e.g. 256M or 4G)",
                         arg, page_size, least);
        return false;
    }
    a->ram.size = size;
    a->m_given = true;
    return true;
}

/* One of the options both programs take, with its argument. */
static bool parse_shared(const HostProgram *p, HostArgs *a, FerryHost *host, const char *opt, const char *arg,
                         FerryError **errp)
{
    if (strcmp(opt, "-m") == 0) {
        return parse_ram_size(p, a, arg, errp);
    }
    if (strcmp(opt, "-mem-path") == 0) {
        if (!*arg || strlen(arg) >= sizeof(a->mem_path)) {
            ferry_error_setg(errp, "-mem-path must be 1 to %zu bytes", sizeof(a->mem_path) - 1);
            return false;
        }
        strcpy(a->mem_path, arg);
        return true;
    }
    if (strcmp(opt, "-smp") == 0) {
        uint64_t v;

        if (!opts_parse_u64(arg, p->smp_max, &v) || v == 0) {
            ferry_error_setg(errp, "-smp: '%s' is not a number of %s in 1..%u", arg, p->smp_unit, p->smp_max);
            return false;
        }
        a->smp = (unsigned)v;
        return true;
    }
    if (strcmp(opt, "-object") == 0) {
        /* The host runtime's object types (TLS credentials, authorization) first; memory backends are the
         * programs' (options.c). */
        bool used_arg = false;
        int r = ferry_host_parse_option(host, opt, arg, &used_arg, errp);

        return r > 0 || (r == 0 && opts_parse_object(arg, &a->mb, errp));
    }
    if (strcmp(opt, "-machine") == 0) {
        return opts_parse_machine(arg, &a->mb, errp);
    }
    if (strcmp(opt, "-netdev") == 0) {
        return net_parse_netdev(&a->net, arg, errp);
    }
    return net_parse_device(&a->net, arg, errp); /* -device */
}

/* An option of the host runtime at argv[*i] (argument, if any, at argv[*i + 1]). Returns -1 to go on (*i at the
 * last word used), else the exit code. */
static int parse_host_option(const HostProgram *p, HostArgs *a, FerryHost *host, char **argv, int argc, int *i,
                             const char *opt)
{
    const char *arg = *i + 1 < argc ? argv[*i + 1] : NULL;
    FerryError *err = NULL;
    bool used_arg = false;
    int r;

    if (opt[0] != '-') {
        fprintf(stderr, "%s: unexpected argument '%s' (try --help)\n", p->name, argv[*i]);
        return HOST_EXIT_USAGE;
    }
    if (strcmp(opt, "-monitor") == 0 && arg && strcmp(arg, "stdio") == 0) {
        a->monitor_stdio = true;
    }
    r = ferry_host_parse_option(host, opt, arg, &used_arg, &err);
    if (r < 0) {
        return report(p, err, HOST_EXIT_BAD_VALUE);
    }
    if (r == 0) {
        fprintf(stderr, "%s: unknown option '%s' (try --help)\n", p->name, argv[*i]);
        return HOST_EXIT_USAGE;
    }
    *i += used_arg;
    return -1;
}

/* After all options: the RAM the memory backend and -m choose, and the NICs. */
static bool check_shared(HostArgs *a, FerryHost *host, FerryError **errp)
{
    if (!opts_memory_backend_resolve(&a->mb, a->m_given, ferry_host_incoming(host), &a->ram, errp) ||
        (a->mem_path[0] && !opts_mem_path_resolve(a->mem_path, &a->mb, ferry_host_incoming(host), &a->ram, errp)) ||
        !net_setup_check(&a->net, errp)) {
        return false;
    }
    a->ram.prealloc |= a->mem_prealloc;
    /* QEMU's -mem-prealloc preallocates with one thread per vCPU unless the backend says prealloc-threads=. */
    if (!a->ram.prealloc_threads) {
        unsigned smp = a->smp ? a->smp : 1;
        unsigned max = FERRY_PREALLOC_THREADS_MAX;
        a->ram.prealloc_threads = a->mem_prealloc ? (smp < max ? smp : max) : 1;
    }
    return true;
}

int host_args_parse(const HostProgram *p, void *opaque, HostArgs *a, FerryHost *host, int argc, char **argv)
{
    FerryError *err = NULL;

    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        const char *arg = i + 1 < argc ? argv[i + 1] : NULL;
        bool shared;

        /* QEMU accepts --opt as well as -opt. */
        if (opt[0] == '-' && opt[1] == '-' && opt[2]) {
            opt++;
        }
        shared = in_list(shared_with_arg, opt);
        if (strcmp(opt, "-h") == 0 || strcmp(opt, "-help") == 0) {
            p->usage(stdout);
            return EXIT_SUCCESS;
        }
        if (strcmp(opt, "-mem-prealloc") == 0) {
            a->mem_prealloc = true;
        } else if (in_list(p->flags, opt)) {
            if (!p->option(opaque, opt, NULL, &err)) {
                return report(p, err, HOST_EXIT_BAD_VALUE);
            }
        } else if (shared || in_list(p->with_arg, opt)) {
            if (!arg) {
                fprintf(stderr, "%s: option %s needs an argument (try --help)\n", p->name, opt);
                return HOST_EXIT_USAGE;
            }
            i++;
            if (!(shared ? parse_shared(p, a, host, opt, arg, &err) : p->option(opaque, opt, arg, &err))) {
                return report(p, err, HOST_EXIT_BAD_VALUE);
            }
        } else {
            int status = parse_host_option(p, a, host, argv, argc, &i, opt);

            if (status >= 0) {
                return status;
            }
        }
    }
    if (!check_shared(a, host, &err) || (p->finish && !p->finish(opaque, a, &err))) {
        return report(p, err, HOST_EXIT_BAD_VALUE);
    }
    return -1;
}

int host_main(const HostProgram *p, void *opaque, HostArgs *a, int argc, char **argv)
{
    FerryError *err = NULL;
    FerryHost *host = ferry_host_new(p->name, &err);
    int status;

    if (!host) {
        return report(p, err, EXIT_FAILURE);
    }
    status = host_args_parse(p, opaque, a, host, argc, argv);
    if (status >= 0) {
        ferry_host_free(host);
        return status;
    }
    if (!p->setup(opaque, host, &err) || !ferry_host_start(host, &err)) {
        status = report(p, err, EXIT_FAILURE);
    } else {
        status = ferry_host_run(host);
    }
    p->stop(opaque);
    ferry_host_free(host);
    p->free(opaque);
    return status;
}
