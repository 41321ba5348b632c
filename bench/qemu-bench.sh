#!/usr/bin/env bash
# The benchmark against QEMU (bench/qemu-bench.py) on a freshly built release tree: bench/run.sh --qemu. Options
# are passed on, e.g. `bash bench/qemu-bench.sh --size 2,8 --repeat 5 --multifd 2`. Not a test: it prints numbers.
exec bash "$(dirname "${BASH_SOURCE[0]}")/run.sh" --qemu "$@"
