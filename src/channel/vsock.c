/*
 * The vsock transport (AF_VSOCK, between a VM and its host): turns a FerryVsockAddress (cid and port as decimal
 * strings, as QAPI has them) into a connected channel or a listening socket. Whether a vsock transport is loaded
 * (vhost-vsock, virtio-vsock, vsock-loopback) is found out when the socket is created or connected; the error then
 * carries the kernel's reason. The byte-moving ops are socket.c's; the accept loop is channel.c's.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/vm_sockets.h>

#include "channel/channel-int.h"
#include "util/util.h"

static bool parse_u32(const char *s, const char *what, const char *uri, uint32_t *out, FerryError **errp)
{
    uint64_t v;
    FerryError *err = NULL;
    if (!s || !ferry__parse_uint64(s, what, &v, &err) || v > UINT32_MAX) {
        ferry_error_setg(errp, "Invalid vsock %s '%s' in '%s': expected a decimal number up to %u", what,
                         s ? s : "", uri, UINT32_MAX);
        ferry_error_free(err);
        return false;
    }
    *out = (uint32_t)v;
    return true;
}

static bool fill_sockaddr(struct sockaddr_vm *svm, const FerryVsockAddress *vs, const char *uri, FerryError **errp)
{
    memset(svm, 0, sizeof(*svm));
    svm->svm_family = AF_VSOCK;
    return parse_u32(vs->cid, "cid", uri, &svm->svm_cid, errp) &&
           parse_u32(vs->port, "port", uri, &svm->svm_port, errp);
}

FerryChannel *ferry__vsock_connect(const FerryVsockAddress *vs, const char *uri, int cancel_fd, FerryError **errp)
{
    struct sockaddr_vm svm;
    if (!fill_sockaddr(&svm, vs, uri, errp)) {
        return NULL;
    }
    return ferry__socket_connect_channel(AF_VSOCK, (struct sockaddr *)&svm, sizeof(svm), "vsock", uri, cancel_fd,
                                         errp);
}

bool ferry__vsock_listen(FerryListener *l, const FerryVsockAddress *vs, FerryError **errp)
{
    struct sockaddr_vm svm;
    if (!fill_sockaddr(&svm, vs, l->uri, errp)) {
        return false;
    }
    int fd = ferry__socket_bind_listen(AF_VSOCK, (struct sockaddr *)&svm, sizeof(svm), l->uri, errp);
    if (fd < 0) {
        return false;
    }
    l->fd = fd;
    return true;
}
