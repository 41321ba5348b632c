/*
 * The helpers declared in util.h: allocation that aborts on exhaustion, monotonic and wall clocks, a small
 * stderr logger (one line per call, control characters escaped), copies of text a peer may have sent (scrubbed
 * to valid UTF-8, bounded, or escaped for a log), and parsers for unsigned integers and QEMU-style sizes. It holds no migration knowledge and no
 * global state apart from the log level, which is read from the environment once.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util/util.h"

/* ---- allocation ---- */

static void oom(size_t size)
{
    /* Nothing sensible can be done without memory; say what failed and stop, as GLib's g_malloc does. */
    fprintf(stderr, "ferry: out of memory allocating %zu bytes\n", size);
    abort();
}

void *ferry__xmalloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p) {
        oom(size);
    }
    return p;
}

void *ferry__xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        oom(n * size);
    }
    return p;
}

void *ferry__xrealloc(void *p, size_t size)
{
    void *q = realloc(p, size ? size : 1);
    if (!q) {
        oom(size);
    }
    return q;
}

char *ferry__xstrdup(const char *s)
{
    if (!s) {
        return NULL;
    }
    char *d = strdup(s);
    if (!d) {
        oom(strlen(s) + 1);
    }
    return d;
}

char *ferry__xstrndup(const char *s, size_t n)
{
    if (!s) {
        return NULL;
    }
    char *d = strndup(s, n);
    if (!d) {
        oom(n + 1);
    }
    return d;
}

char *ferry__xvasprintf(const char *fmt, va_list ap)
{
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) {
        oom(strlen(fmt));
    }
    return s;
}

char *ferry__xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = ferry__xvasprintf(fmt, ap);
    va_end(ap);
    return s;
}

/* ---- clocks ---- */

int64_t ferry__clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t ferry__clock_ms(void)
{
    return ferry__clock_ns() / 1000000;
}

void ferry__realtime(int64_t *seconds, int64_t *microseconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    *seconds = ts.tv_sec;
    *microseconds = ts.tv_nsec / 1000;
}

void ferry__sleep_ns(int64_t ns)
{
    if (ns <= 0) {
        return;
    }
    /* An absolute deadline makes a signal-interrupted sleep resume for the remaining time only. */
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    int64_t total = deadline.tv_nsec + ns % 1000000000;
    deadline.tv_sec += ns / 1000000000 + total / 1000000000;
    deadline.tv_nsec = total % 1000000000;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL) == EINTR) {
    }
}

/* ---- logging ---- */

static FerryLogLevel log_level = FERRY_LOG_WARN;
static pthread_once_t log_once = PTHREAD_ONCE_INIT;

static void log_init(void)
{
    const char *env = getenv("FERRY_LOG");
    if (!env) {
        return;
    }
    static const char *const names[] = { "error", "warn", "info", "debug" };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(names); i++) {
        if (strcasecmp(env, names[i]) == 0) {
            log_level = (FerryLogLevel)i;
            return;
        }
    }
    fprintf(stderr, "ferry: ignoring FERRY_LOG='%s' (expected error, warn, info or debug)\n", env);
}

bool ferry__log_enabled(FerryLogLevel level)
{
    pthread_once(&log_once, log_init);
    return level <= log_level;
}

FerryLogLevel ferry__log_set_level(FerryLogLevel level)
{
    pthread_once(&log_once, log_init);
    FerryLogLevel old = log_level;
    log_level = level;
    return old;
}

void ferry__log(FerryLogLevel level, const char *fmt, ...)
{
    if (!ferry__log_enabled(level)) {
        return;
    }
    static const char *const tags[] = { "error", "warn", "info", "debug" };
    int64_t sec, usec;
    ferry__realtime(&sec, &usec);
    time_t t = (time_t)sec;
    struct tm tm;
    localtime_r(&t, &tm);

    va_list ap;
    va_start(ap, fmt);
    char *raw = ferry__xvasprintf(fmt, ap);
    va_end(ap);
    /* Messages quote what peers sent (section and block names, a destination's failure report): escaped, they
     * cannot forge or hide lines (CR, LF, ESC); one call is always exactly one line. */
    char *escaped = ferry__log_escape(raw);
    free(raw);
    /* And bounded: a peer's 1 MiB failure report is not worth 1 MiB of log per mention. The escaped text is valid
     * UTF-8, so the bound only cuts (on a character boundary, with a marker). */
    char *msg = ferry__utf8_scrub_bounded(escaped, FERRY_LOG_LINE_MAX);
    free(escaped);
    /* One fprintf per line so that lines from different threads do not interleave. */
    fprintf(stderr, "%02d:%02d:%02d.%06lld ferry %s: %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
            (long long)usec, tags[level], msg);
    free(msg);
}

