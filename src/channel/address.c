/*
 * The migration address model (channel/address.h): the URI parser and printer for every transport ("tcp:",
 * "unix:", "vsock:", "fd:", "exec:", "file:", "rdma:", QEMU's spellings), the strict JSON parser and printer of
 * QAPI's MigrationAddress and MigrationChannel, and the "channels" argument of migrate / migrate-incoming. This
 * is the only place that reads a URI string or an address object; everything below works on FerryMigrationAddress.
 * It validates syntax only: whether a host name resolves, a port is free, a file opens or an fd name exists is found
 * out when the transport connects or listens (tcp.c, unix.c, ...).
 *
 * Both parsers share one set of member checks. Each check takes a context string that starts its message: for a
 * URI "invalid migration URI 'tcp:h:x'", for JSON the member's path "channels[0].addr.port", so that every error
 * says where the problem is in the caller's own terms.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "channel/address.h"
#include "util/util.h"

/* DNS names are at most 253 characters; anything longer is a typo or garbage. */
#define HOST_MAX 253

/* The longest unix socket path (or abstract name) that fits sun_path: one byte goes to the terminator for a path
 * and to the leading NUL for an abstract name. */
#define UNIX_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

/* ------------------------------------------------------------------------------------------------------------
 * Checks shared by the URI and the JSON parser. @ctx starts the message.
 */

static bool valid_hostname(const char *h)
{
    /* Names and IPv4 literals: letters, digits, '.', '-', '_' (the latter appears in some internal names). */
    for (const char *p = h; *p; p++) {
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-' && *p != '_') {
            return false;
        }
    }
    return true;
}

static bool valid_ipv6_literal(const char *h)
{
    /* A zone index ("fe80::1%eth0") is allowed after the address; inet_pton does not understand it. */
    char buf[INET6_ADDRSTRLEN + 1];
    size_t len = strcspn(h, "%");
    if (len == 0 || len >= sizeof(buf) || (h[len] == '%' && h[len + 1] == '\0')) {
        return false;
    }
    memcpy(buf, h, len);
    buf[len] = '\0';
    struct in6_addr a;
    return inet_pton(AF_INET6, buf, &a) == 1;
}

/* A host as JSON gives it: a name, an IPv4 literal or an IPv6 literal without brackets; "" means any address
 * (listening) or the local host (connecting), as in QEMU. */
static bool check_host(const char *ctx, const char *host, FerryError **errp)
{
    if (strchr(host, ':')) {
        if (!valid_ipv6_literal(host)) {
            ferry_error_setg(errp, "%s: '%s' is not an IPv6 address", ctx, host);
            return false;
        }
        return true;
    }
    if (strlen(host) > HOST_MAX || !valid_hostname(host)) {
        ferry_error_setg(errp, "%s: bad host '%s'", ctx, host);
        return false;
    }
    return true;
}

/* Decimal digits only, no sign, at most @max. */
static bool parse_decimal(const char *s, uint64_t max, uint64_t *out)
{
    if (!*s) {
        return false;
    }
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (!isdigit((unsigned char)*p)) {
            return false;
        }
        v = v * 10 + (uint64_t)(*p - '0');
        if (v > max) {
            return false;
        }
    }
    *out = v;
    return true;
}

/* A port is a decimal number 0..65535 or a service name as in RFC 6335 (letters, digits and hyphens, at least
 * one letter, at most 15 characters); getaddrinfo resolves names later. */
static bool check_port(const char *ctx, const char *port, FerryError **errp)
{
    if (!*port) {
        ferry_error_setg(errp, "%s: missing port", ctx);
        return false;
    }
    if (isdigit((unsigned char)*port)) {
        uint64_t v;
        if (port[strspn(port, "0123456789")] != '\0') {
            ferry_error_setg(errp, "%s: bad port '%s'", ctx, port);
            return false;
        }
        if (!parse_decimal(port, 65535, &v)) {
            ferry_error_setg(errp, "%s: port '%s' out of range (0..65535)", ctx, port);
            return false;
        }
        return true;
    }
    if (strchr(port, ':')) {
        ferry_error_setg(errp, "%s: bad port '%s' (write an IPv6 address in brackets: tcp:[::1]:PORT)", ctx, port);
        return false;
    }
    bool has_alpha = false;
    size_t len = strlen(port);
    for (const char *p = port; *p; p++) {
        if (isalpha((unsigned char)*p)) {
            has_alpha = true;
        } else if (!isdigit((unsigned char)*p) && *p != '-') {
            ferry_error_setg(errp, "%s: bad port '%s'", ctx, port);
            return false;
        }
    }
    if (!has_alpha || len > 15 || port[0] == '-' || port[len - 1] == '-') {
        ferry_error_setg(errp, "%s: bad port '%s'", ctx, port);
        return false;
    }
    return true;
}

/* Checks that need several inet members at once. */
static bool check_inet_combination(const char *ctx, const char *ctx_to, const FerryInetAddress *inet,
                                   FerryError **errp)
{
    if (inet->has_ipv4 && inet->has_ipv6 && !inet->ipv4 && !inet->ipv6) {
        ferry_error_setg(errp, "%s: cannot disable both IPv4 and IPv6", ctx);
        return false;
    }
    uint64_t port;
    /* "to" is the top of the range of ports a listener tries, upwards from "port" (QEMU's inet_listen): a top
     * below the start would try nothing. Port 0 lets the kernel choose, so any "to" goes with it. */
    if (inet->has_to && parse_decimal(inet->port, 65535, &port) && port != 0 && inet->to < port) {
        ferry_error_setg(errp, "%s: 'to' (%u) is below the port (%s)", ctx_to, (unsigned)inet->to, inet->port);
        return false;
    }
    return true;
}

