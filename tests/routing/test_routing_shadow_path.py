"""The primary's side of mirroring: what ``Router.dispatch`` does per request when shadows are configured.

A real ``Router``, ``ShadowMirror`` and ``ShadowGate`` over fake versions: a copy the queue has no room
for is dropped (and counted) before anything is made for it, the gate times one request in its stride,
and a sampled mirror share follows the policy and the sticky key exactly as ``CompiledPolicy`` says.
"""

from __future__ import annotations

import asyncio

import numpy as np
from conftest import until

from sidecar.routing.comparison import ShadowStats
from sidecar.routing.gate import ShadowGate
from sidecar.routing.policy import CompiledPolicy, TrafficPolicy
from sidecar.routing.router import Router
from sidecar.routing.shadow import ShadowMirror
from sidecar.types import InferenceRequest, InferenceResponse


class Version:
    def __init__(self, version: str) -> None:
        self.version_str, self.ready = version, True
        self.seen: list[str] = []  # request ids

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        self.seen.append(request.id)
        return InferenceResponse("m", self.version_str, request.id, {"y": np.ones((1, 2), np.float32)})


class Repo:
    def __init__(self, *versions: str) -> None:
        self.versions = {v: Version(v) for v in versions}

    def get(self, name: str, version: str = "") -> Version:
        return self.versions[version or "1.0.0"]


class CountingGate(ShadowGate):
    """A gate that counts the primary requests it was asked to time."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.timed = 0

    def primary_start(self) -> int:
        self.timed += 1
        return super().primary_start()


def request(i: int, key: str = "") -> InferenceRequest:
    return InferenceRequest("m", "", f"r{i}", {"x": np.zeros((1, 2), np.float32)}, routing_key=key)


async def test_a_copy_without_room_is_dropped_and_counted_and_the_gate_times_one_request_in_its_stride():
    repo = Repo("1.0.0", "2.0.0")
    gate = CountingGate(cycle_s=3600.0)  # one long cycle: the stride stays as set
    gate.stride_on = gate.stride_off = 4
    mirror = ShadowMirror(repo.get, queue_size=3, gate=gate)  # workers not started: nothing leaves the queue
    router = Router(repo, mirror)  # type: ignore[arg-type]
    router.install("m", CompiledPolicy.compile(TrafficPolicy.build("m", [("1.0.0", 1000)], [("2.0.0", 1000)])))
    for i in range(20):
        response = await router.dispatch(request(i))
        assert response.model_version == "1.0.0" and response.id == f"r{i}"
    assert mirror.queue_depth == 3 and mirror.room == 0
    total = mirror.stats_for("m", "2.0.0").total()
    assert (total.mirrored, total.dropped) == (3, 17) and mirror.dropped_total == 17
    assert gate.timed == 5  # requests 0, 4, 8, 12, 16
    # A pinned request and a model without shadows are never mirrored, but count for the gate.
    await router.dispatch(InferenceRequest("m", "1.0.0", "pinned", {"x": np.zeros((1, 2), np.float32)}))
    assert mirror.stats_for("m", "2.0.0").total().dropped == 17 and gate.timed == 6  # its turn: 20
    # The policy loses its shadow: its queued copies go, the plan goes, the mirror turns inactive.
    router.install("m", CompiledPolicy.compile(TrafficPolicy.build("m", [("1.0.0", 1000)], [])))
    assert mirror.queue_depth == 0 and mirror.room == 3 and not mirror.active and "m" not in mirror.plans
    await router.dispatch(request(99))
    assert gate.timed == 6  # no shadow anywhere: the gate is left alone


async def test_sampled_mirror_shares_follow_the_policy_and_the_sticky_key():
    repo = Repo("1.0.0", "1.1.0", "2.0.0", "3.0.0")
    mirror = ShadowMirror(repo.get, queue_size=1000, workers=1, max_primary_inflight=1000)
    router = Router(repo, mirror)  # type: ignore[arg-type]
    arms = [("1.0.0", 500), ("1.1.0", 500)]
    policy = CompiledPolicy.compile(TrafficPolicy.build("m", arms, [("2.0.0", 300), ("3.0.0", 600)]))
    router.install("m", policy)
    router.start()
    try:
        keys = [f"user-{i}" for i in range(300)]
        for i, key in enumerate(keys):
            response = await router.dispatch(request(i, key))
            assert response.model_version == policy.choose(key)  # the arm, as the policy says
        for version, share in (("2.0.0", 0.3), ("3.0.0", 0.6)):
            expected = {f"r{i}" for i, key in enumerate(keys) if version in policy.shadows_for(key)}
            assert abs(len(expected) - 300 * share) < 40
            stats = mirror.stats_for("m", version)
            await until(lambda: stats.total().completed == len(expected))  # noqa: B023 (awaited here)
            assert set(repo.versions[version].seen) == expected  # exactly the keys the policy mirrors
            assert stats.total().mirrored == len(expected) and stats.total().dropped == 0
    finally:
        await router.stop()


async def test_an_idle_worker_wakes_for_a_copy_and_stop_leaves_no_task_behind():
    repo = Repo("1.0.0", "2.0.0")
    mirror = ShadowMirror(repo.get, queue_size=4, workers=2)
    router = Router(repo, mirror)  # type: ignore[arg-type]
    router.install("m", CompiledPolicy.compile(TrafficPolicy.build("m", [("1.0.0", 1000)], [("2.0.0", 1000)])))
    router.start()
    await asyncio.sleep(0.01)  # both workers wait on an empty queue
    await router.dispatch(request(1))
    await until(lambda: repo.versions["2.0.0"].seen == ["r1"])
    await router.stop()
    assert mirror.queue_depth == 0 and mirror.room == 4
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


def test_counts_from_the_request_path_reach_the_current_window_and_the_total():
    stats = ShadowStats("m", "2.0.0", window_s=60.0)
    for _ in range(3):
        stats.count_mirrored()
    stats.count_dropped()
    current = stats.current()
    assert (current.mirrored, current.dropped) == (3, 1)
    stats.count_dropped()
    assert (stats.total().mirrored, stats.total().dropped) == (3, 2)
    assert stats.windows()[-1].dropped == 2


def test_cumulative_figures_only_grow_across_windows():
    """``cumulative()`` (what metric collections read, from their own threads) never loses a count when
    a window closes, and holds request-path counts before any window has taken them."""
    import time

    stats = ShadowStats("m", "2.0.0", window_s=0.05)
    stats.count_mirrored()
    stats.count_dropped()
    out = {"label": np.array([1, 2], np.int64), "p": np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)}
    other = {"label": np.array([1, 0], np.int64), "p": np.array([[0.2, 0.8], [0.8, 0.2]], np.float32)}
    stats.record_result(out, other, 1_000_000, 3_000_000)
    first = stats.cumulative()
    assert (first.mirrored, first.dropped, first.completed, first.class_rows, first.agreed_rows) == (1, 1, 1, 2, 1)
    assert first.agreement == 0.5 and first.mean_latency_diff_ms == 2.0
    time.sleep(0.06)
    stats.count_mirrored()
    stats.record_error()  # the window of the first copy closes here
    later = stats.cumulative()
    assert (later.mirrored, later.dropped, later.completed, later.errors, later.agreed_rows) == (2, 1, 1, 1, 1)
    assert stats.total().mirrored == 2 and sum(w.mirrored for w in stats.windows()) == 2  # the windows agree
