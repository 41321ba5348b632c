/*
 * Small internal helpers shared by every layer: allocation that aborts on exhaustion (as GLib does; a migration
 * engine that cannot allocate a few bytes cannot report anything useful either), clocks, logging and parsing of
 * numbers and sizes. Nothing here knows about migration. Internal functions are prefixed ferry__ and never
 * exported from the shared library.
 */
#ifndef FERRY_UTIL_H
#define FERRY_UTIL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/error.h"

/* Memory that a kernel interface valgrind does not know filled in (PAGEMAP_SCAN's vector, say): memcheck would
 * take it for uninitialised. These client requests are a handful of no-op instructions when not under valgrind. */
#ifdef FERRY_HAVE_VALGRIND
#include <valgrind/memcheck.h>
#define FERRY_MARK_DEFINED(p, n) ((void)VALGRIND_MAKE_MEM_DEFINED((p), (n)))
#else
#define FERRY_MARK_DEFINED(p, n) ((void)(p), (void)(n))
#endif

#define FERRY_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define FERRY_MIN(a, b) ((a) < (b) ? (a) : (b))
#define FERRY_MAX(a, b) ((a) > (b) ? (a) : (b))
#define FERRY_DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))

/*
 * Checked invariants. FERRY_ASSERT stays on in release builds (NDEBUG does not remove it): it is for cheap checks
 * whose failure means the engine's own state is wrong (a status, the owner of a slot, a lock the caller must hold),
 * where going on would corrupt a migration. It logs the condition and where, then aborts.
 * FERRY_BUG reports a bug that the engine can survive (a refused status transition): it is logged loudly at error
 * level in every build and aborts a debug build (one without NDEBUG, as the test suite's), so that tests fail on it.
 */
