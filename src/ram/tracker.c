/*
 * The dirty tracker interface (ram.h) and its two trivial kinds: "explicit", which reports only the marks made
 * with ferry_ram_mark_dirty(), and "none", which reports the same marks but tells the caller that nothing else is
 * seen; plus "host", the adapter that forwards to a tracker the host program provides (FerryDirtyTrackerOps, a
 * VMM's KVM dirty log). The write-protect kind lives in tracker-uffd.c. This file chooses a kind, keeps the fallback note and
 * merges explicit marks into every harvest; it knows nothing about how pages are sent.
 */
#include <stdlib.h>
#include <string.h>

#include "ram/tracker-int.h"
#include "util/bitmap.h"
#include "util/util.h"

static const FerryTrackerOps explicit_ops = {
    .name = "explicit",
    .is_none = false,
};

static const FerryTrackerOps none_ops = {
    .name = "none",
    .is_none = true,
};

/* The host tracker's ops and opaque, kept in t->priv. */
typedef struct FerryHostTracker {
    const FerryDirtyTrackerOps *ops;
    void *opaque;
} FerryHostTracker;

static bool host_start(FerryDirtyTracker *t, FerryError **errp)
{
    FerryHostTracker *h = t->priv;
    return h->ops->start ? h->ops->start(h->opaque, errp) : true;
}

static bool host_harvest(FerryDirtyTracker *t, FerryRamBlock *b, unsigned long *bitmap, bool *found,
                         FerryError **errp)
{
    FerryHostTracker *h = t->priv;
    *found = true; /* the host's harvest does not say */
    return h->ops->harvest(h->opaque, b, bitmap, errp);
}

static void host_stop(FerryDirtyTracker *t)
{
    FerryHostTracker *h = t->priv;
    if (h->ops->stop) {
        h->ops->stop(h->opaque);
    }
    free(h);
    t->priv = NULL;
}

const FerryTrackerOps ferry__tracker_host_ops = {
    .name = "host",
    .is_none = false,
    .start = host_start,
    .harvest = host_harvest,
    .stop = host_stop,
};

/* The tracker object over a copy of @blocks, with the explicit marks cleared: pass 1 sends every page anyway, so
 * marks made before the start carry no information, and clearing them before arming means a mark made from now
 * on is never lost. */
static FerryDirtyTracker *tracker_alloc(const FerryTrackerOps *ops, FerryRamBlock **blocks, size_t nblocks)
{
    FerryDirtyTracker *t = ferry__xcalloc(1, sizeof(*t));
    t->blocks = ferry__xcalloc(nblocks ? nblocks : 1, sizeof(*t->blocks));
    if (nblocks) {
        memcpy(t->blocks, blocks, nblocks * sizeof(*blocks));
    }
    t->nblocks = nblocks;
    for (size_t i = 0; i < nblocks; i++) {
        /* A bitmap without the flag has no bit set (ferry_ram_mark_dirty sets the flag after the bits): clearing
         * only the flagged ones keeps the start from touching every block's bitmap. */
        if (__atomic_exchange_n(&blocks[i]->explicit_any, false, __ATOMIC_SEQ_CST)) {
            ferry__bitmap_zero(blocks[i]->explicit_dirty, (size_t)blocks[i]->npages);
        }
    }
    t->ops = ops;
    t->name = ops->name;
    return t;
}

static void tracker_free(FerryDirtyTracker *t)
{
    free(t->note);
    free(t->blocks);
    free(t);
}

FerryDirtyTracker *ferry__tracker_start_host(const FerryDirtyTrackerOps *ops, void *opaque, FerryRamBlock **blocks,
                                             size_t nblocks, FerryError **errp)
{
    if (!ops || !ops->harvest || !ops->name) {
        ferry_error_setg(errp, "dirty tracker host: the host program registered no tracker");
        return NULL;
    }
    FerryDirtyTracker *t = tracker_alloc(&ferry__tracker_host_ops, blocks, nblocks);
    FerryHostTracker *h = ferry__xcalloc(1, sizeof(*h));
    h->ops = ops;
    h->opaque = opaque;
    t->priv = h;
    t->name = ops->name;
    if (!host_start(t, errp)) {
        ferry_error_prepend(errp, "dirty tracker %s: ", ops->name);
        free(h);
        tracker_free(t);
        return NULL;
    }
    return t;
}

