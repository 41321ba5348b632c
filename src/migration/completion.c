/*
 * The completion policy's decision (completion-policy "ensure", ferry's own parameter): after every pass of a
 * precopy that has not converged, from what the pass measured, go on with precopy, throttle the workload, or
 * switch to postcopy. Pure functions of their inputs, so that the rule is unit-tested apart from a migration
 * (tests/unit/migration/test-completion.c); source.c gathers the inputs, applies the decision and reports it
 * (query-migrate "completion", the MIGRATION_COMPLETION event).
 *
 * The rule. Precopy is predicted to need ferry__precopy_predict_ms() more; it is held to a bound: the operator's
 * completion-deadline from migrate, or by default three times the first pass (the time the RAM takes to send
 * once). When the prediction misses the bound, cheapest for the workload first:
 *   1. throttle to the least percentage under which the prediction fits the time left (with a margin), if that
 *      is at most CP_MAX_THROTTLE % or postcopy is not available; raised on a later pass if the measured rate
 *      still misses (a paced writer that has CPU to spare catches up after its sleeps, as a guest does under
 *      QEMU's throttle: the next pass measures that, and the throttle it then asks for is higher);
 *   2. otherwise switch to postcopy: the workload runs at the destination at once and loses only the time its
 *      faults wait. Also at once when the pass saturated (it found nearly all it sent dirty again, so the rate
 *      it measured is the RAM's size over the pass and the real rate is unknown) and when the bound is reached;
 *   3. without postcopy, when no computed throttle fits, step the throttle up as auto-converge does.
 * Unlike auto-converge it decides after the first pass rather than after two bad ones, and stops throttling
 * where postcopy costs the workload less. It is not a controller of the dirty rate itself (dirty-limit is).
 */
#include <stdio.h>

#include "migration/migration-priv.h"
#include "util/util.h"

#define CP_MARGIN 0.8       /* a throttle is chosen for precopy to fit in this share of the time left */
#define CP_MAX_THROTTLE 50  /* beyond this, the throttle costs the workload more than postcopy would */
#define CP_MAX_PASSES 10000 /* a prediction longer than this many passes is "never" */
#define CP_SATURATED 0.9    /* a pass that finds this share of what it sent dirty again saturates */

int64_t ferry__precopy_predict_ms(double remaining, double dirty, double bandwidth, int64_t downtime_ms,
                                  unsigned *passes)
{
    double target = bandwidth * (double)downtime_ms / 1000.0;
    unsigned n = 0;
    double t = 0, left = remaining;
    if (bandwidth <= 0) {
        return -1;
    }
    /* Each pass sends what is left (left / bandwidth seconds) while the workload dirties dirty * that much. */
    while (left > target) {
        if (dirty >= bandwidth || ++n > CP_MAX_PASSES) {
            return -1;
        }
        t += left / bandwidth;
        left = dirty * (left / bandwidth);
    }
    if (passes) {
        *passes = n;
    }
    return (int64_t)(t * 1000.0);
}

/* The throttle (percent) under which precopy would finish within CP_MARGIN of @time_left_ms, for a workload
 * that dirties @dirty bytes/s under @current % of throttle now (assumed to scale with the CPU it is left); above
 * 100 when no throttle can (even a workload that dirties nothing would not). The prediction falls as the dirty
 * rate does, so the highest rate that fits is found by bisection. */
