#!/usr/bin/env bash
# Restore the appliance's data from a backup.sh file: the appliance is stopped, the data replaced
# by the backup's, and the appliance started again. What was there before is kept beside it until the
# restore is complete (Docker: the volume's old content is removed only after the new one is in).
#   ./restore.sh [--prefix DIR] FILE              Docker (the volume 'appliance_data')
#   ./restore.sh --native [--prefix DIR] FILE     no Docker
set -euo pipefail
MODE=docker PREFIX="" FILE=""
parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --native) MODE=native ;;
      --prefix) PREFIX="${2:?}"; shift ;;
      -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      -*) echo "$(basename "$0"): unknown option '$1'" >&2; exit 2 ;;
      *) FILE="$1" ;;
    esac
    shift
  done
  PREFIX="${PREFIX:-$(cd "$(dirname "$0")" && pwd)}"
  [ -f "$PREFIX/bundle.env" ] || { echo "$(basename "$0"): $PREFIX holds no installation (no bundle.env)" >&2; exit 1; }
  . "$PREFIX/bundle.env"
  if [ "$MODE" = docker ]; then
    if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
    VOLUME="$(cd "$PREFIX" && "${COMPOSE[@]}" config --volumes >/dev/null && echo "${COMPOSE_PROJECT_NAME:-appliance}_data")"
  else
    DATA="$(sed -n 's/^: "\${APPLIANCE_DATA_DIR:=\(.*\)}"$/\1/p' "$PREFIX/bin/appliance")"
    DATA="${APPLIANCE_DATA_DIR:-$DATA}"
  fi
}
stop_appliance() {
  if [ "$MODE" = docker ]; then (cd "$PREFIX" && "${COMPOSE[@]}" stop)
  elif "$PREFIX/bin/appliance" health worker >/dev/null 2>&1; then
    echo "$(basename "$0"): the appliance is running: stop it first (systemctl stop appliance, or Ctrl-C)" >&2; exit 1
  fi
}
start_appliance() {
  if [ "$MODE" = docker ]; then (cd "$PREFIX" && "${COMPOSE[@]}" up -d --wait --wait-timeout 900) || true
  else echo "start it again with: $PREFIX/bin/appliance up"; fi
}
[ "${1:-}" = --lib ] && return 0

parse_args "$@"
[ -n "$FILE" ] && [ -f "$FILE" ] || { echo "restore.sh: name the backup file to restore" >&2; exit 2; }
FILE="$(cd "$(dirname "$FILE")" && pwd)/$(basename "$FILE")"
tar -tf "$FILE" ./appliance.db >/dev/null 2>&1 || { echo "restore.sh: $FILE is not a backup.sh file (no appliance.db in it)" >&2; exit 1; }
stop_appliance
trap start_appliance EXIT
if [ "$MODE" = docker ]; then
  docker run --rm --network none --user 0 --entrypoint sh -v "$VOLUME:/data" -v "$(dirname "$FILE"):/backup:ro" "$IMAGE" -euc \
    "mkdir /data/.restoring && tar -xf '/backup/$(basename "$FILE")' -C /data/.restoring && \
     find /data -mindepth 1 -maxdepth 1 ! -name .restoring -exec rm -rf {} + && \
     for f in /data/.restoring/* /data/.restoring/.[!.]*; do if [ -e \"\$f\" ]; then mv \"\$f\" /data/; fi; done && \
     rmdir /data/.restoring && chown -R 10001:10001 /data"
else
  new="$DATA.restoring"; rm -rf "$new"; mkdir -p "$new"
  tar -xf "$FILE" -C "$new"
  rm -rf "$DATA.old"; [ -d "$DATA" ] && mv "$DATA" "$DATA.old"; mv "$new" "$DATA"; rm -rf "$DATA.old"
fi
echo "restored the data from $FILE"
