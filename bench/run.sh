#!/usr/bin/env bash
# Build a release tree (build-release) and run the migration benchmark (bench/migrate-bench.py) on it, or with
# --qemu as the first argument the benchmark against QEMU (bench/qemu-bench.py), with --postcopy the postcopy
# benchmark (bench/postcopy-bench.py), with --converge the convergence benchmark (bench/converge-bench.py), with
# --ramsize the RAM-size benchmark (bench/ramsize-bench.py: untouched RAM of 1-256 GiB), with --crc-recv the
# receive-path checksum benchmark (bench/crc-recv-bench.py), with --dest the destination-RAM benchmark
# (bench/dest-bench.py), with --snapshot the snapshot benchmark (bench/snapshot-bench.py: save, restore, instant
# restore, clones, background snapshot, against QEMU 7.2 and the page-cache limits), with --mem-study the
# fresh-memory study (bench/mem-study.c). Other
# options are passed to the benchmark, e.g. `bash bench/run.sh --size 2 --cases random,zero`. Not a test: it prints
# numbers.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
script=migrate-bench.py
if [ "${1:-}" = "--qemu" ]; then
    script=qemu-bench.py
    shift
elif [ "${1:-}" = "--postcopy" ]; then
    script=postcopy-bench.py
    shift
elif [ "${1:-}" = "--converge" ]; then
    script=converge-bench.py
    shift
elif [ "${1:-}" = "--ramsize" ]; then
    script=ramsize-bench.py
elif [ "${1:-}" = "--crc-recv" ]; then
    script=crc-recv-bench.py
    shift
elif [ "${1:-}" = "--dest" ]; then
    script=dest-bench.py
    shift
elif [ "${1:-}" = "--snapshot" ]; then
    script=snapshot-bench.py
    shift
elif [ "${1:-}" = "--mem-study" ]; then
    script=
    shift
fi
if [ ! -f build-release/build.ninja ]; then
    meson setup build-release --buildtype=release -Dtests=false >/dev/null
fi
ninja -C build-release
if [ -z "$script" ]; then
    exec build-release/bench/mem-study "$@"
fi
exec /usr/bin/python3 "bench/$script" --build "$root/build-release" "$@"
