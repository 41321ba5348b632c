/*
 * ferry-analyze: describe a ferry migration stream (a file written by a file: or exec: migration, or a pipe) as
 * JSON, without the program that wrote it: features, RAM layout and page counts, and the decoded state and schema
 * of every device section. A thin front end of ferry_stream_analyze(); it uses only the public API and holds no
 * knowledge of the stream format itself. It does not load anything anywhere.
 *
 * Exit status: 0 for a good stream; 1 for a damaged or truncated one (the JSON decoded so far is still printed,
 * with an "error" member, and the error goes to stderr); 2 for bad usage or a file that cannot be opened.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "ferry/ferry.h"

static int usage(FILE *out, int status)
{
    fprintf(out,
            "usage: ferry-analyze [--schema] [--compact] [FILE|-]\n"
            "  Reads a ferry migration stream from FILE (or standard input) up to its END record and prints\n"
            "  what it holds as JSON.\n"
            "  --schema   print only the schema of each device section: {\"sections\": [...]}\n"
            "  --compact  one line of JSON instead of an indented document\n"
            "exit status: 0 good stream, 1 damaged or truncated stream, 2 bad usage or unreadable file\n");
    return status;
}

int main(int argc, char **argv)
{
    unsigned flags = 0;
    size_t indent = JSON_INDENT(2);
    const char *path = NULL;
    bool no_more_options = false;

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!no_more_options && strcmp(arg, "--") == 0) {
            no_more_options = true;
        } else if (!no_more_options && strcmp(arg, "--schema") == 0) {
            flags |= FERRY_ANALYZE_SCHEMA_ONLY;
        } else if (!no_more_options && strcmp(arg, "--compact") == 0) {
            indent = JSON_COMPACT;
        } else if (!no_more_options && (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)) {
            return usage(stdout, 0);
        } else if (!no_more_options && arg[0] == '-' && arg[1] != '\0') {
            fprintf(stderr, "ferry-analyze: unknown option '%s'\n", arg);
            return usage(stderr, 2);
        } else if (path) {
            fprintf(stderr, "ferry-analyze: more than one input given\n");
            return usage(stderr, 2);
        } else {
            path = arg;
        }
    }

    int fd = STDIN_FILENO;
    if (path && strcmp(path, "-") != 0) {
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            fprintf(stderr, "ferry-analyze: cannot open '%s': %s\n", path, strerror(errno));
            return 2;
        }
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
            fprintf(stderr, "ferry-analyze: cannot read '%s': it is a directory\n", path);
            close(fd);
            return 2;
        }
    }

    json_t *result = NULL;
    FerryError *err = NULL;
    bool ok = ferry_stream_analyze(fd, flags, &result, &err);
    if (fd != STDIN_FILENO) {
        close(fd);
    }
    json_dumpf(result, stdout, indent | JSON_ENSURE_ASCII);
    fputc('\n', stdout);
    json_decref(result);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "ferry-analyze: writing the result: %s\n", strerror(errno));
        ferry_error_free(err);
        return 2;
    }
    if (!ok) {
        fprintf(stderr, "ferry-analyze: %s\n", ferry_error_msg(err));
        ferry_error_free(err);
        return 1;
    }
    return 0;
}
