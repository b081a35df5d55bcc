"""The marker of a model load in progress: `<data_dir>/inference-loading`, written before the
inference server loads a deployment and removed once the load has succeeded or failed cleanly.

Found at start, it means the process died while loading. llama.cpp can abort the process on a
malformed file, and a supervisor would then restart it into the same load again and again, so such a
deployment is refused. But a power cut (or a kill -9) during a load of a perfectly good model leaves
the same marker, and refusing that model blamed a deployment that was fine. So the marker counts
attempts: a deployment whose load died once is loaded once more; one that died twice is refused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from appliance import fsutil

log = logging.getLogger("appliance.inference")
MAX_ATTEMPTS = 2  # loads of one deployment that may end with the process dead before it is refused


class LoadingMarker:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.died: dict[str, int] = {}  # deployment id -> loads of it that the process did not survive

    def recover(self) -> str | None:
        """At start: read what the last process left. Returns the deployment to refuse (its load
        died MAX_ATTEMPTS times), else None; a deployment whose load died fewer times is retried."""
        if not self.path.exists():
            return None
        dep_id, attempt = _read(self.path)
        self.path.unlink()
        if not dep_id:
            return None  # the bundled model: nothing to refuse, it is simply loaded again
        if attempt >= MAX_ATTEMPTS:
            log.warning("deployment %s killed the server in %d loads; refused", dep_id, attempt)
            return dep_id
        self.died[dep_id] = attempt
        log.warning("deployment %s was being loaded when the server stopped (crash or power cut); "
                    "loading it once more", dep_id)
        return None

    def begin(self, deployment_id: str | None) -> None:
        attempt = self.died.get(deployment_id, 0) + 1 if deployment_id else 1
        body = json.dumps({"deployment_id": deployment_id or "", "attempt": attempt})
        # Written beside it, synced and renamed: after a power cut the marker is absent or whole.
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(body)
        fsutil.publish(tmp, self.path)

    def end(self) -> None:
        self.path.unlink(missing_ok=True)


def _read(path: Path) -> tuple[str, int]:
    text = path.read_text().strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        attempt = data.get("attempt")
        return str(data.get("deployment_id") or ""), attempt if isinstance(attempt, int) else 1
    return text, 1  # written by an older version: the deployment id alone, one attempt