/* ---- parsing ---- */

/* Parses a run of decimal digits at *p into *out, advancing *p; false on overflow. At least one digit must be
 * present (checked by the caller). */
static bool parse_digits(const char **p, uint64_t *out)
{
    uint64_t v = 0;
    const char *s = *p;
    while (*s >= '0' && *s <= '9') {
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, (uint64_t)(*s - '0'), &v)) {
            return false;
        }
        s++;
    }
    *p = s;
    *out = v;
    return true;
}

bool ferry__parse_uint64(const char *s, const char *what, uint64_t *out, FerryError **errp)
{
    if (!s || !*s) {
        ferry_error_setg(errp, "invalid %s '': expected a non-negative decimal integer", what);
        return false;
    }
    const char *p = s;
    if (!(*p >= '0' && *p <= '9')) {
        ferry_error_setg(errp, "invalid %s '%s': expected a non-negative decimal integer", what, s);
        return false;
    }
    uint64_t v;
    if (!parse_digits(&p, &v)) {
        ferry_error_setg(errp, "invalid %s '%s': value too large (maximum %llu)", what, s,
                         (unsigned long long)UINT64_MAX);
        return false;
    }
    if (*p) {
        ferry_error_setg(errp, "invalid %s '%s': expected a non-negative decimal integer", what, s);
        return false;
    }
    *out = v;
    return true;
}

/* log2 of the multiplier of a size suffix, or -1 if @c is not one. */
static int suffix_shift(char c)
{
    switch (tolower((unsigned char)c)) {
    case 'b': return 0;
    case 'k': return 10;
    case 'm': return 20;
    case 'g': return 30;
    case 't': return 40;
    case 'p': return 50;
    case 'e': return 60;
    default: return -1;
    }
}

bool ferry__parse_size(const char *s, const char *what, uint64_t *out, FerryError **errp)
{
    if (!s || !*s) {
        ferry_error_setg(errp, "invalid %s '': expected a size such as 4096, 512K, 256M or 1.5G", what);
        return false;
    }
    const char *p = s;
    if (!(*p >= '0' && *p <= '9')) {
        /* Covers signs, blanks and garbage: QEMU's strtosz rejects negative sizes too. */
        ferry_error_setg(errp, "invalid %s '%s': expected a size such as 4096, 512K, 256M or 1.5G", what, s);
        return false;
    }
    uint64_t whole;
    if (!parse_digits(&p, &whole)) {
        ferry_error_setg(errp, "invalid %s '%s': value too large", what, s);
        return false;
    }

    /* The fraction is kept as digits/10^n, exactly, so that "1.5G" is exactly 1.5 * 2^30. */
    uint64_t frac_num = 0, frac_den = 1;
    bool has_frac = false;
    if (*p == '.') {
        p++;
        if (!(*p >= '0' && *p <= '9')) {
            ferry_error_setg(errp, "invalid %s '%s': expected digits after the decimal point", what, s);
            return false;
        }
        has_frac = true;
        while (*p >= '0' && *p <= '9') {
            /* Digits beyond 18 places cannot change the result by a whole byte below 2^64 / 10^18 units;
             * they are ignored rather than overflowing the exact fraction. */
            if (frac_den < 1000000000000000000ULL) {
                frac_num = frac_num * 10 + (uint64_t)(*p - '0');
                frac_den *= 10;
            }
            p++;
        }
    }

    int shift = 0;
    if (*p) {
        shift = suffix_shift(*p);
        if (shift < 0 || p[1] != '\0') {
            ferry_error_setg(errp, "invalid %s '%s': unknown size suffix '%s' (expected B, K, M, G, T, P or E)",
                             what, s, p);
            return false;
        }
    }
    if (has_frac && frac_num != 0 && shift == 0) {
        ferry_error_setg(errp, "invalid %s '%s': a size in bytes cannot have a fraction", what, s);
        return false;
    }

    uint64_t value;
    if (shift > 0 && whole > (UINT64_MAX >> shift)) {
        ferry_error_setg(errp, "invalid %s '%s': value too large", what, s);
        return false;
    }
    value = whole << shift;
    if (frac_num) {
        /* frac_num / frac_den * 2^shift, computed in 128 bits to stay exact; truncated to whole bytes. */
        unsigned __int128 part = ((unsigned __int128)frac_num << shift) / frac_den;
        if (part > UINT64_MAX || __builtin_add_overflow(value, (uint64_t)part, &value)) {
            ferry_error_setg(errp, "invalid %s '%s': value too large", what, s);
            return false;
        }
    }
    *out = value;
    return true;
}

