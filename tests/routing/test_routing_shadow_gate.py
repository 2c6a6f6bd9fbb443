"""The shadow gate: shadows yield to a primary they slow down, and run freely beside one they do not.

Unit tests drive ``ShadowGate`` with a fake clock; the router tests run a real ``Router`` and
``ShadowMirror`` over fake versions: a primary that slows down while a shadow copy runs (a saturated
machine) and one that does not (an idle one). Assertions are on behaviour (copies dropped or run, the
share going down or up), never on timing thresholds.
"""

from __future__ import annotations

import asyncio

import numpy as np

from sidecar.routing.gate import SKIP, ShadowGate
from sidecar.routing.policy import CompiledPolicy, TrafficPolicy
from sidecar.routing.router import Router
from sidecar.routing.shadow import ShadowMirror
from sidecar.types import InferenceRequest, InferenceResponse

MS = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * MS

    def __call__(self) -> int:
        return self.now


def cycle(gate: ShadowGate, clock: Clock, on_latency_ns: int, off_latency_ns: int, copies: bool = True) -> None:
    """100 ms: a primary request every 1 ms, and (``copies``) a shadow copy whenever the gate allows one."""
    for _ in range(100):
        if copies and gate.wait_ns() == 0:
            gate.started()
            gate.finished()
        sample = gate.primary_start()
        gate.primary_end(sample, on_latency_ns if sample == 0 else off_latency_ns)
        clock.now += MS


def test_idle_primary_keeps_shadows_on_most_of_the_time():
    clock = Clock()
    gate = ShadowGate(cycle_s=0.1, clock=clock)
    assert gate.share == 1.0 and gate.wait_ns() == 0
    for _ in range(5):  # no primary traffic at all
        clock.now += 100 * MS
        gate.wait_ns()
    assert gate.share == 1.0
    for _ in range(5):  # traffic that shadow work does not slow
        cycle(gate, clock, on_latency_ns=2 * MS, off_latency_ns=2 * MS)
    assert gate.share == 1.0 and gate.decreases == 0 and gate.increases > 0
    # at share 1 shadows may start for most of each cycle (80 ms of 100); the rest is the clean baseline
    clock.now += 200 * MS
    assert gate.wait_ns() == 0  # a new cycle starts here
    clock.now += 70 * MS
    assert gate.wait_ns() == 0
    clock.now += 15 * MS
    assert 0 < gate.wait_ns() <= 20 * MS


def test_a_saturated_event_loop_cuts_the_share_even_when_latencies_look_the_same():
    """A closed loop hides shadow work from the latency test (every request slows a little); the loop
    thread's CPU time does not: at ``max_loop_busy`` or more of a cycle the share halves to the floor."""
    clock = Clock()
    cpu = Clock()  # the loop thread's CPU clock
    gate = ShadowGate(cycle_s=0.1, min_share=0.03, max_loop_busy=0.7, clock=clock, cpu_clock=cpu)

    def busy_cycle(gate: ShadowGate, busy: float) -> None:
        for _ in range(100):
            if gate.wait_ns() == 0:
                gate.started()
                gate.finished()
            sample = gate.primary_start()
            gate.primary_end(sample, 2 * MS)  # the same latency in both phases
            clock.now += MS
            cpu.now += int(busy * MS)

    for _ in range(5):  # a loop on the CPU 40 % of the time: the latency test decides, and lets shadows run
        busy_cycle(gate, 0.4)
    assert gate.share == 1.0 and gate.saturated == 0 and 0.35 < gate.loop_busy < 0.45
    for _ in range(10):  # 90 %: halved every cycle down to the floor, no lower
        busy_cycle(gate, 0.9)
    assert gate.share == 0.03 and gate.saturated >= 5 and gate.loop_busy > 0.85
    for _ in range(30):  # the load eases: the share grows back
        busy_cycle(gate, 0.3)
    assert gate.share == 1.0
    off = ShadowGate(cycle_s=0.1, max_loop_busy=0, clock=clock, cpu_clock=cpu)  # 0: no such check
    for _ in range(5):
        busy_cycle(off, 1.0)
    assert off.share == 1.0 and off.saturated == 0


def test_saturated_primary_pushes_the_share_down_to_the_floor_and_back_up_when_it_recovers():
    clock = Clock()
    gate = ShadowGate(cycle_s=0.1, max_slowdown=0.1, min_share=0.03, clock=clock)
    for _ in range(20):  # shadow work doubles the primary's latency
        cycle(gate, clock, on_latency_ns=4 * MS, off_latency_ns=2 * MS)
    assert gate.share == 0.03 and gate.decreases >= 5  # halved down to the floor, no lower
    assert gate.last_ratio > 1.1
    # most of a cycle is now off: a worker is told to wait
    on_ticks = 0
    for _ in range(100):
        on_ticks += gate.wait_ns() == 0
        sample = gate.primary_start()
        gate.primary_end(sample, 4 * MS if sample == 0 else 2 * MS)
        clock.now += MS
    assert on_ticks < 10
    for _ in range(15):  # the load went away (or the shadow got cheap)
        cycle(gate, clock, on_latency_ns=2 * MS, off_latency_ns=2 * MS)
    assert gate.share == 1.0