static bool check_unix_path(const char *ctx, const char *path, FerryError **errp)
{
    if (!*path) {
        ferry_error_setg(errp, "%s: empty socket path", ctx);
        return false;
    }
    if (strlen(path) > UNIX_PATH_MAX) {
        ferry_error_setg(errp, "%s: socket path longer than %zu bytes", ctx, (size_t)UNIX_PATH_MAX);
        return false;
    }
    return true;
}

/* vsock CIDs and ports are 32-bit unsigned numbers (struct sockaddr_vm); QAPI keeps them as strings. */
static bool check_vsock_number(const char *ctx, const char *what, const char *s, FerryError **errp)
{
    uint64_t v;
    if (!parse_decimal(s, UINT32_MAX, &v)) {
        ferry_error_setg(errp, "%s: bad %s '%s' (expected a decimal number 0..%u)", ctx, what, s, UINT32_MAX);
        return false;
    }
    return true;
}

/* fd:NAME names an fd given with getfd; fd:NUMBER an fd the process inherited. getfd refuses names that start
 * with a digit, so "3x" can be neither. */
static bool check_fd_str(const char *ctx, const char *s, FerryError **errp)
{
    if (!*s) {
        ferry_error_setg(errp, "%s: empty fd name", ctx);
        return false;
    }
    if (isdigit((unsigned char)*s)) {
        uint64_t v;
        if (!parse_decimal(s, INT_MAX, &v)) {
            ferry_error_setg(errp, "%s: bad fd '%s' (a number must be a decimal fd number, a name must not start "
                             "with a digit)", ctx, s);
            return false;
        }
    }
    return true;
}

/* ------------------------------------------------------------------------------------------------------------
 * URIs.
 */

/* A boolean URI option value, QEMU's on|off. */
static bool parse_on_off(const char *ctx, const char *name, const char *v, bool *out, FerryError **errp)
{
    if (strcmp(v, "on") == 0) {
        *out = true;
    } else if (strcmp(v, "off") == 0) {
        *out = false;
    } else {
        ferry_error_setg(errp, "%s: option '%s' expects 'on' or 'off', not '%s'", ctx, name, v);
        return false;
    }
    return true;
}

/* Parses ",to=N,ipv4=on,..." (already split off the port) into @inet. */
static bool parse_inet_options(const char *ctx, const char *opts, FerryInetAddress *inet, FerryError **errp)
{
    while (*opts == ',') {
        opts++;
        size_t len = strcspn(opts, ",");
        char *opt = ferry__xstrndup(opts, len);
        opts += len;

        char *eq = strchr(opt, '=');
        bool *has = NULL, *val = NULL;
        bool is_to = false;
        if (eq) {
            *eq = '\0';
            if (strcmp(opt, "ipv4") == 0) {
                has = &inet->has_ipv4;
                val = &inet->ipv4;
            } else if (strcmp(opt, "ipv6") == 0) {
                has = &inet->has_ipv6;
                val = &inet->ipv6;
            } else if (strcmp(opt, "numeric") == 0) {
                has = &inet->has_numeric;
                val = &inet->numeric;
            } else if (strcmp(opt, "keep-alive") == 0) {
                has = &inet->has_keep_alive;
                val = &inet->keep_alive;
            } else if (strcmp(opt, "to") == 0) {
                has = &inet->has_to;
                is_to = true;
            }
        }
        if (!has) {
            if (eq) {
                *eq = '=';
            }
            ferry_error_setg(errp, "%s: unknown option '%s' (expected to=PORT, ipv4=on|off, ipv6=on|off, "
                             "numeric=on|off or keep-alive=on|off)", ctx, opt);
            free(opt);
            return false;
        }
        if (*has) {
            ferry_error_setg(errp, "%s: option '%s' given twice", ctx, opt);
            free(opt);
            return false;
        }
        bool ok;
        if (is_to) {
            uint64_t to;
            ok = parse_decimal(eq + 1, 65535, &to);
            if (ok) {
                inet->to = (uint16_t)to;
            } else {
                ferry_error_setg(errp, "%s: option 'to' expects a port number 0..65535, not '%s'", ctx, eq + 1);
            }
        } else {
            ok = parse_on_off(ctx, opt, eq + 1, val, errp);
        }
        free(opt);
        if (!ok) {
            return false;
        }
        *has = true;
    }
    if (*opts) {
        ferry_error_setg(errp, "%s: unexpected '%s' after the port", ctx, opts);
        return false;
    }
    return check_inet_combination(ctx, ctx, inet, errp);
}

