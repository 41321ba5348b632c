/*
 * Private side of the dirty trackers: the ops table each kind fills and the tracker object they share. Only
 * tracker.c (explicit, none, and host: the adapter to a host program's FerryDirtyTrackerOps, through which
 * ferry-vm's KVM dirty log and dirty ring work) and tracker-uffd.c (uffd-wp) include this; the rest of ferry sees
 * the functions of ram.h. A kind in the library is added by writing its ops and choosing it in tracker.c; a
 * host program brings its own through the public FerryDirtyTrackerOps, without touching the library.
 */
#ifndef FERRY_RAM_TRACKER_INT_H
#define FERRY_RAM_TRACKER_INT_H

#include "ram/ram.h"

typedef struct FerryTrackerOps {
    const char *name;  /* as reported by ferry__tracker_name() */
    bool is_none;      /* harvests tell nothing: the caller resends everything with writers stopped */
    /* Arm tracking over t->blocks (explicit bitmaps are already cleared). May set t->priv. */
    bool (*start)(FerryDirtyTracker *t, FerryError **errp);
    /* OR into @bitmap the pages of @b the kind saw written, re-arming them, and set *found unless it surely set
     * no bit. Explicit marks are merged by the caller; NULL means the kind sees no writes of its own. */
    bool (*harvest)(FerryDirtyTracker *t, FerryRamBlock *b, unsigned long *bitmap, bool *found, FerryError **errp);
    /* Disarm and release t->priv. Never fails: a disarm error leaves writers unblocked anyway. May be NULL. */
    void (*stop)(FerryDirtyTracker *t);
} FerryTrackerOps;

struct FerryDirtyTracker {
    const FerryTrackerOps *ops;
    FerryRamBlock **blocks; /* copy of the array given to start; the blocks stay the engine's */
    size_t nblocks;
    char *note;             /* why a fallback was taken, or NULL */
    void *priv;             /* the kind's own state */
    const char *name;       /* ops->name, or the host tracker's name */
};

extern const FerryTrackerOps ferry__tracker_uffd_wp_ops;
/* The host program's tracker: t->priv is a FerryHostTracker (tracker.c) that forwards to its ops. */
extern const FerryTrackerOps ferry__tracker_host_ops;

#endif
