#!/usr/bin/env bash
# The demo: install the Debian packages, build a release tree (build-release), start a destination ferry-workload
# waiting for an incoming migration and a source running the A-B pattern (1 GiB, 2 worker threads), and migrate the
# running source to the destination with ferryctl, which shows a live progress line and then the final statistics.
# Then it checks the result through QMP: the destination's pattern check and run state, the source's run state.
# It ends with one line "demo: PASS ..." or "demo: FAIL ..." (and a non-zero exit). Not a test suite: see
# scripts/test.sh for that.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

fail() {
    echo "demo: FAIL: $*"
    exit 1
}

bash scripts/install-deps.sh || fail "installing dependencies failed"

echo "demo: building build-release"
if [ ! -f build-release/build.ninja ]; then
    meson setup build-release --buildtype=release -Dtests=false >/dev/null || fail "meson setup failed"
fi
ninja -C build-release >/dev/null || { ninja -C build-release; fail "build failed"; }

workload=build-release/hosts/workload/ferry-workload
ferryctl=$(find build-release/tools -type f -name ferryctl -perm -u+x 2>/dev/null | head -n 1)
[ -x "$workload" ] || fail "$workload was not built"
[ -n "$ferryctl" ] || fail "ferryctl was not built"

tmp=$(mktemp -d /tmp/ferry-demo.XXXXXX)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

src_qmp=$tmp/src.qmp
dst_qmp=$tmp/dst.qmp
mig=$tmp/mig.sock
# The workers write 128 MiB/s in total; the migration may use 512 MiB/s, so it converges in a few passes.
args=(-m 1G -smp 2 -pattern ab -dirty-rate 128)
bandwidth=$((512 << 20))

wait_for_socket() {
    local path=$1 pid=$2 i
    for i in $(seq 1 200); do
        [ -S "$path" ] && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

echo "demo: starting the destination: ferry-workload ${args[*]} -incoming unix:$mig"
"$workload" -name dst "${args[@]}" -incoming "unix:$mig" -qmp "unix:$dst_qmp,server=on,wait=off" \
    2>"$tmp/dst.err" &
pids+=($!)
wait_for_socket "$dst_qmp" "${pids[0]}" || { cat "$tmp/dst.err"; fail "the destination did not start"; }
wait_for_socket "$mig" "${pids[0]}" || { cat "$tmp/dst.err"; fail "the destination does not listen on $mig"; }

echo "demo: starting the source: ferry-workload ${args[*]}"
"$workload" -name src "${args[@]}" -qmp "unix:$src_qmp,server=on,wait=off" 2>"$tmp/src.err" &
pids+=($!)
wait_for_socket "$src_qmp" "${pids[1]}" || { cat "$tmp/src.err"; fail "the source did not start"; }

# Pages never written cost nothing to migrate: let every worker write its whole share once first (one "pass"
# each, about 8 s), so that the demo moves the full 1 GiB.
echo "demo: the source runs the A-B pattern until every page has been written once"
passes=0
for _ in $(seq 1 120); do
    info=$("$ferryctl" "$src_qmp" query-workload) || fail "query-workload on the source failed"
    passes=$(/usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["passes"])' <<<"$info") ||
        fail "cannot read query-workload's reply: $info"
    [ "$passes" -ge 2 ] && break
    sleep 0.5
done
[ "$passes" -ge 2 ] || fail "the source workers did not complete a pass"
echo "source query-workload: $info"

echo
echo "demo: ferryctl $src_qmp migrate-set-parameters '{\"max-bandwidth\": $bandwidth}'"
"$ferryctl" "$src_qmp" migrate-set-parameters "{\"max-bandwidth\": $bandwidth}" >/dev/null ||
    fail "migrate-set-parameters failed"
echo "demo: ferryctl $src_qmp migrate unix:$mig"
if ! "$ferryctl" "$src_qmp" migrate "unix:$mig"; then
    echo "--- source stderr:"; cat "$tmp/src.err"
    echo "--- destination stderr:"; cat "$tmp/dst.err"
    fail "the migration did not complete"
fi

echo
echo "demo: checking the destination"
check=$("$ferryctl" "$dst_qmp" query-pattern-check) || fail "query-pattern-check on the destination failed"
echo "destination query-pattern-check: $check"
dst_status=$("$ferryctl" "$dst_qmp" query-status) || fail "query-status on the destination failed"
echo "destination query-status: $dst_status"
src_status=$("$ferryctl" "$src_qmp" query-status) || fail "query-status on the source failed"
echo "source query-status: $src_status"

verdict=()
grep -Eq '"ok": *true' <<<"$check" || verdict+=("destination pattern check failed")
grep -Eq '"status": *"running"' <<<"$dst_status" || verdict+=("destination is not running")
grep -Eq '"status": *"postmigrate"' <<<"$src_status" || verdict+=("source is not postmigrate")
for i in 0 1; do
    kill -0 "${pids[$i]}" 2>/dev/null || verdict+=("a workload process died")
done
if [ ${#verdict[@]} -ne 0 ]; then
    fail "$(IFS=';'; echo "${verdict[*]}")"
fi
echo "demo: PASS: 1 GiB running A-B workload migrated live; destination running with a valid A-B pattern, source postmigrate"