/* "HOST:PORT[,options]" after "tcp:" or "rdma:" (@scheme, for messages). rdma takes no options. */
static bool parse_host_port(const char *ctx, const char *scheme, const char *rest, bool options,
                            FerryInetAddress *inet, FerryError **errp)
{
    const char *p = rest;
    if (*p == '[') {
        const char *close = strchr(p, ']');
        if (!close) {
            ferry_error_setg(errp, "%s: missing ']' after the IPv6 address", ctx);
            return false;
        }
        inet->host = ferry__xstrndup(p + 1, (size_t)(close - p - 1));
        if (!valid_ipv6_literal(inet->host)) {
            ferry_error_setg(errp, "%s: '%s' is not an IPv6 address", ctx, inet->host);
            return false;
        }
        p = close + 1;
        if (*p != ':') {
            ferry_error_setg(errp, "%s: expected ':PORT' after ']'", ctx);
            return false;
        }
    } else {
        /* As QEMU's inet_parse: the host ends at the first ':'. An empty host ("tcp::4444") means every
         * address when listening and the local host when connecting. */
        const char *colon = strchr(p, ':');
        if (!colon) {
            ferry_error_setg(errp, "%s: expected %s:HOST:PORT", ctx, scheme);
            return false;
        }
        inet->host = ferry__xstrndup(p, (size_t)(colon - p));
        if (strlen(inet->host) > HOST_MAX || !valid_hostname(inet->host)) {
            ferry_error_setg(errp, "%s: bad host '%s'", ctx, inet->host);
            return false;
        }
        p = colon;
    }
    p++; /* the ':' before the port */
    size_t port_len = strcspn(p, ",");
    inet->port = ferry__xstrndup(p, port_len);
    if (!check_port(ctx, inet->port, errp)) {
        return false;
    }
    if (!options && p[port_len]) {
        ferry_error_setg(errp, "%s: %s takes no options, unexpected '%s' after the port", ctx, scheme,
                         p + port_len);
        return false;
    }
    return parse_inet_options(ctx, p + port_len, inet, errp);
}

/*
 * "unix:PATH[,abstract=on|off]". The path is everything after "unix:" (commas and colons included, as QEMU
 * reads it), except a last ",abstract=..." that selects the Linux abstract namespace: QEMU's migration URI has
 * no spelling for it, and a socket file whose name ends in ",abstract=on" is not worth keeping the form from.
 */
static bool parse_unix(const char *ctx, const char *rest, FerryUnixAddress *un, FerryError **errp)
{
    const char *comma = strrchr(rest, ',');
    size_t len = strlen(rest);
    if (comma && strncmp(comma, ",abstract=", 10) == 0) {
        if (!parse_on_off(ctx, "abstract", comma + 10, &un->abstract, errp)) {
            return false;
        }
        un->has_abstract = true;
        len = (size_t)(comma - rest);
    }
    un->path = ferry__xstrndup(rest, len);
    return check_unix_path(ctx, un->path, errp);
}

static bool parse_vsock(const char *ctx, const char *rest, FerryVsockAddress *vs, FerryError **errp)
{
    const char *colon = strchr(rest, ':');
    if (!colon) {
        ferry_error_setg(errp, "%s: expected vsock:CID:PORT", ctx);
        return false;
    }
    vs->cid = ferry__xstrndup(rest, (size_t)(colon - rest));
    vs->port = ferry__xstrdup(colon + 1);
    return check_vsock_number(ctx, "CID", vs->cid, errp) && check_vsock_number(ctx, "port", vs->port, errp);
}

static bool parse_exec(const char *ctx, const char *cmd, FerryExecAddress *ex, FerryError **errp)
{
    /* A blank command line would run a shell that does nothing and exits 0: a silent non-migration. */
    if (cmd[strspn(cmd, " \t\n")] == '\0') {
        ferry_error_setg(errp, "%s: empty command", ctx);
        return false;
    }
    ex->nargs = 3;
    ex->args = ferry__xcalloc(4, sizeof(char *));
    ex->args[0] = ferry__xstrdup("/bin/sh");
    ex->args[1] = ferry__xstrdup("-c");
    ex->args[2] = ferry__xstrdup(cmd);
    return true;
}

/* "file:PATH[,offset=N]": as QEMU's file_parse_offset, the first ",offset=" ends the path. */
static bool parse_file(const char *ctx, const char *rest, FerryFileAddress *f, FerryError **errp)
{
    const char *opt = strstr(rest, ",offset=");
    size_t len = opt ? (size_t)(opt - rest) : strlen(rest);
    if (len == 0) {
        ferry_error_setg(errp, "%s: empty file name", ctx);
        return false;
    }
    f->filename = ferry__xstrndup(rest, len);
    if (opt && !ferry__parse_size(opt + 8, "offset", &f->offset, errp)) {
        ferry_error_prepend(errp, "%s: ", ctx);
        return false;
    }
    /* The JSON form's limit (a file offset is an off_t): refused here, not when the file is opened. */
    if (f->offset > (uint64_t)INT64_MAX) {
        ferry_error_setg(errp, "%s: offset %llu is out of range (0..%lld)", ctx, (unsigned long long)f->offset,
                         (long long)INT64_MAX);
        return false;
    }
    return true;
}

