/*
 * Small internal helpers shared by every layer: allocation that aborts on exhaustion (as GLib does; a migration
 * engine that cannot allocate a few bytes cannot report anything useful either), clocks, logging and parsing of
 * numbers and sizes. Nothing here knows about migration. Internal functions are prefixed ferry__ and never
 * exported from the shared library.
 */
#ifndef FERRY_UTIL_H
#define FERRY_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/error.h"

#define FERRY_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define FERRY_MIN(a, b) ((a) < (b) ? (a) : (b))
#define FERRY_MAX(a, b) ((a) > (b) ? (a) : (b))
#define FERRY_DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))

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
void ferry__log(FerryLogLevel level, const char *fmt, ...) FERRY_PRINTF(2, 3);
bool ferry__log_enabled(FerryLogLevel level);

/* A copy of @s in which every byte that is not part of a valid UTF-8 sequence is replaced by '?': JSON (jansson)
 * refuses invalid UTF-8, and error messages may quote bytes a peer sent. */
char *ferry__utf8_scrub(const char *s);

/* Decimal unsigned integer, the whole string, no sign, no overflow. @what names it in the error. */
bool ferry__parse_uint64(const char *s, const char *what, uint64_t *out, FerryError **errp);
/* A size as QEMU spells it: "4096", "256M", "4G", "1.5G"; suffixes B K M G T P E (powers of 1024,
 * case-insensitive); no suffix means bytes. */
bool ferry__parse_size(const char *s, const char *what, uint64_t *out, FerryError **errp);

/*
 * crc32c.c: CRC32C (Castagnoli, reflected polynomial 0x82F63B78, init ~0, final xor ~0; the iSCSI, ext4 and Xen
 * migration v2 checksum). @crc is a previous result to extend, 0 to start: crc32c(crc32c(0, a), b) equals
 * crc32c(0, a||b), and crc32c(0, "123456789") is 0xE3069283. ferry__crc32c uses the CPU's crc32 instruction when
 * it has one (checked once at run time) and the table otherwise. The variants are exported for tests and benchmarks:
 * _sw always uses the table; _hw uses the instruction and is only meaningful when ferry__crc32c_hw_available()
 * (without it, it computes with the table instead of faulting).
 */
uint32_t ferry__crc32c(uint32_t crc, const void *buf, size_t len);
uint32_t ferry__crc32c_sw(uint32_t crc, const void *buf, size_t len);
uint32_t ferry__crc32c_hw(uint32_t crc, const void *buf, size_t len);
bool ferry__crc32c_hw_available(void);

/*
 * keyval.c: QEMU's keyval syntax ("a=1,b.c=x,d.0=p,d.1=q") into a new JSON object whose leaves are strings
 * ({"a":"1","b":{"c":"x"},"d":["p","q"]}). ",," is a comma inside a value; dotted keys build objects; objects whose
 * keys are all indices become lists (0..n-1, no gaps); repeated keys, empty keys, keys without '=' and a key used
 * both as a value and as an object are errors naming the key and its offset. "" gives {}. NULL on error.
 */
typedef struct json_t json_t;
json_t *ferry__keyval_parse(const char *s, FerryError **errp);

#endif
