#!/usr/bin/env bash
# Restore the appliance's data from a backup.sh file: the appliance is stopped, the data replaced by
# the backup's, and the appliance started again. The old data is removed only once the backup is
# unpacked in full beside it. A Docker backup also brings back the admin token and kiosk key.
#   ./restore.sh [--prefix DIR] FILE      DIR: the installation (default: the folder of this script);
#                                         Docker or native, as install.sh recorded in DIR/install.env
set -euo pipefail
ME="$(basename "$0")"
PREFIX="" FILE="" MODE="" DATA="" VOLUME="" IMAGE="" COMPOSE=()
SECRETS_MEMBER=./appliance-install.env   # a Docker install's secrets, appended to its backups

die() { echo "$ME: $*" >&2; exit 1; }
parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --prefix) [ -n "${2:-}" ] || die "--prefix needs a folder"; PREFIX="$2"; shift ;;
      --native) ;;  # accepted: the mode is the installation's own (install.env)
      -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      -*) die "unknown option '$1'" ;;
      *) FILE="$1" ;;
    esac
    shift
  done
  PREFIX="${PREFIX:-$(cd "$(dirname "$0")" && pwd)}"
  [ -f "$PREFIX/install.env" ] && [ -f "$PREFIX/bundle.env" ] || die "$PREFIX holds no installation (no install.env)"
  MODE="$(sed -n 's/^MODE=//p' "$PREFIX/install.env")"
  DATA="$(sed -n 's/^DATA=//p' "$PREFIX/install.env")"
  IMAGE="$(sed -n 's/^IMAGE=//p' "$PREFIX/bundle.env")"
  if [ "$MODE" = docker ]; then
    if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
    VOLUME="${COMPOSE_PROJECT_NAME:-appliance}_data"
  else
    DATA="${APPLIANCE_DATA_DIR:-$DATA}"
  fi
}
stop_appliance() {
  if [ "$MODE" = docker ]; then (cd "$PREFIX" && "${COMPOSE[@]}" stop)
  elif "$PREFIX/bin/appliance" health worker >/dev/null 2>&1; then
    die "the appliance is running: stop it first (systemctl stop appliance, or Ctrl-C)"
  fi
}
start_appliance() {
  if [ "$MODE" = docker ]; then (cd "$PREFIX" && "${COMPOSE[@]}" up -d --wait --wait-timeout 900) || true
  else echo "start it again with: $PREFIX/bin/appliance up"; fi
}
[ "${1:-}" = --lib ] && return 0

parse_args "$@"
[ -n "$FILE" ] || die "name the backup file to restore"
[ -f "$FILE" ] || die "no such file: $FILE"
FILE="$(cd "$(dirname "$FILE")" && pwd)/$(basename "$FILE")"
members="$(tar -tf "$FILE" 2>&1)" || die "$FILE is damaged or not a tar file ($(echo "$members" | tail -1))"
grep -qx './appliance.db' <<<"$members" || die "$FILE is not a backup.sh file (no appliance.db in it)"
stop_appliance
trap start_appliance EXIT
if [ "$MODE" = docker ]; then
  docker run --rm --network none --user 0 --entrypoint sh -v "$VOLUME:/data" -v "$(dirname "$FILE"):/backup:ro" "$IMAGE" -euc \
    "mkdir /data/.restoring && tar -xf '/backup/$(basename "$FILE")' -C /data/.restoring --exclude '$SECRETS_MEMBER' && \
     find /data -mindepth 1 -maxdepth 1 ! -name .restoring -exec rm -rf {} + && \
     for f in /data/.restoring/* /data/.restoring/.[!.]*; do if [ -e \"\$f\" ]; then mv \"\$f\" /data/; fi; done && \
     rmdir /data/.restoring && chown -R 10001:10001 /data"
  if grep -qx "$SECRETS_MEMBER" <<<"$members"; then  # the backup's secrets replace the installation's
    saved="$(tar -xOf "$FILE" "$SECRETS_MEMBER")"
    (umask 077 && { grep -v -e '^APPLIANCE_ADMIN_TOKEN=' -e '^APPLIANCE_KIOSK_KEY=' "$PREFIX/.env" || true
                    grep -e '^APPLIANCE_ADMIN_TOKEN=' -e '^APPLIANCE_KIOSK_KEY=' <<<"$saved"; } > "$PREFIX/.env.new")
    mv "$PREFIX/.env.new" "$PREFIX/.env"
    (cd "$PREFIX" && "${COMPOSE[@]}" up -d --wait --wait-timeout 900 --force-recreate >/dev/null 2>&1) || true
  fi
else
  new="$DATA.restoring"; rm -rf "$new"; mkdir -p "$new"
  tar -xf "$FILE" -C "$new"
  rm -rf "$DATA.old"; [ -d "$DATA" ] && mv "$DATA" "$DATA.old"; mv "$new" "$DATA"; rm -rf "$DATA.old"
fi
echo "restored the data from $FILE"
