#!/usr/bin/env bash
# Build a release tree (build-release) and run the migration benchmark (bench/migrate-bench.py) on it. Options are
# passed to the benchmark, e.g. `bash bench/run.sh --size 2 --cases random,zero`. Not a test: it prints numbers.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if [ ! -f build-release/build.ninja ]; then
    meson setup build-release --buildtype=release -Dtests=false >/dev/null
fi
ninja -C build-release
exec /usr/bin/python3 bench/migrate-bench.py --build "$root/build-release" "$@"
