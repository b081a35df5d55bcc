#!/usr/bin/env bash
# Back up the appliance's data: a copy taken while it is stopped (SQLite, datasets, models, runs,
# artifacts and secrets are then consistent), as one .tar (not compressed: model weights hardly
# compress, and gzip would make a backup minutes longer). The appliance is started again after.
#   ./backup.sh [--prefix DIR] [FILE]              Docker (the volume 'appliance_data')
#   ./backup.sh --native [--prefix DIR] [FILE]     no Docker (the data folder install.sh --native chose)
# FILE defaults to ./appliance-data-YYYYmmdd-HHMMSS.tar. Restore with restore.sh.
set -euo pipefail
. "$(dirname "$0")/restore.sh" --lib
parse_args "$@"
out="${FILE:-$PWD/appliance-data-$(date +%Y%m%d-%H%M%S).tar}"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
[ ! -e "$out" ] || { echo "backup.sh: $out exists; name another file" >&2; exit 1; }
stop_appliance
trap start_appliance EXIT
if [ "$MODE" = docker ]; then
  docker run --rm --network none --user 0 --entrypoint tar -v "$VOLUME:/data:ro" -v "$(dirname "$out"):/backup" \
    "$IMAGE" -C /data -cf "/backup/$(basename "$out").partial" .
else
  tar -C "$DATA" -cf "$out.partial" .
fi
mv "$out.partial" "$out"
echo "backed up the data to $out ($(du -h "$out" | cut -f1))"
