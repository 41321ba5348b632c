/*
 * The migration address model, named after QEMU's QAPI MigrationChannel / MigrationAddress / SocketAddress so
 * that their JSON forms map onto it one to one (existing QMP JSON works unchanged). A URI string or a JSON object
 * is parsed into this once, at the edge (QMP, HMP, command line); nothing below the edge takes a string URI.
 * Validation here is syntactic and strict (every error names the member or the part of the URI); whether a host
 * resolves, a file opens or a port is free is found out when the transport connects or listens.
 */
#ifndef FERRY_ADDRESS_H
#define FERRY_ADDRESS_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "ferry/error.h"

typedef enum FerryTransport {
    FERRY_TRANSPORT_SOCKET, /* "socket" */
    FERRY_TRANSPORT_EXEC,   /* "exec" */
    FERRY_TRANSPORT_RDMA,   /* "rdma" */
    FERRY_TRANSPORT_FILE,   /* "file" */
} FerryTransport;

typedef enum FerrySocketType {
    FERRY_SOCKET_INET,  /* "inet" */
    FERRY_SOCKET_UNIX,  /* "unix" */
    FERRY_SOCKET_VSOCK, /* "vsock" */
    FERRY_SOCKET_FD,    /* "fd" */
} FerrySocketType;

typedef struct FerryInetAddress {
    char *host;  /* name or literal; IPv6 literal without brackets; "" = any (listen) / localhost (connect) */
    char *port;  /* service name or number, kept as a string as QAPI does */
    bool has_numeric, numeric;
    bool has_to;
    uint16_t to; /* highest port to try when listening ("to") */
    bool has_ipv4, ipv4;
    bool has_ipv6, ipv6;
    bool has_keep_alive, keep_alive;
} FerryInetAddress;

typedef struct FerryUnixAddress {
    char *path;
    bool has_abstract, abstract; /* Linux abstract namespace: path is the name, no file */
} FerryUnixAddress;

typedef struct FerryVsockAddress {
    char *cid;  /* strings, as QAPI's VsockSocketAddress */
    char *port;
} FerryVsockAddress;

typedef struct FerryFdAddress {
    char *str;  /* a name given to getfd, or a decimal fd number inherited by the process */
} FerryFdAddress;

typedef struct FerrySocketAddress {
    FerrySocketType type;
    FerryInetAddress inet;   /* type == INET */
    FerryUnixAddress un;     /* type == UNIX */
    FerryVsockAddress vsock; /* type == VSOCK */
    FerryFdAddress fd;       /* type == FD */
} FerrySocketAddress;

typedef struct FerryExecAddress {
    char **args;  /* argv, NULL-terminated; args[0] is the program */
    size_t nargs;
} FerryExecAddress;

typedef struct FerryFileAddress {
    char *filename;
    uint64_t offset;
} FerryFileAddress;

typedef struct FerryMigrationAddress {
    FerryTransport transport;
    FerrySocketAddress socket; /* transport == SOCKET */
    FerryExecAddress exec;     /* transport == EXEC */
    FerryInetAddress rdma;     /* transport == RDMA (host and port only) */
    FerryFileAddress file;     /* transport == FILE */
} FerryMigrationAddress;

typedef enum FerryChannelType {
    FERRY_CHANNEL_MAIN, /* "main" */
    FERRY_CHANNEL_CPR,  /* "cpr" */
    FERRY_CHANNEL_TYPE__MAX,
} FerryChannelType;

typedef struct FerryMigrationChannel {
    FerryChannelType type;
    FerryMigrationAddress *addr;
} FerryMigrationChannel;

/*
 * URIs, QEMU's spellings: "tcp:HOST:PORT[,to=N][,ipv4=on|off][,ipv6=on|off]" (IPv6 as "[::1]"), "unix:PATH",
 * "vsock:CID:PORT", "fd:NAME-OR-NUMBER", "exec:COMMAND LINE" (args = /bin/sh -c "COMMAND LINE"),
 * "file:PATH[,offset=N]" (N with size suffixes), "rdma:HOST:PORT". Errors name what is wrong.
 */
bool ferry__address_parse_uri(const char *uri, FerryMigrationAddress **out, FerryError **errp);
/* Canonical URI, for logs, messages and HMP. Caller frees. An exec address whose args are not
 * ["/bin/sh", "-c", X] prints as "exec:" followed by the args joined with spaces. */
char *ferry__address_to_uri(const FerryMigrationAddress *addr);
FerryMigrationAddress *ferry__address_copy(const FerryMigrationAddress *addr);
/* An exec address's args joined with spaces, for messages ("/bin/sh -c cat > f"). Caller frees. */
char *ferry__exec_args_join(const FerryExecAddress *ex);
void ferry__address_free(FerryMigrationAddress *addr); /* NULL is a no-op */

/*
 * JSON: QAPI's MigrationAddress ({"transport": "socket", "type": "inet", "host": ..., "port": ...} and so on:
 * the socket members are flattened into the address object, as QAPI's union does). Strict: unknown keys, wrong
 * types, missing members, empty strings, bad ports, unix paths longer than sun_path, non-numeric offsets are
 * errors naming the member as @where + "." + member (e.g. "addr.port"). to_json returns a new reference that
 * from_json accepts.
 */
bool ferry__address_from_json(json_t *obj, const char *where, FerryMigrationAddress **out, FerryError **errp);
json_t *ferry__address_to_json(const FerryMigrationAddress *addr);

/* MigrationChannel {"channel-type": "main"|"cpr", "addr": MigrationAddress}. @where names it in errors
 * ("channels[0]"). */
bool ferry__channel_from_json(json_t *obj, const char *where, FerryMigrationChannel **out, FerryError **errp);
json_t *ferry__channel_to_json(const FerryMigrationChannel *ch);
FerryMigrationChannel *ferry__migration_channel_copy(const FerryMigrationChannel *ch);
void ferry__migration_channel_free(FerryMigrationChannel *ch); /* NULL is a no-op */
/* "main", "cpr"; from_name false on an unknown name. */
const char *ferry__channel_type_name(FerryChannelType t);
bool ferry__channel_type_from_name(const char *name, FerryChannelType *t);

/*
 * The "channels" argument of migrate / migrate-incoming: a JSON array of MigrationChannel with exactly one "main"
 * (and at most one of each type). A "cpr" channel is checked, then refused: ferry has no cpr-transfer mode yet.
 * Returns the main channel's address (new). Errors name "channels[i]...".
 */
bool ferry__channels_parse_main(json_t *channels, FerryMigrationAddress **main_out, FerryError **errp);

#endif