bool ferry__address_parse_uri(const char *uri, FerryMigrationAddress **out, FerryError **errp)
{
    if (!uri || !*uri) {
        ferry_error_setg(errp, "invalid migration URI '': empty");
        return false;
    }
    char *ctx = ferry__xasprintf("invalid migration URI '%s'", uri);
    FerryMigrationAddress *addr = ferry__xcalloc(1, sizeof(*addr));
    addr->transport = FERRY_TRANSPORT_SOCKET;
    bool ok;
    if (strncmp(uri, "tcp:", 4) == 0) {
        addr->socket.type = FERRY_SOCKET_INET;
        ok = parse_host_port(ctx, "tcp", uri + 4, true, &addr->socket.inet, errp);
    } else if (strncmp(uri, "unix:", 5) == 0) {
        addr->socket.type = FERRY_SOCKET_UNIX;
        ok = parse_unix(ctx, uri + 5, &addr->socket.un, errp);
    } else if (strncmp(uri, "vsock:", 6) == 0) {
        addr->socket.type = FERRY_SOCKET_VSOCK;
        ok = parse_vsock(ctx, uri + 6, &addr->socket.vsock, errp);
    } else if (strncmp(uri, "fd:", 3) == 0) {
        addr->socket.type = FERRY_SOCKET_FD;
        addr->socket.fd.str = ferry__xstrdup(uri + 3);
        ok = check_fd_str(ctx, addr->socket.fd.str, errp);
    } else if (strncmp(uri, "exec:", 5) == 0) {
        addr->transport = FERRY_TRANSPORT_EXEC;
        ok = parse_exec(ctx, uri + 5, &addr->exec, errp);
    } else if (strncmp(uri, "file:", 5) == 0) {
        addr->transport = FERRY_TRANSPORT_FILE;
        ok = parse_file(ctx, uri + 5, &addr->file, errp);
    } else if (strncmp(uri, "rdma:", 5) == 0) {
        addr->transport = FERRY_TRANSPORT_RDMA;
        ok = parse_host_port(ctx, "rdma", uri + 5, false, &addr->rdma, errp);
    } else {
        ferry_error_setg(errp, "unknown migration protocol: '%s' (expected tcp:, unix:, vsock:, fd:, exec:, file: "
                         "or rdma:)", uri);
        ok = false;
    }
    free(ctx);
    if (!ok) {
        ferry__address_free(addr);
        return false;
    }
    *out = addr;
    return true;
}

/* Addresses built by other layers may leave strings unset: print them as empty. */
static const char *str_or_empty(const char *s)
{
    return s ? s : "";
}

static char *inet_to_uri(const char *scheme, const FerryInetAddress *in)
{
    const char *host = str_or_empty(in->host);
    bool brackets = strchr(host, ':') != NULL;
    char *uri = ferry__xasprintf("%s:%s%s%s:%s", scheme, brackets ? "[" : "", host, brackets ? "]" : "",
                                 str_or_empty(in->port));
    const struct {
        bool has, val;
        const char *name;
    } flags[] = {
        { in->has_ipv4, in->ipv4, "ipv4" },
        { in->has_ipv6, in->ipv6, "ipv6" },
        { in->has_numeric, in->numeric, "numeric" },
        { in->has_keep_alive, in->keep_alive, "keep-alive" },
    };
    if (in->has_to) {
        char *u = ferry__xasprintf("%s,to=%u", uri, (unsigned)in->to);
        free(uri);
        uri = u;
    }
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(flags); i++) {
        if (flags[i].has) {
            char *u = ferry__xasprintf("%s,%s=%s", uri, flags[i].name, flags[i].val ? "on" : "off");
            free(uri);
            uri = u;
        }
    }
    return uri;
}

char *ferry__exec_args_join(const FerryExecAddress *ex)
{
    size_t len = 1;
    for (size_t i = 0; i < ex->nargs; i++) {
        len += strlen(str_or_empty(ex->args[i])) + 1;
    }
    char *s = ferry__xcalloc(1, len);
    for (size_t i = 0; i < ex->nargs; i++) {
        if (i) {
            strcat(s, " ");
        }
        strcat(s, str_or_empty(ex->args[i]));
    }
    return s;
}

static char *exec_to_uri(const FerryExecAddress *ex)
{
    if (ex->nargs == 3 && strcmp(str_or_empty(ex->args[0]), "/bin/sh") == 0 &&
        strcmp(str_or_empty(ex->args[1]), "-c") == 0) {
        return ferry__xasprintf("exec:%s", str_or_empty(ex->args[2]));
    }
    char *args = ferry__exec_args_join(ex);
    char *uri = ferry__xasprintf("exec:%s", args);
    free(args);
    return uri;
}

char *ferry__address_to_uri(const FerryMigrationAddress *addr)
{
    switch (addr->transport) {
    case FERRY_TRANSPORT_EXEC:
        return exec_to_uri(&addr->exec);
    case FERRY_TRANSPORT_RDMA:
        return inet_to_uri("rdma", &addr->rdma);
    case FERRY_TRANSPORT_FILE:
        if (addr->file.offset) {
            return ferry__xasprintf("file:%s,offset=%llu", str_or_empty(addr->file.filename),
                                    (unsigned long long)addr->file.offset);
        }
        return ferry__xasprintf("file:%s", str_or_empty(addr->file.filename));
    case FERRY_TRANSPORT_SOCKET:
        break;
    }
    const FerrySocketAddress *sa = &addr->socket;
    switch (sa->type) {
    case FERRY_SOCKET_UNIX:
        if (sa->un.has_abstract) {
            return ferry__xasprintf("unix:%s,abstract=%s", str_or_empty(sa->un.path), sa->un.abstract ? "on" : "off");
        }
        return ferry__xasprintf("unix:%s", str_or_empty(sa->un.path));
    case FERRY_SOCKET_VSOCK:
        return ferry__xasprintf("vsock:%s:%s", str_or_empty(sa->vsock.cid), str_or_empty(sa->vsock.port));
    case FERRY_SOCKET_FD:
        return ferry__xasprintf("fd:%s", str_or_empty(sa->fd.str));
    case FERRY_SOCKET_INET:
        break;
    }
    return inet_to_uri("tcp", &sa->inet);
}

static void inet_copy(FerryInetAddress *dst, const FerryInetAddress *src)
{
    *dst = *src;
    dst->host = ferry__xstrdup(src->host);
    dst->port = ferry__xstrdup(src->port);
}

