/*
 * The migration URI parser and printer (channel/address.h): "tcp:HOST:PORT[,ipv4=on|off][,ipv6=on|off]" and
 * "unix:PATH", with QEMU's spelling. This is the only place that reads a URI string; everything below works on
 * FerryMigrationAddress. It validates syntax only: whether a host name resolves or a port is free is found out
 * when connecting or listening (tcp.c, unix.c).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "channel/address.h"
#include "util/util.h"

/* DNS names are at most 253 characters; anything longer is a typo or garbage. */
#define HOST_MAX 253

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

/* A port is a decimal number 0..65535 or a service name as in RFC 6335 (letters, digits and hyphens, at least
 * one letter, at most 15 characters); getaddrinfo resolves names later. */
static bool parse_port(const char *uri, const char *port, FerryError **errp)
{
    if (!*port) {
        ferry_error_setg(errp, "invalid migration URI '%s': missing port", uri);
        return false;
    }
    if (isdigit((unsigned char)*port)) {
        unsigned long v = 0;
        for (const char *p = port; *p; p++) {
            if (!isdigit((unsigned char)*p)) {
                ferry_error_setg(errp, "invalid migration URI '%s': bad port '%s'", uri, port);
                return false;
            }
            v = v * 10 + (unsigned long)(*p - '0');
            if (v > 65535) {
                ferry_error_setg(errp, "invalid migration URI '%s': port '%s' out of range (0..65535)", uri, port);
                return false;
            }
        }
        return true;
    }
    if (strchr(port, ':')) {
        ferry_error_setg(errp, "invalid migration URI '%s': bad port '%s' (write an IPv6 address in brackets: "
                         "tcp:[::1]:PORT)", uri, port);
        return false;
    }
    bool has_alpha = false;
    size_t len = strlen(port);
    for (const char *p = port; *p; p++) {
        if (isalpha((unsigned char)*p)) {
            has_alpha = true;
        } else if (!isdigit((unsigned char)*p) && *p != '-') {
            ferry_error_setg(errp, "invalid migration URI '%s': bad port '%s'", uri, port);
            return false;
        }
    }
    if (!has_alpha || len > 15 || port[0] == '-' || port[len - 1] == '-') {
        ferry_error_setg(errp, "invalid migration URI '%s': bad port '%s'", uri, port);
        return false;
    }
    return true;
}

/* Parses ",ipv4=on,ipv6=off" (already split off the port) into @inet. */
static bool parse_inet_options(const char *uri, const char *opts, FerryInetAddress *inet, FerryError **errp)
{
    while (*opts == ',') {
        opts++;
        size_t len = strcspn(opts, ",");
        char *opt = ferry__xstrndup(opts, len);
        opts += len;

        char *eq = strchr(opt, '=');
        bool *has = NULL, *val = NULL;
        if (eq) {
            *eq = '\0';
            if (strcmp(opt, "ipv4") == 0) {
                has = &inet->has_ipv4;
                val = &inet->ipv4;
            } else if (strcmp(opt, "ipv6") == 0) {
                has = &inet->has_ipv6;
                val = &inet->ipv6;
            }
        }
        if (!has) {
            if (eq) {
                *eq = '=';
            }
            ferry_error_setg(errp, "invalid migration URI '%s': unknown option '%s' (expected ipv4=on|off or "
                             "ipv6=on|off)", uri, opt);
            free(opt);
            return false;
        }
        if (*has) {
            ferry_error_setg(errp, "invalid migration URI '%s': option '%s' given twice", uri, opt);
            free(opt);
            return false;
        }
        if (strcmp(eq + 1, "on") == 0) {
            *val = true;
        } else if (strcmp(eq + 1, "off") == 0) {
            *val = false;
        } else {
            ferry_error_setg(errp, "invalid migration URI '%s': option '%s' expects 'on' or 'off', not '%s'", uri,
                             opt, eq + 1);
            free(opt);
            return false;
        }
        *has = true;
        free(opt);
    }
    if (*opts) {
        ferry_error_setg(errp, "invalid migration URI '%s': unexpected '%s' after the port", uri, opts);
        return false;
    }
    if (inet->has_ipv4 && inet->has_ipv6 && !inet->ipv4 && !inet->ipv6) {
        ferry_error_setg(errp, "invalid migration URI '%s': cannot disable both IPv4 and IPv6", uri);
        return false;
    }
    return true;
}

