"""How a shadow worker waits for capacity: on events, never by polling.

A real ``Router``, ``ShadowMirror`` and ``ShadowGate`` over versions answered by ``FakeEngine``s, paused
to hold primary requests in flight. The gate's cycle is an hour long (always in its on phase), so only
the primary-in-flight and loop-lag conditions hold a copy back. A worker woken by the router's signal
starts its copy within a few turns of the event loop: ``TICKS`` zero-sleeps, microseconds each, where
a timed back-off would need milliseconds.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from conftest import until

from sidecar.routing.gate import ShadowGate
from sidecar.routing.policy import CompiledPolicy, TrafficPolicy
from sidecar.routing.router import Router
from sidecar.routing.shadow import ShadowMirror
from sidecar.testing.fake_engine import FakeEngine
from sidecar.types import InferenceRequest, InferenceResponse

TICKS = 20  # event-loop turns a woken worker gets to start its copy


class Version:
    """A model version answered by a FakeEngine (pause it to hold requests in flight)."""

    def __init__(self, version: str) -> None:
        self.version_str, self.ready = version, True
        self.engine = FakeEngine(max_batch_size=0)  # no batch dimension: copies run one by one

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        outputs = await self.engine.run(request.inputs, request.requested_outputs or ())
        return InferenceResponse(request.model_name, self.version_str, request.id, outputs)


class Repo:
    def __init__(self) -> None:
        self.versions = {v: Version(v) for v in ("1.0.0", "2.0.0")}

    def get(self, name: str, version: str = "") -> Version:
        return self.versions[version or "1.0.0"]


def setup(workers: int = 1, cycle_s: float = 3600.0, **mirror_settings) -> tuple[Repo, ShadowMirror, Router]:
    repo = Repo()
    gate = ShadowGate(cycle_s=cycle_s)  # by default an hour-long on phase: the gate never holds a copy back
    mirror = ShadowMirror(repo.get, queue_size=16, workers=workers, copies_per_turn=1, gate=gate, **mirror_settings)
    router = Router(repo, mirror)  # type: ignore[arg-type]
    router.install("m", CompiledPolicy.compile(TrafficPolicy.build("m", [("1.0.0", 1000)], [("2.0.0", 1000)])))
    router.start()
    return repo, mirror, router


def request(i: int) -> InferenceRequest:
    return InferenceRequest("m", "", f"r{i}", {"INPUT0": np.full((1, 4), i, np.float32)})


def offer_copy(mirror: ShadowMirror, i: int) -> None:
    """Queue one copy for the shadow, as the router does after a primary answered."""
    response = InferenceResponse("m", "1.0.0", f"c{i}", {"OUTPUT0": np.zeros((1, 4), np.float32)})
    mirror.offer(("2.0.0",), request(i), response, 1000, None)


async def hold_primaries(router: Router, primary: FakeEngine, n: int) -> list[asyncio.Task]:
    """``n`` primary requests in flight, held in the paused primary engine."""
    primary.pause()
    tasks = [asyncio.ensure_future(router.dispatch(request(i))) for i in range(n)]
    await primary.wait_started(n)
    return tasks


async def started_within_ticks(engine: FakeEngine, count: int) -> bool:
    for _ in range(TICKS):
        if engine.started >= count:
            return True
        await asyncio.sleep(0)
    return engine.started >= count


async def test_a_worker_waiting_for_primaries_starts_as_soon_as_they_finish():
    repo, mirror, router = setup(max_primary_inflight=1, max_loop_lag_ms=1000.0)
    primary, shadow = repo.versions["1.0.0"].engine, repo.versions["2.0.0"].engine
    try:
        tasks = await hold_primaries(router, primary, 3)  # 3 in flight, at most 1 allowed
        offer_copy(mirror, 100)
        await until(lambda: mirror.deferrals >= 1)  # the worker took the copy and waits
        assert mirror.queue_depth == 0 and shadow.started == 0
        assert mirror.wake_inflight == 1  # the router signals once at most 1 primary is left
        deferrals = mirror.deferrals
        await asyncio.sleep(0.05)  # a timed back-off would have polled (and counted) several times by now
        assert shadow.started == 0 and mirror.deferrals == deferrals
        primary.resume()
        responses = await asyncio.gather(*tasks)
        assert [r.model_version for r in responses] == ["1.0.0"] * 3  # the primaries answered first
        assert await started_within_ticks(shadow, 1)  # woken by the last completions, not by a timer
        assert mirror.wake_inflight == -1  # nobody waits: the primary path is back to one comparison
        await until(lambda: mirror.stats_for("m", "2.0.0").total().completed == 4)  # the copy and 3 mirrored
    finally:
        await router.stop()


async def test_workers_waiting_in_turn_all_start_when_the_primaries_finish():
    repo, mirror, router = setup(workers=2, max_primary_inflight=0, max_loop_lag_ms=1000.0)
    primary, shadow = repo.versions["1.0.0"].engine, repo.versions["2.0.0"].engine
    shadow.pause()  # hold the copies once started, so both workers are seen running at once
    try:
        tasks = await hold_primaries(router, primary, 1)
        offer_copy(mirror, 100)
        offer_copy(mirror, 101)
        # Both workers hold a copy: one waits for the primaries, the other for its turn to check.
        await until(lambda: mirror.deferrals >= 1 and mirror.queue_depth == 0)
        assert shadow.started == 0 and mirror.deferrals == 1
        primary.resume()
        await asyncio.gather(*tasks)
        assert await started_within_ticks(shadow, 2)
        assert shadow.running == 2
        shadow.resume()
        await until(lambda: mirror.stats_for("m", "2.0.0").total().completed == 3)
    finally:
        await router.stop()


async def test_a_second_worker_does_not_start_on_the_capacity_the_first_one_just_took():
    repo, mirror, router = setup(workers=2, max_primary_inflight=4, max_loop_lag_ms=1000.0)
    primary, shadow = repo.versions["1.0.0"].engine, repo.versions["2.0.0"].engine
    shadow.pause()  # hold the first turn once started
    try:
        tasks = await hold_primaries(router, primary, 1)  # within the limit: the first worker goes
        offer_copy(mirror, 100)
        offer_copy(mirror, 101)
        await until(lambda: shadow.started == 1 and mirror.deferrals >= 1 and mirror.queue_depth == 0)
        deferrals = mirror.deferrals
        await asyncio.sleep(0.05)  # no timer, no poll: the second worker waits for a primary to finish
        assert shadow.started == 1 and mirror.deferrals == deferrals and mirror.wake_inflight == 4
        primary.resume()
        await asyncio.gather(*tasks)
        assert await started_within_ticks(shadow, 2)  # the primary finished: the second turn starts
        shadow.resume()
        await until(lambda: mirror.stats_for("m", "2.0.0").total().completed == 3)
    finally:
        await router.stop()


class LoopHog:
    """Busy work on the event loop's thread, 2 ms at every turn of the loop (as a request's decoding or
    encoding would be): while it runs, every lag probe of a shadow worker finds the loop lagging."""

    def __init__(self) -> None:
        self.running = True
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while self.running:
            end = time.perf_counter() + 0.002
            while time.perf_counter() < end:
                pass
            await asyncio.sleep(0)

    async def stop(self) -> None:
        self.running = False
        await self.task


async def test_a_worker_waiting_for_a_lagging_loop_starts_when_the_last_primary_finishes():
    repo, mirror, router = setup(max_primary_inflight=4, max_loop_lag_ms=0.5)
    primary, shadow = repo.versions["1.0.0"].engine, repo.versions["2.0.0"].engine
    try:
        tasks = await hold_primaries(router, primary, 1)  # within the in-flight limit
        hog = LoopHog()
        offer_copy(mirror, 100)
        await until(lambda: mirror.deferrals >= 1)  # the probe found the loop lagging
        assert shadow.started == 0 and mirror.wake_inflight == 4
        await hog.stop()  # the loop is free again, but nothing tells the worker yet: no timer, no poll
        deferrals = mirror.deferrals
        await asyncio.sleep(0.05)
        assert shadow.started == 0 and mirror.deferrals == deferrals
        primary.resume()
        await asyncio.gather(*tasks)  # the last primary finished: traffic stopped
        assert await started_within_ticks(shadow, 1)  # woken by it, and the probe passes on an idle loop
        await until(lambda: mirror.stats_for("m", "2.0.0").total().completed == 2)
        assert mirror.wake_inflight == -1
    finally:
        await router.stop()


async def test_a_worker_waiting_for_a_lagging_loop_looks_again_at_the_next_on_phase_while_a_primary_hangs():
    repo, mirror, router = setup(cycle_s=0.02, max_primary_inflight=4, max_loop_lag_ms=0.5)
    primary, shadow = repo.versions["1.0.0"].engine, repo.versions["2.0.0"].engine
    try:
        tasks = await hold_primaries(router, primary, 1)  # does not finish until resumed
        hog = LoopHog()
        offer_copy(mirror, 100)
        await until(lambda: mirror.deferrals >= 4)  # no completion comes: the next cycles end the waits
        assert shadow.started == 0 and mirror.wake_inflight == 4
        await hog.stop()
        await until(lambda: shadow.started == 1)  # at the next on phase, with the primary still in flight
        assert primary.running == 1
        primary.resume()
        await asyncio.gather(*tasks)
        await until(lambda: mirror.stats_for("m", "2.0.0").total().completed == 2)
        assert mirror.wake_inflight == -1
    finally:
        await router.stop()


async def test_stop_while_a_worker_waits_returns_at_once_and_the_primary_still_answers():
    repo, mirror, router = setup(workers=2, max_primary_inflight=0, max_loop_lag_ms=1000.0)
    primary, shadow = repo.versions["1.0.0"].engine, repo.versions["2.0.0"].engine
    tasks = await hold_primaries(router, primary, 1)
    offer_copy(mirror, 100)
    offer_copy(mirror, 101)
    await until(lambda: mirror.deferrals >= 1 and mirror.queue_depth == 0)  # both workers hold a copy
    await asyncio.wait_for(router.stop(), 5.0)  # cancels the waiting workers; the signal waits for nobody
    assert mirror.wake_inflight == -1 and mirror.queue_depth == 0
    assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set(tasks)
    primary.resume()
    (response,) = await asyncio.gather(*tasks)  # finishing primaries do not touch the stopped workers
    assert response.model_version == "1.0.0" and response.id == "r0"
    assert shadow.started == 0
    # Started again, the mirror runs the copy the primary left, then waits and wakes as before.
    router.start()
    try:
        await until(lambda: mirror.stats_for("m", "2.0.0").total().completed == 1)
        deferrals = mirror.deferrals
        tasks = await hold_primaries(router, primary, 1)
        offer_copy(mirror, 102)
        await until(lambda: mirror.deferrals > deferrals)
        assert shadow.started == 1
        primary.resume()
        await asyncio.gather(*tasks)
        assert await started_within_ticks(shadow, 2)
    finally:
        await router.stop()
