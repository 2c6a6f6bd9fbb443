"""Shadow copies joined into one request per shadow version, and compared in one pass."""

from __future__ import annotations

import asyncio

import numpy as np
from conftest import until

from sidecar.routing.comparison import ShadowStats
from sidecar.routing.gate import ShadowGate
from sidecar.routing.shadow import SHADOW_PRIORITY, ShadowMirror
from sidecar.types import InferenceRequest, InferenceResponse


class Engine:
    def __init__(self, max_batch_size: int) -> None:
        self.max_batch_size = max_batch_size


class BatchingShadow:
    """A shadow version with a batch dimension: the label is the input's first column, as an integer."""

    def __init__(self, max_batch_size: int, garbage_rows: set[int] = frozenset()) -> None:
        self.engine = Engine(max_batch_size)
        self.seen: list[InferenceRequest] = []
        self.garbage_rows = garbage_rows

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        self.seen.append(request)
        x = request.inputs["x"]
        label = x[:, 0].astype(np.int64)
        scores = x.copy()
        scores[[r for r in range(len(x)) if r in self.garbage_rows]] = np.nan
        return InferenceResponse(request.model_name, request.model_version, request.id, {"label": label, "s": scores})


def copy(i: int, label: int, rows: int = 1) -> tuple[InferenceRequest, InferenceResponse]:
    x = np.full((rows, 2), float(i), np.float32)
    request = InferenceRequest("m", "", f"r{i}", {"x": x})
    primary = {"label": np.full(rows, label, np.int64), "s": x + 0.5}
    return request, InferenceResponse("m", "1.0.0", f"r{i}", primary)


async def test_copies_run_as_one_request_and_compare_as_if_one_by_one():
    shadow = BatchingShadow(max_batch_size=8)
    mirror = ShadowMirror(lambda model, version: shadow, queue_size=64, workers=1, copies_per_turn=64)
    reference = ShadowStats("m", "2.0.0")
    for i in range(12):
        request, primary = copy(i, label=i if i % 3 else -1, rows=1 + i % 2)  # every third label disagrees
        mirror.offer(("2.0.0",), request, primary, 1000, None)
        answer = await BatchingShadow(8).infer(request)
        reference.record_result(primary.outputs, answer.outputs, 1000, 5000)
    mirror.start()
    stats = mirror.stats_for("m", "2.0.0")
    await until(lambda: stats.total().completed == 12)
    await mirror.stop()
    # 18 rows (1, 2, 1, 2, ...) in requests of at most 8 rows, in arrival order, at the shadow priority
    assert [len(r.inputs["x"]) for r in shadow.seen] == [7, 8, 3]
    assert {r.model_version for r in shadow.seen} == {"2.0.0"} and {r.priority for r in shadow.seen} == {
        SHADOW_PRIORITY
    }
    assert np.concatenate([r.inputs["x"][:, 0] for r in shadow.seen]).tolist() == [
        float(i) for i in range(12) for _ in range(1 + i % 2)
    ]
    got, want = stats.total(), reference.total()
    assert (got.completed, got.compared_rows, got.class_rows, got.agreement, got.mismatches) == (
        want.completed,
        want.compared_rows,
        want.class_rows,
        want.agreement,
        want.mismatches,
    )
    assert got.agreement == (18 - 6) / 18  # the rows of copies 0, 3, 6, 9 (1 + 2 + 1 + 2) disagree
    assert got.mean_abs_diff == want.mean_abs_diff == 0.5 and got.max_abs_diff == want.max_abs_diff
    assert mirror.started_total == 12


async def run_copies(mirror: ShadowMirror, n: int) -> ShadowStats:
    """Offer ``n`` one-row copies (the shadow agrees on each label), run them all, return the statistics."""
    for i in range(n):
        request, primary = copy(i, label=i)
        mirror.offer(("2.0.0",), request, primary, 1000, None)
    mirror.start()
    stats = mirror.stats_for("m", "2.0.0")
    await until(lambda: stats.total().completed == n)
    await mirror.stop()
    return stats


async def test_a_garbage_answer_in_a_batch_counts_as_a_mismatch_for_that_copy_only():
    shadow = BatchingShadow(max_batch_size=16, garbage_rows={2})
    mirror = ShadowMirror(lambda model, version: shadow, queue_size=64, workers=1, copies_per_turn=64)
    total = (await run_copies(mirror, 5)).total()
    assert len(shadow.seen) == 1  # one request for the five copies
    assert total.mismatches == 1 and total.agreement == 1.0 and total.completed == 5
    assert total.max_abs_diff == 0.5  # the NaN row is left out of the differences


async def test_a_failing_batch_counts_an_error_per_copy_and_versions_without_batch_run_alone():
    class Failing(BatchingShadow):
        async def infer(self, request):
            self.seen.append(request)
            raise RuntimeError("boom")

    failing = Failing(max_batch_size=16)
    alone = BatchingShadow(max_batch_size=0)
    versions = {"2.0.0": failing, "3.0.0": alone}
    mirror = ShadowMirror(lambda model, version: versions[version], queue_size=64, workers=1, copies_per_turn=64)
    for i in range(4):
        request, primary = copy(i, label=i)
        mirror.offer(("2.0.0", "3.0.0"), request, primary, 1000, None)
    mirror.start()
    await until(lambda: mirror.stats_for("m", "3.0.0").total().completed == 4)
    await until(lambda: mirror.stats_for("m", "2.0.0").total().errors == 4)
    await mirror.stop()
    assert len(failing.seen) == 1 and len(alone.seen) == 4
    assert mirror.stats_for("m", "3.0.0").total().agreement == 1.0


async def test_a_worker_collects_copies_that_trickle_in_before_it_runs_them():
    shadow = BatchingShadow(max_batch_size=16)
    mirror = ShadowMirror(lambda model, version: shadow, queue_size=64, workers=1, copies_per_turn=64, collect_ms=300)
    mirror.start()
    for i in range(4):  # a light load: one copy every 10 ms, well within the collection time
        request, primary = copy(i, label=i)
        mirror.offer(("2.0.0",), request, primary, 1000, None)
        await asyncio.sleep(0.01)
    stats = mirror.stats_for("m", "2.0.0")
    await until(lambda: stats.total().completed == 4)
    await mirror.stop()
    assert [len(r.inputs["x"]) for r in shadow.seen] == [4]


async def test_a_turn_takes_fewer_copies_when_the_gate_has_cut_the_shadows_share():
    """A saturated primary (the gate's share near its floor) pays for a few copies per turn, not 64; the
    rest stay queued for later turns (or are dropped when the queue fills)."""
    shadow = BatchingShadow(max_batch_size=64)
    gate = ShadowGate(cycle_s=3600.0)  # no judgement during the test: the share stays as set
    mirror = ShadowMirror(lambda model, version: shadow, queue_size=64, workers=1, copies_per_turn=64, gate=gate)
    gate.share = 0.05  # what the gate's judgement sets when shadow work slows the primary
    await run_copies(mirror, 12)
    assert [len(r.inputs["x"]) for r in shadow.seen] == [3, 3, 3, 3]  # round(64 x 0.05) copies per turn
    assert mirror.started_total == 12
