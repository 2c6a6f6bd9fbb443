"""The schedulers tell the monitor of every engine run once, with the run's merged tensors and the rows
of each request in it (the hook that replaced per-request buffering)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sidecar.batching.dynamic import DynamicBatcher
from sidecar.batching.scheduler import DirectScheduler
from sidecar.engine.statistics import VersionStatistics
from sidecar.errors import EngineError
from sidecar.testing.fake_engine import FakeEngine, batch_settings, work_item


class Recorder:
    def __init__(self) -> None:
        self.runs: list[tuple[dict, dict, list[int]]] = []

    def observe(self, inputs, outputs, request_rows) -> None:
        self.runs.append((dict(inputs), dict(outputs), list(request_rows)))

    def rejected(self) -> None:
        raise AssertionError("schedulers never see rejected requests")


def rows_of(value: float, rows: int) -> np.ndarray:
    return np.full((rows, 4), value, np.float32)


async def test_dynamic_batcher_observes_each_batch_once_with_its_merged_tensors():
    engine = FakeEngine(max_batch_size=8)
    batcher = DynamicBatcher(engine, batch_settings(), VersionStatistics(), "m", "1.0.0")
    recorder = Recorder()
    batcher.observer = recorder
    engine.pause()
    first = asyncio.ensure_future(batcher.submit(work_item(engine, rows_of(9.0, 1))))
    await engine.wait_started(1)
    queued = [asyncio.ensure_future(batcher.submit(work_item(engine, rows_of(v, v)))) for v in (1, 2, 3)]
    for _ in range(5):
        await asyncio.sleep(0)
    engine.resume()
    await asyncio.gather(first, *queued)
    await batcher.close()
    assert len(engine.calls) == 2 and [r[2] for r in recorder.runs] == [[1], [1, 2, 3]]
    inputs, outputs, _ = recorder.runs[1]
    expected = np.concatenate([rows_of(v, v) for v in (1, 2, 3)])
    np.testing.assert_array_equal(inputs["INPUT0"], expected)
    np.testing.assert_array_equal(outputs["OUTPUT0"], 2 * expected)
    assert outputs["OUTPUT1"].shape == (6,)


async def test_a_failed_batch_is_not_observed_and_direct_runs_are_observed_per_request():
    engine = FakeEngine(max_batch_size=8)
    batcher = DynamicBatcher(engine, batch_settings(), VersionStatistics(), "m", "1.0.0")
    recorder = Recorder()
    batcher.observer = recorder
    engine.fail_next(RuntimeError("boom"))
    with pytest.raises(EngineError):
        await batcher.submit(work_item(engine, rows_of(1.0, 2)))
    await batcher.close()
    assert recorder.runs == []

    direct = DirectScheduler(engine, VersionStatistics(), "m", "1.0.0")
    direct.observer = recorder
    out = await direct.submit(work_item(engine, rows_of(2.0, 3)))
    assert recorder.runs == []  # observed once the caller has its answer: at the loop's next turn
    await asyncio.sleep(0)
    ((inputs, outputs, rows),) = recorder.runs
    assert rows == [3] and inputs["INPUT0"].shape == (3, 4) and outputs["OUTPUT0"] is out["OUTPUT0"]