bool ferry_tracker_kind_parse(const char *name, FerryTrackerKind *kind)
{
    static const struct {
        const char *name;
        FerryTrackerKind kind;
    } names[] = {
        {"auto", FERRY_TRACKER_AUTO},
        {"uffd-wp", FERRY_TRACKER_UFFD_WP},
        {"explicit", FERRY_TRACKER_EXPLICIT},
        {"none", FERRY_TRACKER_NONE},
    };
    if (!name) {
        return false;
    }
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(names); i++) {
        if (strcmp(name, names[i].name) == 0) {
            *kind = names[i].kind;
            return true;
        }
    }
    return false;
}

FerryDirtyTracker *ferry__tracker_start(FerryTrackerKind kind, FerryRamBlock **blocks, size_t nblocks,
                                        FerryError **errp)
{
    const FerryTrackerOps *ops;
    char *note = NULL;

    switch (kind) {
    case FERRY_TRACKER_AUTO: {
        FerryError *err = NULL;
        if (ferry__tracker_uffd_wp_probe(&err)) {
            ops = &ferry__tracker_uffd_wp_ops;
        } else {
            note = ferry__xasprintf("userfaultfd write-protect unavailable: %s", ferry_error_msg(err));
            ferry_error_free(err);
            ops = &none_ops;
        }
        break;
    }
    case FERRY_TRACKER_UFFD_WP:
        if (!ferry__tracker_uffd_wp_probe(errp)) {
            ferry_error_prepend(errp, "dirty tracker uffd-wp: ");
            return NULL;
        }
        ops = &ferry__tracker_uffd_wp_ops;
        break;
    case FERRY_TRACKER_EXPLICIT:
        ops = &explicit_ops;
        break;
    case FERRY_TRACKER_NONE:
        ops = &none_ops;
        break;
    case FERRY_TRACKER_HOST:
        ferry_error_setg(errp, "dirty tracker host: the host program registered no tracker");
        return NULL;
    default:
        ferry_error_setg(errp, "unknown dirty tracker kind %d", (int)kind);
        return NULL;
    }

    FerryDirtyTracker *t = tracker_alloc(ops, blocks, nblocks);
    t->note = note;
    if (ops->start) {
        FerryError *err = NULL;
        if (!ops->start(t, &err)) {
            if (kind != FERRY_TRACKER_AUTO) {
                ferry_error_prepend(&err, "dirty tracker %s: ", ops->name);
                ferry_error_propagate(errp, err);
                tracker_free(t);
                return NULL;
            }
            /* The probe passed but arming these blocks did not (for example a block the kernel cannot
             * write-protect): AUTO still falls back rather than failing the migration. */
            free(t->note);
            t->note = ferry__xasprintf("userfaultfd write-protect unavailable: %s", ferry_error_msg(err));
            ferry_error_free(err);
            t->ops = &none_ops;
            t->name = none_ops.name;
            t->priv = NULL;
        }
    }
    if (t->note) {
        ferry__log(FERRY_LOG_INFO, "dirty tracker: %s, using %s", t->note, t->name);
    }
    return t;
}

const char *ferry__tracker_name(const FerryDirtyTracker *t)
{
    return t->name;
}

const char *ferry__tracker_note(const FerryDirtyTracker *t)
{
    return t->note;
}

bool ferry__tracker_is_none(const FerryDirtyTracker *t)
{
    return t->ops->is_none;
}

bool ferry__tracker_harvest(FerryDirtyTracker *t, FerryRamBlock *b, unsigned long *bitmap, FerryError **errp)
{
    bool found;
    return ferry__tracker_harvest_found(t, b, bitmap, &found, errp);
}

bool ferry__tracker_harvest_found(FerryDirtyTracker *t, FerryRamBlock *b, unsigned long *bitmap, bool *found,
                                  FerryError **errp)
{
    *found = false;
    bool tracked = false;
    for (size_t i = 0; i < t->nblocks && !tracked; i++) {
        tracked = t->blocks[i] == b;
    }
    if (!tracked) {
        ferry_error_setg(errp, "RAM block '%s' is not covered by the %s dirty tracker", b->name, t->name);
        return false;
    }
    if (t->ops->harvest && !t->ops->harvest(t, b, bitmap, found, errp)) {
        return false;
    }
    /* The flag first, then the bits: a mark whose flag comes after the exchange keeps its bits for the next
     * harvest, and the last harvest (writers stopped) sees every flag. Unmarked blocks cost nothing here. */
    if (__atomic_exchange_n(&b->explicit_any, false, __ATOMIC_SEQ_CST)) {
        ferry__bitmap_move_atomic(bitmap, b->explicit_dirty, (size_t)b->npages);
        *found = true;
    }
    return true;
}

void ferry__tracker_stop(FerryDirtyTracker *t)
{
    if (!t) {
        return;
    }
    if (t->ops->stop) {
        t->ops->stop(t);
    }
    tracker_free(t);
}
