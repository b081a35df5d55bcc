"""`appliance health [api|worker|inference|all]`: the container health check of each service.

- api, inference: `GET /healthz` on the service's own port answers 200 within 3 s (the servers bind
  `APPLIANCE_HOST`; 0.0.0.0 or :: are asked on the loopback address);
- worker: the worker process holds its liveness lock (`data/worker.lock`, an OFD lock the kernel drops
  when the process dies: see appliance/serving.py), so a dead or never-started worker is unhealthy.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from appliance.paths import Paths
from appliance.serving import is_held
from appliance.settings import Settings

SERVICES = ("api", "worker", "inference")


def _local(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _http(settings: Settings, port: int) -> str | None:
    url = f"http://{_local(settings.host)}:{port}/healthz"
    try:
        answer = httpx.get(url, timeout=3.0)
    except httpx.HTTPError as exc:
        return f"{url}: {exc.__class__.__name__}: {exc}"
    return None if answer.status_code == 200 else f"{url}: HTTP {answer.status_code}"


def check(service: str, settings: Settings) -> str | None:
    """None when `service` is healthy, else what is wrong (one line). Raises ValueError on an unknown name."""
    checks: dict[str, Callable[[], str | None]] = {
        "api": lambda: _http(settings, settings.api_port),
        "inference": lambda: _http(settings, settings.inference_port),
        "worker": lambda: None if is_held(Paths.from_data_dir(settings.data_dir).worker_lock)
        else "the worker is not running (nothing holds data/worker.lock)",
    }
    if service not in checks:
        raise ValueError(f"unknown service {service!r}: one of {', '.join(SERVICES)}, all")
    return checks[service]()
