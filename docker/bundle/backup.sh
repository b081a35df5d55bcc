#!/usr/bin/env bash
# Back up the appliance's data: a copy taken while it is stopped (SQLite, datasets, models, runs,
# artifacts and secrets are then consistent), as one .tar readable by its owner only (not compressed:
# model weights hardly compress, and gzip would make a backup minutes longer). A Docker install's
# admin token and kiosk key (DIR/.env) are in it too. The appliance is started again after.
#   ./backup.sh [--prefix DIR] [FILE]     DIR: the installation (default: the folder of this script)
# FILE defaults to ./appliance-data-YYYYmmdd-HHMMSS.tar. Restore with restore.sh.
set -euo pipefail
# shellcheck source=restore.sh
. "$(dirname "$0")/restore.sh" --lib
parse_args "$@"
out="${FILE:-$PWD/appliance-data-$(date +%Y%m%d-%H%M%S).tar}"
dir="$(dirname "$out")"
[ -d "$dir" ] || die "no folder $dir to write the backup into (nothing was stopped)"
[ -w "$dir" ] || die "cannot write into $dir (nothing was stopped)"
out="$(cd "$dir" && pwd)/$(basename "$out")"
[ ! -e "$out" ] || die "$out exists; name another file"
[ "$MODE" = docker ] || [ -d "$DATA" ] || die "no data folder $DATA"
stop_appliance
trap start_appliance EXIT
umask 077
if [ "$MODE" = docker ]; then
  docker run --rm --network none --user 0 --entrypoint sh -v "$VOLUME:/data:ro" -v "$(dirname "$out"):/backup" \
    "$IMAGE" -euc "tar -C /data -cf '/backup/$(basename "$out").partial' . && chmod 600 '/backup/$(basename "$out").partial' && chown $(id -u):$(id -g) '/backup/$(basename "$out").partial'"
  # the secrets of the installation, as their own member (restore.sh puts them back into DIR/.env)
  staged="$(mktemp -d)"; trap 'rm -rf "$staged"; start_appliance' EXIT
  grep -e '^APPLIANCE_ADMIN_TOKEN=' -e '^APPLIANCE_KIOSK_KEY=' "$PREFIX/.env" > "$staged/appliance-install.env"
  tar -rf "$out.partial" -C "$staged" ./appliance-install.env
else
  tar -C "$DATA" -cf "$out.partial" .
fi
mv "$out.partial" "$out"
echo "backed up the data to $out ($(du -h "$out" | cut -f1))"
