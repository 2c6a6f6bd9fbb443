"""The shadow queue: bounded, never blocking, dropping and counting, purged when a shadow goes away."""

from __future__ import annotations

import asyncio

import numpy as np
from conftest import until

from sidecar.routing.shadow import SHADOW_PRIORITY, ShadowMirror
from sidecar.types import InferenceRequest, InferenceResponse


class Gate:
    """A shadow version that answers only when released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: list[InferenceRequest] = []

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        self.seen.append(request)
        await self.release.wait()
        return InferenceResponse(request.model_name, request.model_version, request.id, {"y": np.ones((1, 2))})


async def test_full_queue_drops_and_counts_and_reset_purges():
    gate = Gate()
    mirror = ShadowMirror(lambda model, version: gate, queue_size=3, workers=1, timeout_s=5, copies_per_turn=1)
    mirror.start()
    request = InferenceRequest("m", "", "r1", {"x": np.zeros((1, 2), np.float32)})
    primary = InferenceResponse("m", "1.0.0", "r1", {"y": np.ones((1, 2))})
    for _ in range(10):
        mirror.offer(("2.0.0",), request, primary, 1000, None)  # returns at once, never awaits
    await asyncio.sleep(0.05)
    stats = mirror.stats_for("m", "2.0.0")
    total = stats.total()
    assert (total.mirrored, total.dropped) == (3, 7)  # all ten offered before the worker ran
    assert mirror.dropped_total == 7
    assert gate.seen and gate.seen[0].model_version == "2.0.0" and gate.seen[0].priority == SHADOW_PRIORITY
    assert mirror.queue_depth == 2  # one copy is running in the shadow
    mirror.reset("m", ())  # the shadow left the policy: its queued copies go too
    assert mirror.queue_depth == 0 and mirror.all_stats("m") == []
    gate.release.set()
    await mirror.stop()


async def test_a_worker_runs_the_queued_copies_together():
    gate = Gate()
    mirror = ShadowMirror(lambda model, version: gate, queue_size=10, workers=1, timeout_s=5, copies_per_turn=4)
    request = InferenceRequest("m", "", "r1", {"x": np.zeros((1, 2), np.float32)})
    primary = InferenceResponse("m", "1.0.0", "r1", {"y": np.ones((1, 2))})
    for _ in range(6):
        mirror.offer(("2.0.0",), request, primary, 1000, None)
    mirror.start()
    await until(lambda: len(gate.seen) >= 4)
    await asyncio.sleep(0.01)
    assert len(gate.seen) == 4 and mirror.queue_depth == 2  # four at once (a batch for the shadow), two wait
    gate.release.set()
    await until(lambda: mirror.stats_for("m", "2.0.0").total().completed == 6)
    assert len(gate.seen) == 6 and mirror.stats_for("m", "2.0.0").total().completed == 6
    await mirror.stop()
