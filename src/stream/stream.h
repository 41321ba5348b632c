/*
 * A buffered reader/writer over a channel with a sticky error, in the manner of Redis' rio: hot-path code writes
 * many records and checks once. Once an error is latched every later call is a no-op that reports failure, and
 * the first error is the one kept. Page data can bypass the write buffer (ferry__stream_write_iov) so that RAM is
 * handed to the kernel without an extra copy. Counts bytes in each direction. Knows nothing of record framing.
 *
 * One thread writes and one thread reads (they may differ: the return path is read while the main direction
 * is written).
 */
#ifndef FERRY_STREAM_H
#define FERRY_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "ferry/error.h"
#include "channel/channel.h"

typedef struct FerryStream FerryStream;

/* Borrows @c: the caller frees the channel after the stream. */
FerryStream *ferry__stream_new(FerryChannel *c);
void ferry__stream_free(FerryStream *s); /* does not flush; NULL is a no-op */
FerryChannel *ferry__stream_channel(FerryStream *s);

/* Writing. Buffered until the buffer (256 KiB) fills or flush. */
void ferry__stream_write(FerryStream *s, const void *buf, size_t len);
void ferry__stream_write_u8(FerryStream *s, uint8_t v);
void ferry__stream_write_be16(FerryStream *s, uint16_t v);
void ferry__stream_write_be32(FerryStream *s, uint32_t v);
void ferry__stream_write_be64(FerryStream *s, uint64_t v);
/* Flush the buffer, then write @iov straight from the caller's memory. Its CRC is computed before the write, so
 * the memory must not change until this returns (RAM only while the workload is stopped). */
void ferry__stream_write_iov(FerryStream *s, const struct iovec *iov, int iovcnt);
bool ferry__stream_flush(FerryStream *s);
/* Write @len bytes with @nfds file descriptors attached (SCM_RIGHTS; the channel must be a UNIX socket): the
 * buffer is flushed first so that the bytes keep their place, then the bytes go out in as many slices as there
 * are groups of FERRY_CHANNEL_MAX_FDS fds, each group with the first byte of its slice. The fds stay the
 * caller's. Needs @len >= the number of groups. Counts in the CRC like ferry__stream_write. */
void ferry__stream_write_with_fds(FerryStream *s, const void *buf, size_t len, const int *fds, size_t nfds);
uint64_t ferry__stream_bytes_written(const FerryStream *s); /* including what is still buffered */
/* Whether the running CRCs below are computed (default on). A stream whose records carry no CRC trailer (the
 * "record-checksum" feature off) switches them off so that they cost nothing. Resets both. */
void ferry__stream_set_crc(FerryStream *s, bool on);
bool ferry__stream_crc(const FerryStream *s);
/* CRC32C (util.h) of every byte written since the last reset, for record trailers. */
void ferry__stream_write_crc_reset(FerryStream *s);
uint32_t ferry__stream_write_crc(const FerryStream *s);

/* Reading. Each returns false (and latches an error) on failure or an early end of stream. */
bool ferry__stream_read(FerryStream *s, void *buf, size_t len);
bool ferry__stream_read_u8(FerryStream *s, uint8_t *v);
bool ferry__stream_read_be16(FerryStream *s, uint16_t *v);
bool ferry__stream_read_be32(FerryStream *s, uint32_t *v);
bool ferry__stream_read_be64(FerryStream *s, uint64_t *v);
bool ferry__stream_skip(FerryStream *s, uint64_t len);
/* Go on reading at stream offset @offset (>= what was read): on a regular file: channel a seek, else the bytes in
 * between are read and dropped. For mapped-ram, whose page regions lie between records. */
bool ferry__stream_read_seek(FerryStream *s, uint64_t offset);
/* Flush, then go on writing at stream offset @offset of a regular file: channel (an error on any other). The bytes
 * in between are the caller's (mapped-ram's page regions). */
bool ferry__stream_write_seek(FerryStream *s, uint64_t offset);
uint64_t ferry__stream_bytes_read(const FerryStream *s);
/* CRC32C of every byte read or skipped since the last reset. */
void ferry__stream_read_crc_reset(FerryStream *s);
uint32_t ferry__stream_read_crc(const FerryStream *s);

/* The sticky error. */
bool ferry__stream_failed(const FerryStream *s);
/* Latch @err (taken) unless an error is already latched (then @err is freed). */
void ferry__stream_set_error(FerryStream *s, FerryError *err);
/* If an error is latched, copy it to *errp and return false. */
bool ferry__stream_check(const FerryStream *s, FerryError **errp);

#endif
