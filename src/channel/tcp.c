/*
 * The TCP transport: turns a FerryInetAddress into a connected channel or a listening socket, and describes
 * TCP sockets in messages and QMP. Name resolution is getaddrinfo's; every resolved address is tried in order.
 * Listening can try a range of ports ("to"); "keep-alive" and "numeric" are honoured. The byte-moving ops
 * are socket.c's; the accept loop is channel.c's.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "channel/channel-int.h"
#include "util/util.h"

/* QEMU's inet_ai_family_from_address: an explicit "on" picks that family, an explicit "off" picks the other. */
static int inet_family(const FerryInetAddress *in)
{
    if (in->has_ipv4 && in->has_ipv6 && in->ipv4 && in->ipv6) {
        return AF_UNSPEC;
    }
    if ((in->has_ipv6 && in->ipv6) || (in->has_ipv4 && !in->ipv4)) {
        return AF_INET6;
    }
    if ((in->has_ipv4 && in->ipv4) || (in->has_ipv6 && !in->ipv6)) {
        return AF_INET;
    }
    return AF_UNSPEC;
}

static bool is_numeric_host(const char *host)
{
    char buf[INET6_ADDRSTRLEN + 1];
    size_t len = strcspn(host, "%");
    if (len >= sizeof(buf)) {
        return false;
    }
    memcpy(buf, host, len);
    buf[len] = '\0';
    struct in6_addr a6;
    struct in_addr a4;
    return inet_pton(AF_INET, buf, &a4) == 1 || inet_pton(AF_INET6, buf, &a6) == 1;
}

static bool resolve(const FerryInetAddress *in, bool passive, const char *uri, struct addrinfo **res,
                    FerryError **errp)
{
    const char *host = in->host && *in->host ? in->host : NULL;
    struct addrinfo hints = { .ai_family = inet_family(in), .ai_socktype = SOCK_STREAM,
                              .ai_protocol = IPPROTO_TCP };
    if (passive) {
        hints.ai_flags |= AI_PASSIVE;
    }
    if (host && ((in->has_numeric && in->numeric) || is_numeric_host(host))) {
        /* "numeric": the host must be a literal, never looked up (a name then fails to resolve). */
        hints.ai_flags |= AI_NUMERICHOST;
    } else if (host && strcmp(host, "localhost") != 0) {
        /* Do not ask for address families this host has no address of. Not for literals (an explicit
         * "::1" must be tried) and not for localhost (glibc ignores loopback when deciding, so a host
         * with only loopback would resolve nothing). */
        hints.ai_flags |= AI_ADDRCONFIG;
    }
    /* With no host and no AI_PASSIVE, getaddrinfo gives the loopback addresses: "tcp::PORT" connects
     * locally. With AI_PASSIVE it gives the wildcard addresses. */
    int rc = getaddrinfo(host, in->port, &hints, res);
    if (rc != 0) {
        const char *why = rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc);
        ferry_error_setg(errp, "Failed to resolve '%s' for '%s': %s", host ? host : "", uri, why);
        return false;
    }
    return true;
}

void ferry__tcp_tune_connected(int fd, const FerryInetAddress *in)
{
    int one = 1;
    /* The stream layer sends whole buffers: Nagle would only delay the small records at the end of a pass. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (in->has_keep_alive && in->keep_alive) {
        (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    }
}

FerryChannel *ferry__tcp_connect(const FerryInetAddress *in, const char *uri, int cancel_fd, FerryError **errp)
{
    struct addrinfo *res;
    if (!resolve(in, false, uri, &res, errp)) {
        return NULL;
    }
    int last_err = EADDRNOTAVAIL;
    int fd = -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last_err = errno;
            continue;
        }
        /* Before connect, so that the window scale negotiated in the handshake can use the large buffer. */
        ferry__socket_tune(fd);
        int err = ferry__socket_connect(fd, ai->ai_addr, ai->ai_addrlen, cancel_fd);
        if (err == 0) {
            break;
        }
        last_err = err;
        close(fd);
        fd = -1;
        if (err == ECANCELED) {
            break; /* no other address is tried after a cancel */
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        ferry__connect_error(errp, last_err, uri);
        return NULL;
    }
    ferry__tcp_tune_connected(fd, in);
    return ferry__socket_channel_new(fd, "tcp", uri);
}

