#!/usr/bin/env bash
# Remove the appliance installed by install.sh; the data is kept unless --purge is given.
#   ./uninstall.sh [--prefix DIR]                    Docker: stop and remove the containers and the image
#   ./uninstall.sh --native [--prefix DIR]           no Docker: remove the virtual environment and scripts
#   add --purge to delete the data too (the volume 'appliance_data', or the --native data folder)
set -euo pipefail
MODE=docker PREFIX="" PURGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --native) MODE=native ;;
    --prefix) PREFIX="${2:?}"; shift ;;
    --purge) PURGE=1 ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "uninstall.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done
PREFIX="${PREFIX:-$(cd "$(dirname "$0")" && pwd)}"
[ -f "$PREFIX/bundle.env" ] || { echo "uninstall.sh: $PREFIX holds no installation (no bundle.env)" >&2; exit 1; }
. "$PREFIX/bundle.env"
if [ "$MODE" = docker ]; then
  if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
  down=(down); [ "$PURGE" = 1 ] && down+=(--volumes)
  (cd "$PREFIX" && "${COMPOSE[@]}" "${down[@]}")
  docker image rm "$IMAGE" >/dev/null 2>&1 || true
  rm -f "$PREFIX"/compose*.yaml "$PREFIX/.env" "$PREFIX"/{install,backup,restore}.sh "$PREFIX/README.txt" "$PREFIX/bundle.env"
  [ "$PURGE" = 1 ] && echo "removed the appliance and its data volume" || echo "removed the appliance; the data volume 'appliance_data' is kept (--purge removes it)"
else
  data="$(sed -n 's/^: "\${APPLIANCE_DATA_DIR:=\(.*\)}"$/\1/p' "$PREFIX/bin/appliance" 2>/dev/null)"
  if [ -n "$data" ] && "$PREFIX/bin/appliance" health worker >/dev/null 2>&1; then
    echo "uninstall.sh: the appliance is running: stop it first" >&2; exit 1
  fi
  rm -rf "${PREFIX:?}/venv" "${PREFIX:?}/bin" "$PREFIX/appliance.service" "$PREFIX"/{install,backup,restore}.sh "$PREFIX/README.txt" "$PREFIX/bundle.env"
  if [ "$PURGE" = 1 ] && [ -n "$data" ]; then rm -rf "$data"; echo "removed the appliance and its data ($data)"
  else echo "removed the appliance; the data in ${data:-the data folder} is kept (--purge removes it)"; fi
  rm -f "$PREFIX/uninstall.sh"
fi
