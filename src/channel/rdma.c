/*
 * The rdma transport, as far as this build goes: an rdma address parses and validates (address.c), and using
 * it fails with the reason it cannot work here. ferry has no RDMA data path; when the host has no RDMA device
 * at all (/sys/class/infiniband is empty or missing) the error says that, which is the usual case.
 */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include "channel/channel-int.h"
#include "util/util.h"

/* Number of RDMA devices the kernel exposes. */
static size_t rdma_device_count(void)
{
    DIR *d = opendir("/sys/class/infiniband");
    if (!d) {
        return 0;
    }
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.') {
            n++;
        }
    }
    closedir(d);
    return n;
}

static void set_unavailable(const char *uri, FerryError **errp)
{
    if (rdma_device_count() == 0) {
        ferry_error_setg(errp, "RDMA migration is not available: no RDMA device is present (for '%s')", uri);
    } else {
        ferry_error_setg(errp, "RDMA migration is not available: ferry has no RDMA transport (for '%s')", uri);
    }
}

FerryChannel *ferry__rdma_connect(const FerryInetAddress *ra, const char *uri, FerryError **errp)
{
    (void)ra;
    set_unavailable(uri, errp);
    return NULL;
}

bool ferry__rdma_listen(FerryListener *l, const FerryInetAddress *ra, FerryError **errp)
{
    (void)ra;
    set_unavailable(l->uri, errp);
    return false;
}
