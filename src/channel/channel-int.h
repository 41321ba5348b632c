/*
 * Private to src/channel: what channel.c (common code, dispatch) shares with the transport files (socket.c for
 * the socket ops table, tcp.c and unix.c for connect and listen). Nothing outside src/channel includes this.
 */
#ifndef FERRY_CHANNEL_INT_H
#define FERRY_CHANNEL_INT_H

#include <stdbool.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <jansson.h>

#include "channel/channel.h"

/* What every socket gets: close-on-exec is set at socket()/accept4() time; this adds the large buffer hint
 * (4 MiB, failure ignored: the kernel caps it at net.core.[rw]mem_max anyway). */
void ferry__socket_tune(int fd);
/* connect(2) that can be abandoned: the socket is made non-blocking for the attempt and the wait polls both the
 * socket and @cancel_fd (-1 for none; readable means "give up"), so that a peer that never answers cannot hold
 * the caller until the kernel's SYN retries run out. Returns 0, an errno value, or ECANCELED. The socket is
 * blocking again on success. */
int ferry__socket_connect(int fd, const struct sockaddr *sa, socklen_t len, int cancel_fd);
/* Wraps a connected fd into a channel whose ops are named @name ("tcp", "unix", "fd"). Takes @fd; cannot
 * fail. */
FerryChannel *ferry__socket_channel_new(int fd, const char *name, const char *desc);

struct FerryListener {
    FerryMigrationAddress *addr;
    char *uri;    /* the address as given, for messages */
    int fd;       /* the listening socket */
    int wake_fd;  /* eventfd written by ferry__listener_shutdown() to wake a blocked accept */
    /* unix only: the socket file we created, removed on free if it is still ours */
    char *unlink_path;
    dev_t unlink_dev;
    ino_t unlink_ino;
};

/* Transport hooks. connect returns a connected channel; listen fills l->fd (and the unix fields). */
FerryChannel *ferry__tcp_connect(const FerryInetAddress *inet, const char *uri, int cancel_fd, FerryError **errp);
bool ferry__tcp_listen(FerryListener *l, const FerryInetAddress *inet, FerryError **errp);
FerryChannel *ferry__unix_connect(const FerryUnixAddress *un, const char *uri, int cancel_fd, FerryError **errp);
bool ferry__unix_listen(FerryListener *l, const FerryUnixAddress *un, FerryError **errp);

/* Peer description of an accepted socket ("tcp:10.0.0.1:51234"), or NULL if the kernel cannot tell. */
char *ferry__tcp_peer_desc(int fd);
/* QMP SocketAddress of a bound socket's local address, NULL (with *errp) if getsockname fails. */
json_t *ferry__socket_local_address(int fd, FerryError **errp);

#endif
