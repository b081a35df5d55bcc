#!/usr/bin/env bash
# Remove the appliance installed by install.sh. Kept unless --purge is given: the data (the volume
# 'appliance_data', or the native data folder) and, for Docker, DIR/.env with the admin token and the
# kiosk key, so that installing again finds both as they were.
#   ./uninstall.sh [--prefix DIR] [--purge]     DIR: the installation (default: the folder of this script)
set -euo pipefail
# shellcheck source=restore.sh
. "$(dirname "$0")/restore.sh" --lib
PURGE=0 args=()
for a in "$@"; do if [ "$a" = --purge ]; then PURGE=1; else args+=("$a"); fi; done
parse_args "${args[@]+"${args[@]}"}"
[ -z "$FILE" ] || die "unknown argument '$FILE'"
if [ "$MODE" = docker ]; then
  down=(down); [ "$PURGE" = 1 ] && down+=(--volumes)
  (cd "$PREFIX" && "${COMPOSE[@]}" "${down[@]}")
  docker image rm "$IMAGE" >/dev/null 2>&1 || true
  rm -f "$PREFIX"/compose*.yaml "$PREFIX"/{install,backup,restore}.sh "$PREFIX/README.txt"
  if [ "$PURGE" = 1 ]; then
    rm -f "$PREFIX/.env" "$PREFIX/bundle.env" "$PREFIX/install.env" "$PREFIX/uninstall.sh"
    echo "removed the appliance, its data volume and its secrets"
  else
    echo "removed the appliance; kept the data volume 'appliance_data' and $PREFIX/.env (the admin token and kiosk key)"
    echo "($PREFIX/uninstall.sh --purge removes them too; installing again reuses them)"
  fi
else
  if "$PREFIX/bin/appliance" health worker >/dev/null 2>&1; then die "the appliance is running: stop it first"; fi
  rm -rf "${PREFIX:?}/venv" "${PREFIX:?}/bin" "$PREFIX/appliance.service" "$PREFIX"/{install,backup,restore}.sh "$PREFIX/README.txt"
  if [ "$PURGE" = 1 ]; then
    rm -rf "${DATA:?}"
    rm -f "$PREFIX/bundle.env" "$PREFIX/install.env" "$PREFIX/uninstall.sh"
    echo "removed the appliance and its data ($DATA)"
  else
    echo "removed the appliance; kept the data in $DATA ($PREFIX/uninstall.sh --purge removes it too)"
  fi
fi