def test_a_request_that_saw_a_shadow_copy_is_not_a_clean_sample():
    clock = Clock()
    gate = ShadowGate(cycle_s=0.1, clock=clock)
    clock.now += 90 * MS  # the off phase
    sample = gate.primary_start()
    assert sample > 0  # a clean candidate
    gate.started()  # ... but a copy starts (it was admitted earlier) while it runs
    gate.finished()
    gate.primary_end(sample, 50 * MS)
    gate.started()
    assert gate.primary_start() == SKIP  # a copy is running: not clean either
    gate.finished()


def test_at_a_high_rate_one_request_in_the_stride_is_timed_and_the_gate_still_judges():
    clock = Clock()
    gate = ShadowGate(cycle_s=0.1, max_slowdown=0.1, clock=clock)
    timed = []
    for c in range(12):  # 100 ms cycles of 2,000 requests (20,000 req/s), as the router drives the gate
        before = len(timed)
        for _ in range(2000):
            if gate.wait_ns() == 0 and gate.running == 0:
                gate.started()
                gate.finished()
            if gate.skip:  # the router's side: untimed, no call into the gate
                gate.skip -= 1
            else:
                sample = gate.primary_start()
                gate.primary_end(sample, 4 * MS if sample == 0 else 2 * MS)  # shadow work doubles latency
                timed.append(sample)
            clock.now += MS // 20
        if c >= 2:  # about 48 per phase (fewer when a phase is short), not 2,000
            assert gate.stride_off >= 5 and 50 <= len(timed) - before <= 120
    assert gate.decreases >= 3 and gate.share < 0.2  # the samples still tell loaded from clean


def test_without_shadow_work_in_a_cycle_the_share_is_kept():
    clock = Clock()
    gate = ShadowGate(cycle_s=0.1, clock=clock)
    gate.share = 0.5
    for _ in range(3):
        cycle(gate, clock, on_latency_ns=9 * MS, off_latency_ns=1 * MS, copies=False)
    assert gate.share == 0.5 and gate.decreases == 0


# -- a real router and mirror over fake versions -------------------------------------------------
class Version:
    def __init__(self, name: str, version: str, run) -> None:
        self.name, self.version_str, self.ready, self._run = name, version, True, run

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        await self._run()
        return InferenceResponse(self.name, self.version_str, request.id, {"y": np.ones((1, 2), np.float32)})


class Repo:
    def __init__(self, versions: dict[str, Version]) -> None:
        self.versions = versions

    def get(self, name: str, version: str = "") -> Version:
        return self.versions[version or "1.0.0"]


async def drive(slowed_by_shadows: bool, requests: int = 300, queue_size: int = 16):
    # A 50 % tolerance: the fake saturated primary is 7x slower. Running the shadow copies on the same
    # loop delays the primary's wake-ups by a fixed amount (~0.35 ms on a slow 2-core machine: 1.35x a
    # 1 ms primary, near the tolerance), so the primary takes 2 ms, where that is ~1.2x.
    gate = ShadowGate(cycle_s=0.08, max_slowdown=0.5, min_share=0.03)

    shadow_runs = [0, 0]  # started, running

    async def primary() -> None:
        seen = shadow_runs[0]
        busy = shadow_runs[1] > 0
        await asyncio.sleep(0.002)
        if slowed_by_shadows and (busy or shadow_runs[0] != seen):
            await asyncio.sleep(0.012)  # a saturated machine: the shadow took the primary's capacity

    async def shadow() -> None:
        shadow_runs[0] += 1
        shadow_runs[1] += 1
        try:
            await asyncio.sleep(0.0005)
        finally:
            shadow_runs[1] -= 1

    repo = Repo({"1.0.0": Version("m", "1.0.0", primary), "2.0.0": Version("m", "2.0.0", shadow)})
    mirror = ShadowMirror(repo.get, queue_size=queue_size, workers=2, timeout_s=5, max_primary_inflight=10, gate=gate)
    router = Router(repo, mirror)  # type: ignore[arg-type]
    router.install("m", CompiledPolicy.compile(TrafficPolicy.build("m", [("1.0.0", 1000)], [("2.0.0", 1000)])))
    router.start()
    x = {"x": np.zeros((1, 2), np.float32)}
    try:
        for i in range(requests):
            response = await router.dispatch(InferenceRequest("m", "", f"r{i}", x))
            assert response.model_version == "1.0.0"  # the primary answers, always
        stats = mirror.stats_for("m", "2.0.0")
        for _ in range(500):  # let the queued copies finish (bounded)
            total = stats.total()
            if total.completed + total.errors == total.mirrored:
                break
            await asyncio.sleep(0.01)
        return mirror, gate, stats.total()
    finally:
        await router.stop()


async def test_router_drops_shadow_copies_when_they_slow_the_primary():
    mirror, gate, total = await drive(slowed_by_shadows=True)
    assert gate.decreases > 0 and gate.share < 1.0
    assert total.dropped > 0 and mirror.dropped_total == total.dropped
    assert total.mirrored + total.dropped == 300  # every copy is accounted for: run or dropped
    assert total.completed < 300 and total.errors == 0


async def test_router_runs_shadow_copies_beside_a_primary_they_do_not_slow():
    # room for a whole cycle's copies even if scheduling noise on a busy machine halves the share once
    mirror, gate, total = await drive(slowed_by_shadows=False, queue_size=64)
    assert gate.share >= 0.5
    assert total.dropped == 0  # the queue absorbs the off phases
    assert total.completed == 300 and total.errors == 0
    assert mirror.started_total == 300
