/*
 * The migration address model, named after QEMU's QAPI MigrationAddress / SocketAddress so that the JSON forms
 * (a later issue) map onto it one to one. A URI string is parsed into this once, at the edge (QMP, command line);
 * nothing below the edge takes a string URI. Today: socket transport, inet (TCP, v4/v6) and unix.
 */
#ifndef FERRY_ADDRESS_H
#define FERRY_ADDRESS_H

#include <stdbool.h>

#include "ferry/error.h"

typedef enum FerryTransport {
    FERRY_TRANSPORT_SOCKET,
} FerryTransport;

typedef enum FerrySocketType {
    FERRY_SOCKET_INET,
    FERRY_SOCKET_UNIX,
} FerrySocketType;

typedef struct FerryInetAddress {
    char *host;  /* name or literal; IPv6 literal without brackets */
    char *port;  /* service name or number, as QEMU keeps it: a string */
    bool has_ipv4, ipv4;
    bool has_ipv6, ipv6;
} FerryInetAddress;

typedef struct FerryUnixAddress {
    char *path;
} FerryUnixAddress;

typedef struct FerrySocketAddress {
    FerrySocketType type;
    FerryInetAddress inet;  /* type == INET */
    FerryUnixAddress un;    /* type == UNIX */
} FerrySocketAddress;

typedef struct FerryMigrationAddress {
    FerryTransport transport;
    FerrySocketAddress socket;  /* transport == SOCKET */
} FerryMigrationAddress;

/* "tcp:HOST:PORT" (IPv6 as "[::1]"; options ",ipv4=on|off,ipv6=on|off"), "unix:PATH". Errors name what is wrong. */
bool ferry__address_parse_uri(const char *uri, FerryMigrationAddress **out, FerryError **errp);
/* Canonical URI, for logs and messages. Caller frees. */
char *ferry__address_to_uri(const FerryMigrationAddress *addr);
FerryMigrationAddress *ferry__address_copy(const FerryMigrationAddress *addr);
void ferry__address_free(FerryMigrationAddress *addr); /* NULL is a no-op */

#endif
