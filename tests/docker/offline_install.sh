#!/usr/bin/env bash
# The offline install test (run by tests/docker/run.sh):  offline_install.sh BUNDLE.tar [RESULTS.json]
#   - a bundle with one altered file is refused by the checksum step, with nothing installed;
#   - too little disk (a 64 MiB tmpfs as the prefix) and a missing Docker are refused, nothing installed;
#   - install.sh --native inside a network namespace with no network (unshare -n; only loopback up)
#     installs and starts nothing; then DIR/bin/appliance up answers a kiosk request there.
set -euo pipefail
BUNDLE="$(realpath "$1")"
RESULTS="${2:-/dev/null}"
WORK="$(mktemp -d /tmp/appliance-offline.XXXXXX)"
cleanup() {
  local rc=$?
  [ -f "$WORK/up.pid" ] && kill "$(cat "$WORK/up.pid")" 2>/dev/null
  mountpoint -q "$WORK/small" 2>/dev/null && umount "$WORK/small"
  [ $rc = 0 ] || { echo "--- appliance log (tail)"; tail -30 "$WORK/up.log" 2>/dev/null; }
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
# A command failing under `set -e` says which one (CI shows only the end of the output).
trap 'echo "offline install test: line $LINENO failed (exit $?): $BASH_COMMAND" >&2' ERR
fail() { echo "offline install test: $*" >&2; exit 1; }
log() { echo "[offline-install $(date +%H:%M:%S)] $*"; }
mkdir -p "$WORK/b"
tar -xf "$BUNDLE" -C "$WORK/b"
[ "$(tar -tf "$BUNDLE" | sed -n 1p)" = SHA256SUMS ] || fail "SHA256SUMS is not the first entry of the tarball"

log "a corrupted bundle is refused by the checksum step"
cp -al "$WORK/b" "$WORK/bad"          # hard links: the altered file gets a new inode below
# (not `ls | head -1`: under pipefail, ls killed by SIGPIPE once head has its line fails the test at random)
wheels=("$WORK"/bad/wheelhouse/*.whl)
victim="wheelhouse/$(basename "${wheels[0]}")"
{ cat "$WORK/bad/$victim"; printf 'x'; } > "$WORK/altered" && mv "$WORK/altered" "$WORK/bad/$victim"
if "$WORK/bad/install.sh" --native --prefix "$WORK/p-bad" --data "$WORK/d-bad" > "$WORK/bad.out" 2>&1; then
  fail "install.sh accepted a bundle with an altered $victim"
fi
grep -q "damaged" "$WORK/bad.out" && grep -q "$victim" "$WORK/bad.out" || fail "no clear message: $(cat "$WORK/bad.out")"
[ ! -e "$WORK/p-bad" ] && [ ! -e "$WORK/d-bad" ] || fail "a refused install left files behind"

log "too little disk is refused"
mkdir -p "$WORK/small" && mount -t tmpfs -o size=64m tmpfs "$WORK/small"
if "$WORK/b/install.sh" --native --prefix "$WORK/small/p" > "$WORK/small.out" 2>&1; then fail "installed on 64 MiB"; fi
grep -q "too little disk" "$WORK/small.out" || fail "no clear message: $(cat "$WORK/small.out")"
[ -z "$(ls -A "$WORK/small")" ] || fail "a refused install left files behind: $(ls -A "$WORK/small")"

log "a missing Docker is refused"
mkdir -p "$WORK/nodocker-bin"        # this machine's commands, less docker
for f in /usr/local/bin/* /usr/bin/* /bin/*; do ln -sf "$f" "$WORK/nodocker-bin/"; done
rm -f "$WORK/nodocker-bin"/docker*
if env PATH="$WORK/nodocker-bin" bash "$WORK/b/install.sh" --prefix "$WORK/p-docker" > "$WORK/nodocker.out" 2>&1; then
  fail "install.sh went on without Docker"
fi
grep -q "Docker is not installed" "$WORK/nodocker.out" || fail "no clear message: $(cat "$WORK/nodocker.out")"
[ ! -e "$WORK/p-docker" ] || fail "a refused install left files behind"

log "install.sh --native with no network (unshare -n), then bin/appliance up answers a kiosk"
export WORK
unshare --net /bin/bash -euo pipefail -c '
  ip link set lo up
  if getent ahosts pypi.org >/dev/null 2>&1 && timeout 5 bash -c "echo > /dev/tcp/pypi.org/443" 2>/dev/null; then
    echo "the namespace reaches the network" >&2; exit 1
  fi
  t0=$(date +%s.%N)
  "$WORK/b/install.sh" --native --prefix "$WORK/p" --data "$WORK/d" > "$WORK/install.out"
  t1=$(date +%s.%N)
  cat "$WORK/install.out"
  # it started nothing
  if "$WORK/p/bin/appliance" health api >/dev/null 2>&1; then echo "install.sh started the appliance" >&2; exit 1; fi
  key=$(sed -n "s/.*kiosk key: \([^)]*\)).*/\1/p" "$WORK/install.out")
  [ -n "$key" ] || { echo "install.sh printed no kiosk key" >&2; exit 1; }
  "$WORK/p/bin/appliance" up > "$WORK/up.log" 2>&1 &
  echo $! > "$WORK/up.pid"
  "$WORK/p/venv/bin/python" - "$key" <<PY
import sys, time, httpx
key = sys.argv[1]
deadline = time.monotonic() + 900
while True:
    try:
        r = httpx.post("http://127.0.0.1:8080/v1/chat/completions", timeout=120,
                       headers={"Authorization": f"Bearer {key}"},
                       json={"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16})
        if r.status_code == 200:
            print("kiosk answered:", repr(r.json()["choices"][0]["message"]["content"]))
            break
    except httpx.HTTPError:
        pass
    assert time.monotonic() < deadline, "no kiosk answer within 900 s"
    time.sleep(1)
PY
  t2=$(date +%s.%N)
  kill -TERM $(cat "$WORK/up.pid"); wait $(cat "$WORK/up.pid") || true; rm -f "$WORK/up.pid"
  python3 -c "import json,sys; a,b,c=map(float,sys.argv[1:]); print(json.dumps({\"native_install_s\": round(b-a,1), \"native_install_to_kiosk_answer_s\": round(c-a,1)}))" "$t0" "$t1" "$t2" > "$WORK/times.json"
'
cp "$WORK/times.json" "$RESULTS"
log "passed: $(cat "$WORK/times.json")"