/* The port of a resolved address, and a copy of it with another port. */
static uint16_t sockaddr_port(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET6) {
        return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    }
    return ntohs(((const struct sockaddr_in *)sa)->sin_port);
}

static void sockaddr_set_port(struct sockaddr *sa, uint16_t port)
{
    if (sa->sa_family == AF_INET6) {
        ((struct sockaddr_in6 *)sa)->sin6_port = htons(port);
    } else {
        ((struct sockaddr_in *)sa)->sin_port = htons(port);
    }
}

bool ferry__tcp_listen(FerryListener *l, const FerryInetAddress *in, FerryError **errp)
{
    struct addrinfo *res;
    if (!resolve(in, true, l->uri, &res, errp)) {
        return false;
    }
    int last_err = EADDRNOTAVAIL;
    const char *last_op = "bind";
    int fd = -1;
    /* One listening socket is enough: the first address that binds. For "::" dual stack is asked for
     * explicitly, so that IPv4 peers reach it too unless ipv4=off said otherwise. With "to", every port from
     * the given one up to "to" is tried on each address until one is free (QEMU's inet_listen_saddr); port 0
     * lets the kernel choose, so "to" has nothing to add there. */
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        uint16_t first = sockaddr_port(ai->ai_addr);
        uint16_t last = first;
        if (in->has_to && first != 0) {
            if (in->to < first) {
                freeaddrinfo(res);
                ferry_error_setg(errp, "Failed to bind to '%s': 'to' (%u) is lower than the port (%u)", l->uri,
                                 (unsigned)in->to, (unsigned)first);
                return false;
            }
            last = in->to;
        }
        struct sockaddr_storage ss;
        memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
        for (uint32_t port = first; port <= last; port++) {
            sockaddr_set_port((struct sockaddr *)&ss, (uint16_t)port);
            fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
            if (fd < 0) {
                last_err = errno;
                last_op = "bind";
                break;
            }
            int one = 1;
            (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
            if (ai->ai_family == AF_INET6) {
                int v6only = in->has_ipv4 && !in->ipv4;
                (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
            }
            /* Accepted sockets inherit the buffer sizes, and the window scale is fixed at the handshake. */
            ferry__socket_tune(fd);
            if (bind(fd, (struct sockaddr *)&ss, ai->ai_addrlen) < 0) {
                last_err = errno;
                last_op = "bind";
                close(fd);
                fd = -1;
                if (last_err == EADDRINUSE) {
                    continue; /* the next port of the range, if any */
                }
                break;        /* the next address */
            }
            if (listen(fd, SOMAXCONN) < 0) {
                last_err = errno;
                last_op = "listen";
                close(fd);
                fd = -1;
                if (last_err == EADDRINUSE) {
                    continue;
                }
                break;
            }
            break;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        ferry_error_setg_errno(errp, last_err, "Failed to %s '%s'", strcmp(last_op, "bind") == 0 ? "bind to" :
                               "listen on", l->uri);
        return false;
    }
    l->fd = fd;
    return true;
}

/* Numeric host and port of a socket address; false if it is not an inet one. */
static bool numeric_name(const struct sockaddr_storage *ss, socklen_t len, char *host, size_t host_len, char *port,
                         size_t port_len)
{
    if (ss->ss_family != AF_INET && ss->ss_family != AF_INET6) {
        return false;
    }
    return getnameinfo((const struct sockaddr *)ss, len, host, (socklen_t)host_len, port, (socklen_t)port_len,
                       NI_NUMERICHOST | NI_NUMERICSERV) == 0;
}

char *ferry__tcp_peer_desc(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char host[NI_MAXHOST], port[NI_MAXSERV];
    if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0 ||
        !numeric_name(&ss, len, host, sizeof(host), port, sizeof(port))) {
        return NULL;
    }
    bool v6 = strchr(host, ':') != NULL;
    return ferry__xasprintf("tcp:%s%s%s:%s", v6 ? "[" : "", host, v6 ? "]" : "", port);
}
