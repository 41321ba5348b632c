/*
 * libFuzzer target: ferry_stream_analyze, the reader that decodes a stream with no device code (records,
 * features, CONFIG, RAM runs, and every section from the stream's own schema). Same rules as fuzz-stream: no
 * crash, no leak, no out-of-bounds access, no allocation sized by an unchecked length; bad input is an error.
 */
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ferry/ferry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz-analyze", MFD_CLOEXEC);
    if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size) || lseek(fd, 0, SEEK_SET) != 0) {
        abort();
    }
    json_t *result = NULL;
    FerryError *err = NULL;
    bool ok = ferry_stream_analyze(fd, 0, &result, &err);
    if (!result || ok != (err == NULL)) {
        abort(); /* the contract: a result always, an error exactly when it fails */
    }
    json_decref(result);
    ferry_error_free(err);
    close(fd);
    return 0;
}
