/*
 * The command line and main() as both host programs have them (hosts/common, compiled into ferry-workload and
 * ferry-vm): the walk over argv in QEMU's spellings (-opt or --opt, -h/--help), the options both programs take
 * (-m, -smp, -mem-prealloc, -mem-path, -object memory-backend-*, -machine, -netdev, -device), every other option
 * handed to the host runtime (include/ferry/host.h: -qmp, -monitor, -incoming, -S, -name, -object tls-creds-*
 * ...), the checks that turn the memory backend and the network options into RAM and NICs, and main()'s life cycle
 * around the program's machine. A program brings its own options, checks and machine as a HostProgram; what they
 * mean is its business, not this file's. Messages start with the program's name; this header is not part of
 * libferry.
 */
#ifndef FERRY_HOSTS_ARGV_H
#define FERRY_HOSTS_ARGV_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "ferry/ferry.h"
#include "netdev.h"
#include "options.h"

/* Exit codes of a refused command line: a bad value is an error (1); an unknown option or a missing argument is
 * a usage error (2). */
#define HOST_EXIT_BAD_VALUE 1
#define HOST_EXIT_USAGE 2

/* What the shared options say. The program sets the defaults (and mb.vm_machine, net.guest_nic) first. */
typedef struct HostArgs {
    MemChoice ram;        /* ram.size: -m or the memory backend's; ram.prealloc includes -mem-prealloc */
    unsigned smp;         /* -smp */
    MemBackend mb;        /* -object memory-backend-*, -machine */
    NetSetup net;         /* -netdev, -device */
    bool monitor_stdio;   /* -monitor stdio was given: the terminal is the monitor's */
    bool m_given;         /* -m was given */
    bool mem_prealloc;    /* -mem-prealloc was given */
    char mem_path[4096];  /* -mem-path PATH, "" if not given */
} HostArgs;

/* One host program: what it adds to the shared command line and main(). The callbacks get @opaque. */
typedef struct HostProgram {
    const char *name;              /* "ferry-vm": the start of every message */
    void (*usage)(FILE *out);      /* --help */
    unsigned ram_min_mib;          /* -m is at least this many MiB (0: one page) and always whole pages */
    unsigned smp_max;              /* -smp takes 1..smp_max ... */
    const char *smp_unit;          /* ... of these ("vCPUs", "workers") */
    const char *const *with_arg;   /* the program's own options that take an argument, NULL-terminated */
    const char *const *flags;      /* and those that take none (NULL-terminated; NULL for none) */
    /* The program's own option @opt (@arg NULL for a flag). False with *errp set for a bad value. */
    bool (*option)(void *opaque, const char *opt, const char *arg, FerryError **errp);
    /* After all options (the shared ones checked): the program's own checks, and taking what it needs from @a. */
    bool (*finish)(void *opaque, HostArgs *a, FerryError **errp);
    /* Build the machine on @host: RAM, sections, backends, QMP commands, threads, ferry_host_set_ops. */
    bool (*setup)(void *opaque, FerryHost *host, FerryError **errp);
    /* On the way out, with a machine built in part or not at all: stop ends the threads that write the engine's
     * RAM (before ferry_host_free unmaps it); free frees the rest after it (the engine's migration threads may
     * call the devices' backends until ferry_host_free has joined them). */
    void (*stop)(void *opaque);
    void (*free)(void *opaque);
} HostProgram;

/*
 * Parse @argv into @a, the program's own options through p->option, all else through the host runtime; then
 * check the memory backend against -m and -incoming, the NICs against each other, and call p->finish. Errors are
 * printed. Returns -1 to go on, else the exit code (EXIT_SUCCESS after --help, HOST_EXIT_BAD_VALUE,
 * HOST_EXIT_USAGE).
 */
int host_args_parse(const HostProgram *p, void *opaque, HostArgs *a, FerryHost *host, int argc, char **argv);

/* The whole of main(): a host runtime, the command line, the machine, the main loop until quit, the teardown.
 * Returns the exit status. */
int host_main(const HostProgram *p, void *opaque, HostArgs *a, int argc, char **argv);

#endif
