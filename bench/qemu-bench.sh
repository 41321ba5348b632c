#!/usr/bin/env bash
# Build the release tree (build-release) and run the benchmark against QEMU (bench/qemu-bench.py) on it. Options
# are passed on, e.g. `bash bench/qemu-bench.sh --size 2,8 --repeat 5 --multifd 2`. Not a test: it prints numbers.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if [ ! -f build-release/build.ninja ]; then
    meson setup build-release --buildtype=release -Dtests=false >/dev/null
fi
ninja -C build-release
exec /usr/bin/python3 bench/qemu-bench.py --build "$root/build-release" "$@"
