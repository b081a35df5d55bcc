"""Kiosks first (appliance/serving.py): the in-flight signal between processes, the gate a worker child
waits at, its minimum share, and the idle CPU priority of worker children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from appliance.child_protocol import ServingSpec
from appliance.serving import KioskPriority, ServingGate, Signal, is_held, lower_priority

HOLD = """
import sys, time
from pathlib import Path
from appliance.serving import Signal
s = Signal(Path(sys.argv[1]))
s.enter()
print("held", flush=True)
time.sleep(600)
"""


def test_signal_is_seen_by_other_processes_and_dropped_when_its_holder_is_killed(tmp_path: Path) -> None:
    lock = tmp_path / "serving.lock"
    assert not is_held(lock)  # no file yet: nobody serves
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert is_held(lock)
        holder.send_signal(signal.SIGKILL)  # a crashed server must never stall training
        holder.wait(10)
        assert not is_held(lock)
    finally:
        if holder.poll() is None:
            holder.kill()


def test_signal_counts_requests_in_flight(tmp_path: Path) -> None:
    lock = tmp_path / "serving.lock"
    sig = Signal(lock)
    sig.enter()
    sig.enter()
    assert is_held(lock) and sig.in_flight == 2
    sig.leave()
    assert is_held(lock)  # one request is still generating
    sig.leave()
    assert not is_held(lock) and sig.in_flight == 0
    sig.close()


def test_gate_waits_while_kiosks_are_active_and_goes_on_when_they_stop(tmp_path: Path) -> None:
    lock = tmp_path / "serving.lock"
    sig = Signal(lock)
    gate = ServingGate(lock, min_share=0.01, window_s=3600)
    released = threading.Event()
    sig.enter()

    def release() -> None:
        released.wait()
        sig.leave()

    threading.Thread(target=release, daemon=True).start()
    threading.Timer(0.3, released.set).start()  # the kiosk request ends a little later
    gate._share.ran = 100.0  # plenty of recent running time: the share allows a long wait
    waited = gate.wait()
    assert released.is_set() and not is_held(lock)
    assert waited > 0 and gate.paused_s == waited
    assert gate.wait() == 0.0  # idle kiosks: no wait at all
    sig.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("min_share", [0.2, 0.5])
def test_gate_keeps_its_minimum_share_under_continuous_kiosk_traffic(min_share: float) -> None:
    clock = FakeClock()
    gate = ServingGate(Path("unused"), min_share=min_share, window_s=60, poll_s=0.01, clock=clock,
                       sleep=clock.sleep, active=lambda: True)
    ran = 0.0
    for _ in range(400):  # steps of 0.5 s of work, kiosks busy all the time
        gate.wait()
        clock.now += 0.5
        ran += 0.5
    share = ran / clock.now
    assert min_share * 0.95 <= share <= min_share * 1.1, share
    assert gate.paused_s == pytest.approx(clock.now - ran, abs=0.6)


def test_kiosks_never_wait_without_background_work(tmp_path: Path) -> None:
    clock = FakeClock()
    kiosks = KioskPriority(tmp_path / "serving.lock", tmp_path / "background.lock", min_share=0.2, clock=clock,
                           sleep=clock.sleep)
    for _ in range(50):  # continuous traffic, nothing training
        assert kiosks.begin() == 0.0
        assert is_held(tmp_path / "serving.lock")  # children would wait while a request generates
        clock.now += 1.0
        kiosks.end()
        assert not is_held(tmp_path / "serving.lock")
    kiosks.close()


@pytest.mark.parametrize("min_share", [0.2, 0.5])
def test_continuous_kiosk_traffic_leaves_background_work_its_minimum_share(tmp_path: Path, min_share: float) -> None:
    """The gaps are the only CPU an idle-priority child gets under continuous traffic (appliance/serving.py)."""
    clock = FakeClock()
    background = Signal(tmp_path / "background.lock")
    background.enter()  # a training child lives
    kiosks = KioskPriority(tmp_path / "serving.lock", tmp_path / "background.lock", min_share=min_share,
                           poll_s=0.01, clock=clock, sleep=clock.sleep)
    served = 0.0
    for _ in range(400):  # 0.5 s answers, the next request the moment one ends
        kiosks.begin()
        clock.now += 0.5
        served += 0.5
        kiosks.end()
    gaps = clock.now - served
    assert min_share * 0.9 <= gaps / clock.now <= min_share * 1.1, gaps / clock.now
    assert kiosks.held_back_s == pytest.approx(gaps, abs=1e-6)
    background.close()  # the child ended: no more gaps
    before = clock.now
    kiosks.begin()
    assert clock.now == before
    kiosks.end()
    kiosks.close()


def test_gate_is_off_when_serving_priority_is_off() -> None:
    gate = ServingGate.from_spec(ServingSpec(lock=Path("/nonexistent"), enabled=False, min_share=0.2))
    assert not gate.enabled and gate.wait() == 0.0
    assert not ServingGate.from_spec(None).enabled


def test_lower_priority_puts_a_child_below_serving() -> None:
    child = subprocess.Popen(["sleep", "30"], preexec_fn=lower_priority)
    try:
        policy = os.sched_getscheduler(child.pid)
        assert policy == os.SCHED_IDLE or os.getpriority(os.PRIO_PROCESS, child.pid) == 19
    finally:
        child.kill()
        child.wait()


def test_the_worker_remembers_that_a_childs_output_ended_before_it_exited(runtime) -> None:  # type: ignore[no-untyped-def]
    """The child's stdout can end before the process is reaped; the next round must still see the end
    (it once did not, and the run stayed 'running' with no child)."""
    import time

    from appliance.worker.worker import Job, Worker, _pump

    child = subprocess.Popen([sys.executable, "-c", "import os, time; os.close(1); time.sleep(2)"],
                             stdout=subprocess.PIPE, text=True)
    worker = Worker(runtime)
    job = Job("run_x", worker.kinds[0], child)
    assert child.stdout is not None
    threading.Thread(target=_pump, args=(child.stdout, job.lines), daemon=True).start()
    deadline = time.monotonic() + 60
    while not worker._relay(job):  # the end of output, read while the child still sleeps
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert child.poll() is None
    child.wait()
    assert worker._relay(job)  # and still known once it has exited