FerryMigrationAddress *ferry__address_copy(const FerryMigrationAddress *addr)
{
    if (!addr) {
        return NULL;
    }
    FerryMigrationAddress *c = ferry__xmalloc(sizeof(*c));
    *c = *addr;
    inet_copy(&c->socket.inet, &addr->socket.inet);
    c->socket.un.path = ferry__xstrdup(addr->socket.un.path);
    c->socket.vsock.cid = ferry__xstrdup(addr->socket.vsock.cid);
    c->socket.vsock.port = ferry__xstrdup(addr->socket.vsock.port);
    c->socket.fd.str = ferry__xstrdup(addr->socket.fd.str);
    if (addr->exec.args) {
        c->exec.args = ferry__xcalloc(addr->exec.nargs + 1, sizeof(char *));
        for (size_t i = 0; i < addr->exec.nargs; i++) {
            c->exec.args[i] = ferry__xstrdup(addr->exec.args[i]);
        }
    }
    inet_copy(&c->rdma, &addr->rdma);
    c->file.filename = ferry__xstrdup(addr->file.filename);
    return c;
}

void ferry__address_free(FerryMigrationAddress *addr)
{
    if (!addr) {
        return;
    }
    free(addr->socket.inet.host);
    free(addr->socket.inet.port);
    free(addr->socket.un.path);
    free(addr->socket.vsock.cid);
    free(addr->socket.vsock.port);
    free(addr->socket.fd.str);
    if (addr->exec.args) {
        for (size_t i = 0; i < addr->exec.nargs; i++) {
            free(addr->exec.args[i]);
        }
        free(addr->exec.args);
    }
    free(addr->rdma.host);
    free(addr->rdma.port);
    free(addr->file.filename);
    free(addr);
}

/* ------------------------------------------------------------------------------------------------------------
 * JSON (QAPI's MigrationAddress, MigrationChannel).
 */

/* "where.member", or "member" when there is no @where. Caller frees. */
static char *member_path(const char *where, const char *member)
{
    if (!where || !*where) {
        return ferry__xstrdup(member);
    }
    return ferry__xasprintf("%s.%s", where, member);
}

/* Every member of @obj must be in @allowed (NULL-terminated): QMP rejects what it does not understand rather than
 * ignoring a misspelt option. */
static bool check_members(json_t *obj, const char *where, const char *const *allowed, const char *what,
                          FerryError **errp)
{
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val) {
        size_t i;
        for (i = 0; allowed[i]; i++) {
            if (strcmp(key, allowed[i]) == 0) {
                break;
            }
        }
        if (!allowed[i]) {
            char *path = member_path(where, key);
            ferry_error_setg(errp, "%s: unknown member of %s", path, what);
            free(path);
            return false;
        }
    }
    return true;
}

/* A string member. @out gets a copy, or NULL if the member is absent and not @required. Empty strings are refused
 * unless @allow_empty. */
static bool get_str(json_t *obj, const char *where, const char *member, bool required, bool allow_empty, char **out,
                    FerryError **errp)
{
    json_t *v = json_object_get(obj, member);
    *out = NULL;
    if (!v) {
        if (!required) {
            return true;
        }
        char *path = member_path(where, member);
        ferry_error_setg(errp, "%s: missing member", path);
        free(path);
        return false;
    }
    char *path = member_path(where, member);
    bool ok = false;
    if (!json_is_string(v)) {
        ferry_error_setg(errp, "%s: expected a string", path);
    } else if (strlen(json_string_value(v)) != json_string_length(v)) {
        ferry_error_setg(errp, "%s: contains a NUL byte", path);
    } else if (!allow_empty && json_string_length(v) == 0) {
        ferry_error_setg(errp, "%s: empty string", path);
    } else {
        *out = ferry__xstrdup(json_string_value(v));
        ok = true;
    }
    free(path);
    return ok;
}

static bool get_bool(json_t *obj, const char *where, const char *member, bool *has, bool *out, FerryError **errp)
{
    json_t *v = json_object_get(obj, member);
    if (!v) {
        *has = false;
        return true;
    }
    if (!json_is_boolean(v)) {
        char *path = member_path(where, member);
        ferry_error_setg(errp, "%s: expected a boolean", path);
        free(path);
        return false;
    }
    *has = true;
    *out = json_is_true(v);
    return true;
}

/* An integer member 0..@max. */
static bool get_uint(json_t *obj, const char *where, const char *member, bool required, uint64_t max, bool *has,
                     uint64_t *out, FerryError **errp)
{
    json_t *v = json_object_get(obj, member);
    *has = false;
    if (!v && !required) {
        return true;
    }
    char *path = member_path(where, member);
    bool ok = false;
    if (!v) {
        ferry_error_setg(errp, "%s: missing member", path);
    } else if (!json_is_integer(v)) {
        ferry_error_setg(errp, "%s: expected an integer", path);
    } else if (json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) > max) {
        ferry_error_setg(errp, "%s: %" JSON_INTEGER_FORMAT " out of range (0..%llu)", path, json_integer_value(v),
                         (unsigned long long)max);
    } else {
        *out = (uint64_t)json_integer_value(v);
        *has = true;
        ok = true;
    }
    free(path);
    return ok;
}

/* A string member that must also pass @check, whose message starts with the member's path. */
static bool get_checked_str(json_t *obj, const char *where, const char *member, bool allow_empty,
                            bool (*check)(const char *ctx, const char *s, FerryError **errp), char **out,
                            FerryError **errp)
{
    if (!get_str(obj, where, member, true, allow_empty, out, errp)) {
        return false;
    }
    char *path = member_path(where, member);
    bool ok = check(path, *out, errp);
    free(path);
    return ok;
}

static bool check_cid(const char *ctx, const char *s, FerryError **errp)
{
    return check_vsock_number(ctx, "CID", s, errp);
}

