#!/usr/bin/env bash
# Run ferry's libFuzzer targets (fuzz/) on their seed corpora: briefly in the test suite, for as long as you like by
# hand. Builds build-fuzz with clang if it is missing (scripts/install-deps.sh installs clang and its runtime).
# The seeds of a target are fuzz/corpus/TARGET/ (checked in: real or hand-built inputs and the reproducers of fixed bugs), plus,
# for stream and analyze, the golden streams of tests/data/compat/; fuzz/dict/TARGET.dict, if there is one, is
# given to libFuzzer as its dictionary. New inputs the fuzzer finds go to a scratch corpus, not into the
# repository (--keep DIR keeps them); a crash, leak or sanitizer report leaves its reproducer in
# build-fuzz/crashes/ and the exit status is non-zero. fuzz/README.md says more.
#
#   scripts/fuzz.sh [--time SECONDS] [--keep DIR] [TARGET...]
#       targets: stream analyze qmp address keyval return-path (default: all); SECONDS per target, default 600
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
all_targets=(stream analyze qmp address keyval return-path)
secs=600
keep=
while [ $# -gt 0 ]; do
    case $1 in
    --time) secs=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    -*) echo "fuzz.sh: unknown option '$1'" >&2; exit 2 ;;
    *) break ;;
    esac
done
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")

if [ ! -f build-fuzz/build.ninja ]; then
    CC=clang meson setup build-fuzz -Dfuzzing=true -Dtests=false -Db_sanitize=address,undefined -Db_lundef=false \
        -Dwerror=true >/dev/null
fi
ninja -C build-fuzz >/dev/null

# seeds TARGET DIR: copy the target's seed corpus into DIR.
seeds() {
    local t=$1 dir=$2
    if [ -d "fuzz/corpus/$t" ]; then
        cp fuzz/corpus/"$t"/* "$dir/"
    fi
    case $t in
    stream | analyze)
        # The golden streams of the cross-version tests: real streams of every record type.
        cp tests/data/compat/*.fstream "$dir/" ;;
    esac
}

mkdir -p build-fuzz/crashes
rc=0
for t in "${targets[@]}"; do
    bin=build-fuzz/fuzz/fuzz-$t
    [ -x "$bin" ] || { echo "fuzz.sh: no target '$t' (targets: ${all_targets[*]})" >&2; exit 2; }
    work=$(mktemp -d)
    seeds "$t" "$work"
    dict=()
    [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
    echo "fuzz.sh: $t for ${secs}s on $(ls "$work" | wc -l) seeds"
    # malloc_limit_mb catches an allocation sized by an unchecked length (the largest legitimate one is a 64 MiB
    # section); detect_leaks makes a leak a failure. The replies of qmp are checked for every input twice (fed at
    # once and in pieces), so its executions are slower than the others'.
    if ! "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=160 -detect_leaks=1 \
        "${dict[@]}" -print_final_stats=1 -artifact_prefix=build-fuzz/crashes/"$t"- "$work" \
        >"build-fuzz/fuzz-$t.log" 2>&1; then
        tail -n 60 "build-fuzz/fuzz-$t.log"
        echo "fuzz.sh: $t FAILED (reproducer in build-fuzz/crashes/)"
        rc=1
    else
        grep -E "stat::number_of_executed_units|stat::new_units_added|stat::peak_rss_mb" "build-fuzz/fuzz-$t.log" |
            tr '\n' ' '
        echo
        echo "fuzz.sh: $t ok"
    fi
    if [ -n "$keep" ]; then
        mkdir -p "$keep/$t"
        cp "$work"/* "$keep/$t/"
    fi
    rm -rf "$work"
done
exit $rc
