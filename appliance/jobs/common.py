"""Small helpers every job module uses."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from appliance.errors import InputProblem, InvalidInputError


def now() -> datetime:
    return datetime.now(UTC)


def bad_request(field: str, message: str) -> InvalidInputError:
    """A 422 naming the request field that is wrong."""
    return InvalidInputError("request", [InputProblem(None, field, message)])


def process_started_at(pid: int) -> float | None:
    """When the live process `pid` started (seconds since the epoch), or None when there is none (a
    zombie is none: it is dead, only not yet reaped). 0.0 when /proc cannot say but the pid exists."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
        with open("/proc/stat") as fh:
            boot = next(float(line.split()[1]) for line in fh if line.startswith("btime "))
    except FileNotFoundError:
        return None
    except (OSError, StopIteration, IndexError, ValueError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    if fields[0] in ("Z", "X"):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def worker_gone(pid: int | None, heartbeat_at: datetime | None) -> bool:
    """Whether the worker recorded on a running job is certainly gone: no live process has its pid, or
    the one that has it started after the job's last heartbeat (the pid was reused after a restart or
    a reboot; it may be this very worker's). Such a job is taken back at once, not after
    APPLIANCE_WORKER_STALE_AFTER_S of silence. Assumes the workers of a data dir share a pid namespace,
    as `appliance up` runs them."""
    if pid is None or heartbeat_at is None:
        return True
    started = process_started_at(pid)
    # btime is whole seconds, rounded down, so a start time is never later than the real one; the
    # second of slack covers the two clocks' rounding.
    return started is None or started > heartbeat_at.replace(tzinfo=UTC).timestamp() + 1.0