/* Length of the valid UTF-8 sequence at @s (1 to 4 bytes), or 0 if the bytes there are not one. Overlong forms,
 * surrogates and code points above U+10FFFF are invalid, as jansson judges them. */
static size_t utf8_sequence_len(const unsigned char *s)
{
    unsigned char c = s[0];
    if (c < 0x80) {
        return 1;
    }
    size_t n;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            return 0; /* also stops at the terminating NUL */
        }
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF)) {
        return 0;
    }
    return n;
}

/* A control character: C0, DEL, or C1 (U+0080..U+009F, which some terminals obey as they obey ESC). @n is the
 * length of the valid UTF-8 sequence at @p. */
static bool is_control(const unsigned char *p, size_t n)
{
    return (n == 1 && (p[0] < 0x20 || p[0] == 0x7f)) || (n == 2 && p[0] == 0xC2 && p[1] < 0xA0);
}

/* Writes the escape of byte @c to @out (room for 4 bytes); returns its length. */
static size_t escape_byte(unsigned char c, char *out)
{
    static const char hex[] = "0123456789abcdef";
    char named = c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : 0;
    out[0] = '\\';
    if (named) {
        out[1] = named;
        return 2;
    }
    out[1] = 'x';
    out[2] = hex[c >> 4];
    out[3] = hex[c & 0xF];
    return 4;
}

/*
 * The one walk over text that may not be valid UTF-8, behind ferry__utf8_scrub, ferry__utf8_scrub_bounded and
 * ferry__log_escape. Valid sequences are kept. A byte that is not part of one becomes '?', or with @escape an
 * escape (\xNN); with @escape, control characters are escaped too (\n, \r, \t by name). The copy stops before the
 * character that would take it past @max bytes of @s; *used (if not NULL) is how many bytes of @s it took.
 */
static char *utf8_copy(const char *s, size_t max, bool escape, size_t *used)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t len = strlen(s);
    /* An escape is at most 4 bytes for each byte of @s. */
    char *out = ferry__xmalloc((escape ? 4 * len : len) + 1);
    size_t i = 0, o = 0;
    while (i < len) {
        size_t n = utf8_sequence_len(p + i);
        size_t take = n ? n : 1;
        if (take > max - i) {
            break;
        }
        if (n && !(escape && is_control(p + i, n))) {
            memcpy(out + o, p + i, n);
            o += n;
        } else if (!escape) {
            out[o++] = '?';
        } else {
            for (size_t k = 0; k < take; k++) {
                o += escape_byte(p[i + k], out + o);
            }
        }
        i += take;
    }
    out[o] = '\0';
    if (used) {
        *used = i;
    }
    return out;
}

char *ferry__utf8_scrub(const char *s)
{
    return utf8_copy(s, SIZE_MAX, false, NULL);
}

char *ferry__utf8_scrub_bounded(const char *s, size_t max)
{
    size_t used;
    char *clean = utf8_copy(s, max, false, &used);
    size_t len = used + strlen(s + used);
    if (used == len) {
        return clean;
    }
    char *cut = ferry__xasprintf("%s... (%zu bytes cut)", clean, len - used);
    free(clean);
    return cut;
}

char *ferry__log_escape(const char *s)
{
    return utf8_copy(s, SIZE_MAX, true, NULL);
}