static bool check_vsock_port(const char *ctx, const char *s, FerryError **errp)
{
    return check_vsock_number(ctx, "port", s, errp);
}

/* QAPI's InetSocketAddress members (or only host and port, for rdma). */
static bool inet_from_json(json_t *obj, const char *where, bool full, FerryInetAddress *in, FerryError **errp)
{
    if (!get_checked_str(obj, where, "host", true, check_host, &in->host, errp) ||
        !get_checked_str(obj, where, "port", false, check_port, &in->port, errp)) {
        return false;
    }
    if (!full) {
        return true;
    }
    uint64_t to = 0;
    if (!get_bool(obj, where, "numeric", &in->has_numeric, &in->numeric, errp) ||
        !get_uint(obj, where, "to", false, 65535, &in->has_to, &to, errp) ||
        !get_bool(obj, where, "ipv4", &in->has_ipv4, &in->ipv4, errp) ||
        !get_bool(obj, where, "ipv6", &in->has_ipv6, &in->ipv6, errp) ||
        !get_bool(obj, where, "keep-alive", &in->has_keep_alive, &in->keep_alive, errp)) {
        return false;
    }
    in->to = (uint16_t)to;
    char *ctx_flags = member_path(where, "ipv6");
    char *ctx_to = member_path(where, "to");
    bool ok = check_inet_combination(ctx_flags, ctx_to, in, errp);
    free(ctx_flags);
    free(ctx_to);
    return ok;
}

static bool socket_from_json(json_t *obj, const char *where, FerrySocketAddress *sa, FerryError **errp)
{
    static const char *const inet_members[] = { "transport", "type", "host", "port", "numeric", "to", "ipv4",
                                                "ipv6", "keep-alive", NULL };
    static const char *const unix_members[] = { "transport", "type", "path", "abstract", "tight", NULL };
    static const char *const vsock_members[] = { "transport", "type", "cid", "port", NULL };
    static const char *const fd_members[] = { "transport", "type", "str", NULL };

    char *type = NULL;
    if (!get_str(obj, where, "type", true, false, &type, errp)) {
        return false;
    }
    bool ok = false;
    if (strcmp(type, "inet") == 0) {
        sa->type = FERRY_SOCKET_INET;
        ok = check_members(obj, where, inet_members, "an inet socket address", errp) &&
             inet_from_json(obj, where, true, &sa->inet, errp);
    } else if (strcmp(type, "unix") == 0) {
        sa->type = FERRY_SOCKET_UNIX;
        bool has_tight = false, tight = true;
        ok = check_members(obj, where, unix_members, "a unix socket address", errp) &&
             get_checked_str(obj, where, "path", false, check_unix_path, &sa->un.path, errp) &&
             get_bool(obj, where, "abstract", &sa->un.has_abstract, &sa->un.abstract, errp) &&
             get_bool(obj, where, "tight", &has_tight, &tight, errp);
        /* QEMU's "tight" (default true) sizes an abstract address to its name; ferry always does that, so the
         * other choice is refused rather than silently ignored. */
        if (ok && has_tight && !tight) {
            char *path = member_path(where, "tight");
            ferry_error_setg(errp, "%s: only tight abstract addresses (true) are supported", path);
            free(path);
            ok = false;
        }
    } else if (strcmp(type, "vsock") == 0) {
        sa->type = FERRY_SOCKET_VSOCK;
        ok = check_members(obj, where, vsock_members, "a vsock socket address", errp) &&
             get_checked_str(obj, where, "cid", false, check_cid, &sa->vsock.cid, errp) &&
             get_checked_str(obj, where, "port", false, check_vsock_port, &sa->vsock.port, errp);
    } else if (strcmp(type, "fd") == 0) {
        sa->type = FERRY_SOCKET_FD;
        ok = check_members(obj, where, fd_members, "an fd socket address", errp) &&
             get_checked_str(obj, where, "str", false, check_fd_str, &sa->fd.str, errp);
    } else {
        char *path = member_path(where, "type");
        ferry_error_setg(errp, "%s: unknown socket type '%s' (expected inet, unix, vsock or fd)", path, type);
        free(path);
    }
    free(type);
    return ok;
}

static bool exec_from_json(json_t *obj, const char *where, FerryExecAddress *ex, FerryError **errp)
{
    static const char *const members[] = { "transport", "args", NULL };
    if (!check_members(obj, where, members, "an exec address", errp)) {
        return false;
    }
    char *path = member_path(where, "args");
    json_t *args = json_object_get(obj, "args");
    bool ok = false;
    if (!args) {
        ferry_error_setg(errp, "%s: missing member", path);
    } else if (!json_is_array(args)) {
        ferry_error_setg(errp, "%s: expected an array of strings", path);
    } else if (json_array_size(args) == 0) {
        ferry_error_setg(errp, "%s: empty (the first argument is the program to run)", path);
    } else {
        ex->nargs = json_array_size(args);
        ex->args = ferry__xcalloc(ex->nargs + 1, sizeof(char *));
        ok = true;
        for (size_t i = 0; ok && i < ex->nargs; i++) {
            json_t *a = json_array_get(args, i);
            if (!json_is_string(a)) {
                ferry_error_setg(errp, "%s[%zu]: expected a string", path, i);
                ok = false;
            } else if (strlen(json_string_value(a)) != json_string_length(a)) {
                ferry_error_setg(errp, "%s[%zu]: contains a NUL byte", path, i);
                ok = false;
            } else if (i == 0 && json_string_length(a) == 0) {
                /* Later arguments may legitimately be empty (sh -c ''), the program may not. */
                ferry_error_setg(errp, "%s[0]: empty string", path);
                ok = false;
            } else {
                ex->args[i] = ferry__xstrdup(json_string_value(a));
            }
        }
    }
    free(path);
    return ok;
}