#define FERRY_ASSERT(cond) \
    ((cond) ? (void)0 : ferry__assert_fail(#cond, __FILE__, __LINE__, __func__))
#define FERRY_BUG(...) ferry__bug(__FILE__, __LINE__, __func__, __VA_ARGS__)
_Noreturn void ferry__assert_fail(const char *cond, const char *file, int line, const char *func);
void ferry__bug(const char *file, int line, const char *func, const char *fmt, ...) FERRY_PRINTF(4, 5);

/*
 * A mutex that knows its owner, so that a function whose name ends in _locked can check that its caller holds the
 * lock (FERRY_ASSERT_HELD) instead of saying so in a comment. The owner is written by the thread that holds the
 * mutex and compared by the thread that asks, so a thread sees itself as the owner exactly when it holds it.
 */
typedef struct FerryMutex {
    pthread_mutex_t mu;
    pthread_t owner; /* accessed atomically; 0 when nobody holds it */
} FerryMutex;
#define FERRY_MUTEX_INITIALIZER { PTHREAD_MUTEX_INITIALIZER, 0 }
void ferry__mutex_init(FerryMutex *mx);
void ferry__mutex_destroy(FerryMutex *mx);
void ferry__mutex_lock(FerryMutex *mx);
void ferry__mutex_unlock(FerryMutex *mx);
/* pthread_cond_wait on a FerryMutex the caller holds (it is held again on return). */
void ferry__mutex_cond_wait(FerryMutex *mx, pthread_cond_t *cond);
bool ferry__mutex_held(const FerryMutex *mx);
#define FERRY_ASSERT_HELD(mx) FERRY_ASSERT(ferry__mutex_held(mx))

void *ferry__xmalloc(size_t size);
void *ferry__xcalloc(size_t n, size_t size);
void *ferry__xrealloc(void *p, size_t size);
char *ferry__xstrdup(const char *s);          /* NULL -> NULL */
char *ferry__xstrndup(const char *s, size_t n);
char *ferry__xasprintf(const char *fmt, ...) FERRY_PRINTF(1, 2);
char *ferry__xvasprintf(const char *fmt, va_list ap);

/* Monotonic clock. */
int64_t ferry__clock_ns(void);
int64_t ferry__clock_ms(void);
/* Wall clock, for QMP event timestamps. */
void ferry__realtime(int64_t *seconds, int64_t *microseconds);
void ferry__sleep_ns(int64_t ns);

typedef enum FerryLogLevel { FERRY_LOG_ERROR, FERRY_LOG_WARN, FERRY_LOG_INFO, FERRY_LOG_DEBUG } FerryLogLevel;
/* To stderr, prefixed with the level and a timestamp; the level is set by FERRY_LOG=error|warn|info|debug
 * (default warn). */
/* The longest message ferry__log writes (after escaping); a longer one is cut with a marker. */
#define FERRY_LOG_LINE_MAX 8192
void ferry__log(FerryLogLevel level, const char *fmt, ...) FERRY_PRINTF(2, 3);
bool ferry__log_enabled(FerryLogLevel level);
/* Sets the level FERRY_LOG would, returns the previous one. For tests that look at what is logged. */
FerryLogLevel ferry__log_set_level(FerryLogLevel level);

/* A copy of @s in which every byte that is not part of a valid UTF-8 sequence is replaced by '?': JSON (jansson)
 * refuses invalid UTF-8, and error messages may quote bytes a peer sent. */
char *ferry__utf8_scrub(const char *s);
/* The same, of at most @max bytes of @s: a longer string is cut before the character that would cross @max and
 * gets "... (N bytes cut)" appended. For text a peer sent that a reply quotes (a migration's error-desc). */
char *ferry__utf8_scrub_bounded(const char *s, size_t max);
/* A copy of @s fit to be one line of a log: control characters (C0 including \n, \r and ESC; DEL; C1) and bytes
 * that are not valid UTF-8 are written as escapes (\n, \r, \t, \xNN); valid UTF-8 is kept. ferry__log applies it
 * to every message. */
char *ferry__log_escape(const char *s);

/* Decimal unsigned integer, the whole string, no sign, no overflow. @what names it in the error. */
bool ferry__parse_uint64(const char *s, const char *what, uint64_t *out, FerryError **errp);
/* A size as QEMU spells it: "4096", "256M", "4G", "1.5G"; suffixes B K M G T P E (powers of 1024,
 * case-insensitive); no suffix means bytes. */
bool ferry__parse_size(const char *s, const char *what, uint64_t *out, FerryError **errp);

/*
 * crc32c.c: CRC32C (Castagnoli), the checksum on every stream record (the polynomial of iSCSI and Xen's
 * migration v2 checksum). @crc is a previous result to extend, 0 to start: crc32c(crc32c(0, a), b) equals
 * crc32c(0, a||b), and crc32c(0, "123456789") is 0xE3069283. Three paths compute it, chosen once at run time from
 * what the CPU has: folding with VPCLMULQDQ on 512-bit registers (AVX-512) for buffers of 512 bytes or more, the
 * crc32 instruction (SSE4.2), and a slicing-by-8 table. ferry__crc32c_sw always uses the table (the reference of
 * tests and benchmarks); ferry__crc32c_limit caps the paths the others may use, so that tests and benchmarks reach
 * each one (a path the CPU lacks is never used, whatever the limit).
 */
typedef enum FerryCrc32cImpl {
    FERRY_CRC32C_SW,   /* the table */
    FERRY_CRC32C_HW,   /* the crc32 instruction */
    FERRY_CRC32C_FOLD, /* carry-less multiplication folding */
} FerryCrc32cImpl;
uint32_t ferry__crc32c(uint32_t crc, const void *buf, size_t len);
uint32_t ferry__crc32c_sw(uint32_t crc, const void *buf, size_t len);
/* Whether this CPU (and OS) has the path; the table always is. */
bool ferry__crc32c_available(FerryCrc32cImpl impl);
/* Lets ferry__crc32c and ferry__crc32c_copy use paths up to @max only; returns the previous limit. Not
 * thread-safe: for tests and benchmarks, before checksums run on other threads. */
FerryCrc32cImpl ferry__crc32c_limit(FerryCrc32cImpl max);
/* memcpy(@dst, @src, @len) and ferry__crc32c(@crc, @dst, @len) in one pass over the bytes (the buffers must not
 * overlap). The checksum is of the bytes stored at @dst, even if @src changes meanwhile. */
uint32_t ferry__crc32c_copy(uint32_t crc, void *dst, const void *src, size_t len);
/* The size of the pieces in which checksummed data is received: each piece lands in a small buffer that stays in
 * cache and is copied to its place and checksummed in one pass, rather than checksummed in a second pass over
 * memory it has been read into (docs/memory.md). The environment variable FERRY_CRC_CHUNK (bytes, 4096 to
 * 64 MiB) overrides it for benchmarks. */
size_t ferry__crc32c_chunk(void);

/*
 * keyval.c: QEMU's keyval syntax ("a=1,b.c=x,d.0=p,d.1=q") into a new JSON object whose leaves are strings
 * ({"a":"1","b":{"c":"x"},"d":["p","q"]}). ",," is a comma inside a value; dotted keys build objects; objects whose
 * keys are all indices become lists (0..n-1, no gaps); repeated keys, empty keys, keys without '=' and a key used
 * both as a value and as an object are errors naming the key and its offset. "" gives {}. NULL on error.
 */
typedef struct json_t json_t;
json_t *ferry__keyval_parse(const char *s, FerryError **errp);

#endif