static int throttle_needed(double remaining, double dirty, double bandwidth, int64_t downtime_ms,
                           int64_t time_left_ms, int current)
{
    double budget = CP_MARGIN * (double)time_left_ms;
    double unthrottled = dirty / (1.0 - current / 100.0);
    int64_t t0 = ferry__precopy_predict_ms(remaining, 0, bandwidth, downtime_ms, NULL);
    if (t0 < 0 || (double)t0 > budget) {
        return 101;
    }
    double lo = 0, hi = unthrottled;
    for (int i = 0; i < 40; i++) {
        double mid = (lo + hi) / 2;
        int64_t t = ferry__precopy_predict_ms(remaining, mid, bandwidth, downtime_ms, NULL);
        if (t >= 0 && (double)t <= budget) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    return unthrottled > 0 ? (int)(100.0 * (1.0 - lo / unthrottled)) + 1 : 0;
}

void ferry__completion_decide(const FerryCompletionInput *in, FerryCompletionDecision *out)
{
    const double mib = 1024.0 * 1024.0;
    double remaining = (double)in->pending_pages * (double)in->page_size;
    double dirty = (double)in->dirty_pages_rate * (double)in->page_size;
    bool saturated = (double)in->pending_pages >= CP_SATURATED * (double)in->pages_in_pass;
    int64_t predicted = saturated ? -1
                                  : ferry__precopy_predict_ms(remaining, dirty, in->bandwidth, in->downtime_ms, NULL);
    int64_t elapsed = in->elapsed_ms, bound = in->bound_ms;
    char why[128];

    *out = (FerryCompletionDecision){ .action = FERRY_COMPLETION_PRECOPY, .predicted_ms = predicted };
    if (predicted >= 0 && elapsed + predicted <= bound) {
        snprintf(out->reason, sizeof(out->reason),
                 "dirty rate %.0f MiB/s against %.0f MiB/s of bandwidth: precopy converges in about %lld ms",
                 dirty / mib, in->bandwidth / mib, (long long)predicted);
        return;
    }
    if (elapsed >= bound) {
        snprintf(why, sizeof(why), "%lld ms since migrate reached the bound of %lld ms", (long long)elapsed,
                 (long long)bound);
    } else if (saturated) {
        snprintf(why, sizeof(why), "the pass found %.0f%% of what it sent dirty again: precopy never converges",
                 100.0 * (double)in->pending_pages / (double)FERRY_MAX(in->pages_in_pass, (uint64_t)1));
    } else if (predicted < 0) {
        snprintf(why, sizeof(why), "dirty rate %.0f MiB/s against %.0f MiB/s of bandwidth never converges",
                 dirty / mib, in->bandwidth / mib);
    } else {
        snprintf(why, sizeof(why), "precopy needs about %lld ms more, %lld ms past the bound of %lld ms",
                 (long long)predicted, (long long)(elapsed + predicted - bound), (long long)bound);
    }
    if (elapsed < bound && in->can_throttle && !saturated) {
        int want = throttle_needed(remaining, dirty, in->bandwidth, in->downtime_ms, bound - elapsed, in->throttle);
        if (want > in->throttle && want <= in->max_throttle && (want <= CP_MAX_THROTTLE || !in->can_postcopy)) {
            out->action = FERRY_COMPLETION_THROTTLE;
            out->throttle = want;
            snprintf(out->reason, sizeof(out->reason), "%s: workload throttled to %d%%", why, want);
            return;
        }
    }
    if (in->can_postcopy) {
        out->action = FERRY_COMPLETION_POSTCOPY;
        snprintf(out->reason, sizeof(out->reason), "%s%s: switching to postcopy", why,
                 in->throttle ? " even throttled" : "");
        return;
    }
    int next = (int)FERRY_MIN(in->throttle ? in->throttle + in->throttle_increment : in->throttle_initial,
                              in->max_throttle);
    if (in->can_throttle && next > in->throttle) {
        out->action = FERRY_COMPLETION_THROTTLE;
        out->throttle = next;
        snprintf(out->reason, sizeof(out->reason), "%s, no postcopy: workload throttled to %d%%", why, next);
        return;
    }
    snprintf(out->reason, sizeof(out->reason), "%s, but the throttle is at its maximum and postcopy is off", why);
}

const char *ferry__completion_action_name(FerryCompletionAction a)
{
    static const char *const names[] = {
        [FERRY_COMPLETION_PRECOPY] = "precopy",
        [FERRY_COMPLETION_THROTTLE] = "throttle",
        [FERRY_COMPLETION_POSTCOPY] = "postcopy",
    };
    return names[a];
}