static bool file_from_json(json_t *obj, const char *where, FerryFileAddress *f, FerryError **errp)
{
    static const char *const members[] = { "transport", "filename", "offset", NULL };
    bool has;
    /* jansson integers are signed 64-bit: offsets up to 2^63-1, more than any file system allows. */
    return check_members(obj, where, members, "a file address", errp) &&
           get_str(obj, where, "filename", true, false, &f->filename, errp) &&
           get_uint(obj, where, "offset", true, (uint64_t)INT64_MAX, &has, &f->offset, errp);
}

bool ferry__address_from_json(json_t *obj, const char *where, FerryMigrationAddress **out, FerryError **errp)
{
    static const char *const rdma_members[] = { "transport", "host", "port", NULL };
    if (!json_is_object(obj)) {
        ferry_error_setg(errp, "%s: expected an object (MigrationAddress)", where && *where ? where : "address");
        return false;
    }
    char *transport = NULL;
    if (!get_str(obj, where, "transport", true, false, &transport, errp)) {
        return false;
    }
    FerryMigrationAddress *addr = ferry__xcalloc(1, sizeof(*addr));
    bool ok = false;
    if (strcmp(transport, "socket") == 0) {
        addr->transport = FERRY_TRANSPORT_SOCKET;
        ok = socket_from_json(obj, where, &addr->socket, errp);
    } else if (strcmp(transport, "exec") == 0) {
        addr->transport = FERRY_TRANSPORT_EXEC;
        ok = exec_from_json(obj, where, &addr->exec, errp);
    } else if (strcmp(transport, "rdma") == 0) {
        addr->transport = FERRY_TRANSPORT_RDMA;
        ok = check_members(obj, where, rdma_members, "an rdma address", errp) &&
             inet_from_json(obj, where, false, &addr->rdma, errp);
    } else if (strcmp(transport, "file") == 0) {
        addr->transport = FERRY_TRANSPORT_FILE;
        ok = file_from_json(obj, where, &addr->file, errp);
    } else {
        char *path = member_path(where, "transport");
        ferry_error_setg(errp, "%s: unknown transport '%s' (expected socket, exec, rdma or file)", path, transport);
        free(path);
    }
    free(transport);
    if (!ok) {
        ferry__address_free(addr);
        return false;
    }
    *out = addr;
    return true;
}

/*
 * A JSON string of @s. jansson refuses bytes that are not UTF-8, and an address parsed from a URI may hold any (a
 * command line is bytes, and so is a file or socket path): each such byte becomes '?' (as in QMP error messages)
 * rather than the member silently going missing from the object.
 */
static json_t *json_str(const char *s)
{
    json_t *v = json_string(str_or_empty(s));
    if (!v) {
        char *clean = ferry__utf8_scrub(s);
        v = json_string(clean);
        free(clean);
    }
    return v;
}

static void set_str(json_t *obj, const char *key, const char *s)
{
    json_object_set_new(obj, key, json_str(s));
}

static void inet_to_json(json_t *obj, const FerryInetAddress *in, bool full)
{
    set_str(obj, "host", in->host);
    set_str(obj, "port", in->port);
    if (!full) {
        return;
    }
    if (in->has_numeric) {
        json_object_set_new(obj, "numeric", json_boolean(in->numeric));
    }
    if (in->has_to) {
        json_object_set_new(obj, "to", json_integer(in->to));
    }
    if (in->has_ipv4) {
        json_object_set_new(obj, "ipv4", json_boolean(in->ipv4));
    }
    if (in->has_ipv6) {
        json_object_set_new(obj, "ipv6", json_boolean(in->ipv6));
    }
    if (in->has_keep_alive) {
        json_object_set_new(obj, "keep-alive", json_boolean(in->keep_alive));
    }
}

json_t *ferry__address_to_json(const FerryMigrationAddress *addr)
{
    json_t *obj = json_object();
    switch (addr->transport) {
    case FERRY_TRANSPORT_SOCKET: {
        const FerrySocketAddress *sa = &addr->socket;
        set_str(obj, "transport", "socket");
        switch (sa->type) {
        case FERRY_SOCKET_INET:
            set_str(obj, "type", "inet");
            inet_to_json(obj, &sa->inet, true);
            break;
        case FERRY_SOCKET_UNIX:
            set_str(obj, "type", "unix");
            set_str(obj, "path", sa->un.path);
            if (sa->un.has_abstract) {
                json_object_set_new(obj, "abstract", json_boolean(sa->un.abstract));
            }
            break;
        case FERRY_SOCKET_VSOCK:
            set_str(obj, "type", "vsock");
            set_str(obj, "cid", sa->vsock.cid);
            set_str(obj, "port", sa->vsock.port);
            break;
        case FERRY_SOCKET_FD:
            set_str(obj, "type", "fd");
            set_str(obj, "str", sa->fd.str);
            break;
        }
        break;
    }
    case FERRY_TRANSPORT_EXEC: {
        set_str(obj, "transport", "exec");
        json_t *args = json_array();
        for (size_t i = 0; i < addr->exec.nargs; i++) {
            json_array_append_new(args, json_str(addr->exec.args[i]));
        }
        json_object_set_new(obj, "args", args);
        break;
    }
    case FERRY_TRANSPORT_RDMA:
        set_str(obj, "transport", "rdma");
        inet_to_json(obj, &addr->rdma, false);
        break;
    case FERRY_TRANSPORT_FILE:
        set_str(obj, "transport", "file");
        set_str(obj, "filename", addr->file.filename);
        json_object_set_new(obj, "offset", json_integer((json_int_t)addr->file.offset));
        break;
    }
    return obj;
}

