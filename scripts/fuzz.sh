#!/usr/bin/env bash
# Run ferry's libFuzzer targets (fuzz/) on their seed corpus: briefly in the test suite, for as long as you like by
# hand. Builds build-fuzz with clang if it is missing (scripts/install-deps.sh installs clang and its runtime).
# New inputs the fuzzer finds go to a scratch corpus, not into the repository; a crash leaves its reproducer in
# build-fuzz/crashes/ and the exit status is non-zero.
#
#   scripts/fuzz.sh [--time SECONDS] [TARGET...]      targets: stream analyze (default: all), SECONDS default 600
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
secs=600
if [ "${1:-}" = "--time" ]; then
    secs=$2
    shift 2
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(stream analyze)

if [ ! -f build-fuzz/build.ninja ]; then
    CC=clang meson setup build-fuzz -Dfuzzing=true -Dtests=false -Db_sanitize=address,undefined -Db_lundef=false \
        -Dwerror=true >/dev/null
fi
ninja -C build-fuzz >/dev/null

mkdir -p build-fuzz/crashes
rc=0
for t in "${targets[@]}"; do
    bin=build-fuzz/fuzz/fuzz-$t
    [ -x "$bin" ] || { echo "fuzz.sh: no target '$t'" >&2; exit 2; }
    work=$(mktemp -d)
    # The seeds: the golden streams of the cross-version tests, real streams of every record type.
    cp tests/data/compat/*.fstream "$work/"
    echo "fuzz.sh: $t for ${secs}s on $(ls "$work" | wc -l) seeds"
    # malloc_limit_mb catches an allocation sized by an unchecked length (the largest legitimate one is a 64 MiB
    # section); detect_leaks makes a leak a failure.
    if ! "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=160 -detect_leaks=1 \
        -print_final_stats=1 -artifact_prefix=build-fuzz/crashes/"$t"- "$work" >"build-fuzz/fuzz-$t.log" 2>&1; then
        tail -n 60 "build-fuzz/fuzz-$t.log"
        echo "fuzz.sh: $t FAILED (reproducer in build-fuzz/crashes/)"
        rc=1
    else
        grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "build-fuzz/fuzz-$t.log" | tr '\n' ' '
        echo
        echo "fuzz.sh: $t ok"
    fi
    rm -rf "$work"
done
exit $rc