static bool parse_tcp(const char *uri, const char *rest, FerryInetAddress *inet, FerryError **errp)
{
    const char *p = rest;
    if (*p == '[') {
        const char *close = strchr(p, ']');
        if (!close) {
            ferry_error_setg(errp, "invalid migration URI '%s': missing ']' after the IPv6 address", uri);
            return false;
        }
        inet->host = ferry__xstrndup(p + 1, (size_t)(close - p - 1));
        if (!valid_ipv6_literal(inet->host)) {
            ferry_error_setg(errp, "invalid migration URI '%s': '%s' is not an IPv6 address", uri, inet->host);
            return false;
        }
        p = close + 1;
        if (*p != ':') {
            ferry_error_setg(errp, "invalid migration URI '%s': expected ':PORT' after ']'", uri);
            return false;
        }
    } else {
        /* As QEMU's inet_parse: the host ends at the first ':'. An empty host ("tcp::4444") means every
         * address when listening and the local host when connecting. */
        const char *colon = strchr(p, ':');
        if (!colon) {
            ferry_error_setg(errp, "invalid migration URI '%s': expected tcp:HOST:PORT", uri);
            return false;
        }
        inet->host = ferry__xstrndup(p, (size_t)(colon - p));
        if (strlen(inet->host) > HOST_MAX || !valid_hostname(inet->host)) {
            ferry_error_setg(errp, "invalid migration URI '%s': bad host '%s'", uri, inet->host);
            return false;
        }
        p = colon;
    }
    p++; /* the ':' before the port */
    size_t port_len = strcspn(p, ",");
    inet->port = ferry__xstrndup(p, port_len);
    if (!parse_port(uri, inet->port, errp)) {
        return false;
    }
    return parse_inet_options(uri, p + port_len, inet, errp);
}

static bool parse_unix(const char *uri, const char *path, FerryUnixAddress *un, FerryError **errp)
{
    struct sockaddr_un sun;
    if (!*path) {
        ferry_error_setg(errp, "invalid migration URI '%s': empty socket path", uri);
        return false;
    }
    if (strlen(path) >= sizeof(sun.sun_path)) {
        ferry_error_setg(errp, "invalid migration URI '%s': socket path longer than %zu bytes", uri,
                         sizeof(sun.sun_path) - 1);
        return false;
    }
    un->path = ferry__xstrdup(path);
    return true;
}

bool ferry__address_parse_uri(const char *uri, FerryMigrationAddress **out, FerryError **errp)
{
    if (!uri || !*uri) {
        ferry_error_setg(errp, "invalid migration URI '': empty");
        return false;
    }
    FerryMigrationAddress *addr = ferry__xcalloc(1, sizeof(*addr));
    addr->transport = FERRY_TRANSPORT_SOCKET;
    bool ok;
    if (strncmp(uri, "tcp:", 4) == 0) {
        addr->socket.type = FERRY_SOCKET_INET;
        ok = parse_tcp(uri, uri + 4, &addr->socket.inet, errp);
    } else if (strncmp(uri, "unix:", 5) == 0) {
        addr->socket.type = FERRY_SOCKET_UNIX;
        ok = parse_unix(uri, uri + 5, &addr->socket.un, errp);
    } else {
        ferry_error_setg(errp, "unknown migration protocol: '%s'", uri);
        ok = false;
    }
    if (!ok) {
        ferry__address_free(addr);
        return false;
    }
    *out = addr;
    return true;
}

char *ferry__address_to_uri(const FerryMigrationAddress *addr)
{
    const FerrySocketAddress *sa = &addr->socket;
    if (sa->type == FERRY_SOCKET_UNIX) {
        return ferry__xasprintf("unix:%s", sa->un.path ? sa->un.path : "");
    }
    const FerryInetAddress *in = &sa->inet;
    /* Addresses built from JSON by other layers may leave host or port unset: print them as empty. */
    const char *host = in->host ? in->host : "";
    const char *port = in->port ? in->port : "";
    bool brackets = strchr(host, ':') != NULL;
    return ferry__xasprintf("tcp:%s%s%s:%s%s%s%s%s", brackets ? "[" : "", host, brackets ? "]" : "", port,
                            in->has_ipv4 ? ",ipv4=" : "", in->has_ipv4 ? (in->ipv4 ? "on" : "off") : "",
                            in->has_ipv6 ? ",ipv6=" : "", in->has_ipv6 ? (in->ipv6 ? "on" : "off") : "");
}

FerryMigrationAddress *ferry__address_copy(const FerryMigrationAddress *addr)
{
    if (!addr) {
        return NULL;
    }
    FerryMigrationAddress *c = ferry__xmalloc(sizeof(*c));
    *c = *addr;
    c->socket.inet.host = ferry__xstrdup(addr->socket.inet.host);
    c->socket.inet.port = ferry__xstrdup(addr->socket.inet.port);
    c->socket.un.path = ferry__xstrdup(addr->socket.un.path);
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
    free(addr);
}