static const char *const channel_type_names[FERRY_CHANNEL_TYPE__MAX] = {
    [FERRY_CHANNEL_MAIN] = "main",
    [FERRY_CHANNEL_CPR] = "cpr",
};

const char *ferry__channel_type_name(FerryChannelType t)
{
    return (unsigned)t < FERRY_CHANNEL_TYPE__MAX ? channel_type_names[t] : "unknown";
}

bool ferry__channel_type_from_name(const char *name, FerryChannelType *t)
{
    for (int i = 0; i < FERRY_CHANNEL_TYPE__MAX; i++) {
        if (name && strcmp(name, channel_type_names[i]) == 0) {
            *t = (FerryChannelType)i;
            return true;
        }
    }
    return false;
}

bool ferry__channel_from_json(json_t *obj, const char *where, FerryMigrationChannel **out, FerryError **errp)
{
    static const char *const members[] = { "channel-type", "addr", NULL };
    if (!json_is_object(obj)) {
        ferry_error_setg(errp, "%s: expected an object (MigrationChannel)", where && *where ? where : "channel");
        return false;
    }
    if (!check_members(obj, where, members, "a MigrationChannel", errp)) {
        return false;
    }
    char *type_name = NULL;
    if (!get_str(obj, where, "channel-type", true, false, &type_name, errp)) {
        return false;
    }
    FerryChannelType type;
    if (!ferry__channel_type_from_name(type_name, &type)) {
        char *path = member_path(where, "channel-type");
        ferry_error_setg(errp, "%s: unknown channel type '%s' (expected main or cpr)", path, type_name);
        free(path);
        free(type_name);
        return false;
    }
    free(type_name);
    char *addr_where = member_path(where, "addr");
    json_t *addr_json = json_object_get(obj, "addr");
    FerryMigrationAddress *addr = NULL;
    bool ok;
    if (!addr_json) {
        ferry_error_setg(errp, "%s: missing member", addr_where);
        ok = false;
    } else {
        ok = ferry__address_from_json(addr_json, addr_where, &addr, errp);
    }
    free(addr_where);
    if (!ok) {
        return false;
    }
    FerryMigrationChannel *ch = ferry__xcalloc(1, sizeof(*ch));
    ch->type = type;
    ch->addr = addr;
    *out = ch;
    return true;
}

json_t *ferry__channel_to_json(const FerryMigrationChannel *ch)
{
    json_t *obj = json_object();
    set_str(obj, "channel-type", ferry__channel_type_name(ch->type));
    json_object_set_new(obj, "addr", ch->addr ? ferry__address_to_json(ch->addr) : json_object());
    return obj;
}

FerryMigrationChannel *ferry__migration_channel_copy(const FerryMigrationChannel *ch)
{
    if (!ch) {
        return NULL;
    }
    FerryMigrationChannel *c = ferry__xcalloc(1, sizeof(*c));
    c->type = ch->type;
    c->addr = ferry__address_copy(ch->addr);
    return c;
}

void ferry__migration_channel_free(FerryMigrationChannel *ch)
{
    if (!ch) {
        return;
    }
    ferry__address_free(ch->addr);
    free(ch);
}

bool ferry__channels_parse_main(json_t *channels, FerryMigrationAddress **main_out, FerryError **errp)
{
    if (!json_is_array(channels)) {
        ferry_error_setg(errp, "channels: expected an array of MigrationChannel");
        return false;
    }
    FerryMigrationChannel *seen[FERRY_CHANNEL_TYPE__MAX] = { NULL };
    size_t seen_at[FERRY_CHANNEL_TYPE__MAX] = { 0 };
    bool ok = true;
    size_t i;
    json_t *item;
    json_array_foreach(channels, i, item) {
        char *where = ferry__xasprintf("channels[%zu]", i);
        FerryMigrationChannel *ch = NULL;
        ok = ferry__channel_from_json(item, where, &ch, errp);
        if (ok && seen[ch->type]) {
            ferry_error_setg(errp, "%s.channel-type: a second '%s' channel (each type may be given once)", where,
                             ferry__channel_type_name(ch->type));
            ferry__migration_channel_free(ch);
            ok = false;
        } else if (ok) {
            seen[ch->type] = ch;
            seen_at[ch->type] = i;
        }
        free(where);
        if (!ok) {
            break;
        }
    }
    if (ok && !seen[FERRY_CHANNEL_MAIN]) {
        ferry_error_setg(errp, "channels: no channel of type 'main'");
        ok = false;
    }
    if (ok && seen[FERRY_CHANNEL_CPR]) {
        /* Parsed and checked like any channel, then refused: a cpr channel needs migration parameter "mode" set
         * to cpr-transfer, which ferry does not implement yet. Accepting it would silently ignore it. */
        ferry_error_setg(errp, "channels[%zu].channel-type: 'cpr' is not supported by ferry yet (only 'main')",
                         seen_at[FERRY_CHANNEL_CPR]);
        ok = false;
    }
    if (ok) {
        *main_out = seen[FERRY_CHANNEL_MAIN]->addr;
        seen[FERRY_CHANNEL_MAIN]->addr = NULL;
    }
    for (int t = 0; t < FERRY_CHANNEL_TYPE__MAX; t++) {
        ferry__migration_channel_free(seen[t]);
    }
    return ok;
}
