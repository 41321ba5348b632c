/*
 * Framing of a QMP client's input: where the next JSON value ends in a stream of values that need no separator,
 * found incrementally, in the manner of QEMU's json-streamer. Each byte is looked at once however the input is
 * split across reads, so a client that sends a large request in small pieces costs linear time (re-parsing the
 * pending bytes with jansson after every read would cost quadratic time and let one slow client stall the monitor
 * loop that serves all the others). The framer also enforces the size and nesting limits of one request before
 * anything is parsed or allocated for it.
 *
 * It is not a JSON parser: it tracks strings (with their escapes), the stack of open brackets and the bytes that
 * can appear outside strings, and stops at the first byte that ends the value or makes it invalid for sure. The
 * bytes up to there are then given to jansson, which builds the value or says, in its words, what is wrong.
 * qmp-server.c decides what happens next (dispatch, error reply, resynchronisation).
 */
#include <string.h>

#include "monitor/monitor-priv.h"

enum { KIND_NONE, KIND_CONTAINER, KIND_STRING, KIND_TOKEN };

static bool is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Bytes of the bare tokens of JSON: numbers (digits, sign, '.', exponent) and the literals true/false/null. Any
 * other byte outside a string (a control character, a quote mark of another kind, a byte of a UTF-8 sequence)
 * can never be valid JSON there. */
static bool is_token_byte(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '+' || c == '-' ||
           c == '.';
}

static void frame_reset(MonFramer *f)
{
    memset(f, 0, sizeof(*f));
}

/* The value ends with byte @end - 1 (inclusive), or is invalid there: either way jansson gets @end bytes. */
static MonFrameResult frame_done(MonFramer *f, size_t end, size_t *value_len)
{
    *value_len = end;
    frame_reset(f);
    return MON_FRAME_VALUE;
}

bool ferry__monitor_frame_is_space(unsigned char c)
{
    return is_space(c);
}

MonFrameResult ferry__monitor_frame(MonFramer *f, const char *buf, size_t len, size_t *value_len)
{
    const unsigned char *p = (const unsigned char *)buf;
    size_t i = f->scanned;
    /* A value may not be longer than the limit: only that many bytes are ever looked at. */
    size_t stop = len < FERRY_MONITOR_MAX_INPUT ? len : FERRY_MONITOR_MAX_INPUT;

    if (i == 0 && stop > 0) {
        unsigned char c = p[0];
        if (c == '{' || c == '[') {
            f->kind = KIND_CONTAINER;
            f->depth = 1;
            f->closer[0] = c == '{' ? '}' : ']';
        } else if (c == '"') {
            f->kind = KIND_STRING;
            f->in_string = true;
        } else if (is_token_byte(c)) {
            f->kind = KIND_TOKEN;
        } else {
            /* A closing bracket, ',' or ':' where a value must start, or a byte that no JSON value starts with. */
            return frame_done(f, 1, value_len);
        }
        i = 1;
    }
    for (; i < stop; i++) {
        unsigned char c = p[i];
        if (f->in_string) {
            if (f->escape) {
                f->escape = false;
            } else if (c == '\\') {
                f->escape = true;
            } else if (c == '"') {
                f->in_string = false;
                if (f->kind == KIND_STRING) {
                    return frame_done(f, i + 1, value_len);
                }
            } else if (c < 0x20) {
                /* A raw control character (a newline, most likely: the client forgot a quote) cannot be part of
                 * a string; waiting for a closing quote would swallow the requests that follow. */
                return frame_done(f, i + 1, value_len);
            }
            continue;
        }
        if (f->kind == KIND_TOKEN) {
            if (!is_token_byte(c)) {
                /* The token ends before the byte that ends it; that byte belongs to what follows. */
                return frame_done(f, i, value_len);
            }
            continue;
        }
        /* Inside a container, outside strings. */
        if (c == '"') {
            f->in_string = true;
        } else if (c == '{' || c == '[') {
            if (f->depth >= FERRY_MONITOR_MAX_DEPTH) {
                *value_len = i + 1;
                frame_reset(f);
                return MON_FRAME_TOO_DEEP;
            }
            f->closer[f->depth++] = c == '{' ? '}' : ']';
        } else if (c == '}' || c == ']') {
            if (c != f->closer[f->depth - 1]) {
                return frame_done(f, i + 1, value_len); /* "{]": jansson says what it expected */
            }
            if (--f->depth == 0) {
                return frame_done(f, i + 1, value_len);
            }
        } else if (!is_space(c) && c != ',' && c != ':' && !is_token_byte(c)) {
            return frame_done(f, i + 1, value_len);
        }
    }
    f->scanned = i;
    if (len >= FERRY_MONITOR_MAX_INPUT) {
        *value_len = i;
        frame_reset(f);
        return MON_FRAME_TOO_LONG;
    }
    return MON_FRAME_MORE;
}
