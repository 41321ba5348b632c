/*
 * libFuzzer target: the migration address model (src/channel/address.c), both directions. Each input is tried
 * as a URI (up to its first NUL byte; URIs come from the command line, so any bytes) and as JSON: a
 * MigrationAddress, a MigrationChannel, or the "channels" array of migrate / migrate-incoming. The URI also goes
 * through the host runtime's -incoming option, as a program's command line would give it.
 *
 * Besides the sanitizers' rules, what a parser accepts must survive its printers: a parsed URI printed and parsed
 * again gives the same address (the printed form is canonical), and any address printed as JSON parses back to
 * JSON that is the same (no member lost or changed on the way, whatever bytes its strings hold).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channel/address.h"
#include "ferry/ferry.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz-address: %s: %s\n", what, detail ? detail : "");
    abort();
}

static bool json_same(json_t *a, json_t *b)
{
    return json_equal(a, b);
}

/* The JSON form of @addr must parse back (as an address and inside a channel) to the same JSON. */
static void check_json_round_trip(const FerryMigrationAddress *addr)
{
    json_t *j = ferry__address_to_json(addr);
    FerryMigrationAddress *back = NULL;
    FerryError *err = NULL;
    if (!ferry__address_from_json(j, "addr", &back, &err)) {
        char *text = json_dumps(j, 0);
        fprintf(stderr, "fuzz-address: %s\n", text);
        fail("the JSON form of an address does not parse", ferry_error_msg(err));
    }
    json_t *j2 = ferry__address_to_json(back);
    if (!json_same(j, j2)) {
        fail("an address changed on its way through JSON", NULL);
    }
    FerryMigrationChannel ch = { .type = FERRY_CHANNEL_MAIN, .addr = back };
    json_t *channels = json_pack("[o]", ferry__channel_to_json(&ch));
    FerryMigrationAddress *main_addr = NULL;
    if (!ferry__channels_parse_main(channels, &main_addr, &err)) {
        fail("the channels form of an address does not parse", ferry_error_msg(err));
    }
    json_t *j3 = ferry__address_to_json(main_addr);
    if (!json_same(j, j3)) {
        fail("an address changed on its way through a channel list", NULL);
    }
    /* Printing as a URI always works, even where the URI cannot say everything JSON can. */
    free(ferry__address_to_uri(main_addr));
    FerryMigrationAddress *copy = ferry__address_copy(main_addr);
    json_t *j4 = ferry__address_to_json(copy);
    if (!json_same(j, j4)) {
        fail("a copied address differs", NULL);
    }
    json_decref(j);
    json_decref(j2);
    json_decref(j3);
    json_decref(j4);
    json_decref(channels);
    ferry__address_free(back);
    ferry__address_free(main_addr);
    ferry__address_free(copy);
}

static void fuzz_uri(const char *uri)
{
    FerryMigrationAddress *addr = NULL;
    FerryError *err = NULL;
    if (!ferry__address_parse_uri(uri, &addr, &err)) {
        if (!err || !*ferry_error_msg(err)) {
            fail("a URI was refused without a message", uri);
        }
        ferry_error_free(err);
        return;
    }
    char *printed = ferry__address_to_uri(addr);
    FerryMigrationAddress *again = NULL;
    if (!ferry__address_parse_uri(printed, &again, &err)) {
        fprintf(stderr, "fuzz-address: '%s' printed as '%s'\n", uri, printed);
        fail("a printed URI does not parse", ferry_error_msg(err));
    }
    char *printed2 = ferry__address_to_uri(again);
    if (strcmp(printed, printed2) != 0) {
        fprintf(stderr, "fuzz-address: '%s' -> '%s' -> '%s'\n", uri, printed, printed2);
        fail("printing a URI is not canonical", NULL);
    }
    json_t *j1 = ferry__address_to_json(addr);
    json_t *j2 = ferry__address_to_json(again);
    if (!json_same(j1, j2)) {
        fail("a URI printed and parsed again gives another address", uri);
    }
    json_decref(j1);
    json_decref(j2);
    check_json_round_trip(addr);
    free(printed);
    free(printed2);
    ferry__address_free(addr);
    ferry__address_free(again);
}

static void fuzz_json(const uint8_t *data, size_t size)
{
    json_t *j = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
    if (!j) {
        return;
    }
    FerryError *err = NULL;
    FerryMigrationAddress *addr = NULL;
    if (ferry__address_from_json(j, "addr", &addr, &err)) {
        check_json_round_trip(addr);
        ferry__address_free(addr);
    }
    ferry_error_free(err);
    err = NULL;
    FerryMigrationChannel *ch = NULL;
    if (ferry__channel_from_json(j, "channels[0]", &ch, &err)) {
        json_t *back = ferry__channel_to_json(ch);
        FerryMigrationChannel *ch2 = NULL;
        if (!ferry__channel_from_json(back, "channel", &ch2, NULL)) {
            fail("the JSON form of a channel does not parse", NULL);
        }
        check_json_round_trip(ch2->addr);
        json_decref(back);
        ferry__migration_channel_free(ch);
        ferry__migration_channel_free(ch2);
    }
    ferry_error_free(err);
    err = NULL;
    addr = NULL;
    if (ferry__channels_parse_main(j, &addr, &err)) {
        check_json_round_trip(addr);
        ferry__address_free(addr);
    }
    ferry_error_free(err);
    json_decref(j);
}

/* -incoming as a command line gives it: URI, JSON channel or defer (config: is the keyval target's). */
static void fuzz_incoming_option(const char *arg)
{
    static FerryHost *h;
    if (!h) {
        h = ferry_host_new("fuzz-address", NULL);
    }
    if (strncmp(arg, "config:", 7) == 0) {
        return;
    }
    bool used = false;
    FerryError *err = NULL;
    int r = ferry_host_parse_option(h, "-incoming", arg, &used, &err);
    if (r == 0 || (r < 0) != (err != NULL) || !used) {
        fail("-incoming broke its contract", arg);
    }
    ferry_error_free(err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = ferry__xstrndup((const char *)data, size);
    fuzz_uri(s);
    fuzz_incoming_option(s);
    free(s);
    fuzz_json(data, size);
    return 0;
}
