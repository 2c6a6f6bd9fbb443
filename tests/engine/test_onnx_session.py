"""OnnxEngine: results on the pool and inline, and when a run may stay on the caller's thread."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from sidecar.engine.onnx_session import OnnxEngine
from sidecar.testing.models import mlp_model
from sidecar.testing.replanning import ReplanningSession


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory):
    return mlp_model(tmp_path_factory.mktemp("mlp") / "model.onnx", features=8, hidden=16, classes=3)


@pytest.fixture()
def executor():
    pool = ThreadPoolExecutor(1, thread_name_prefix="engine-test")
    yield pool
    pool.shutdown(wait=True)


def _engine(path, executor, inline_max_us: float) -> OnnxEngine:
    return OnnxEngine(
        path, providers=["CPUExecutionProvider"], executor=executor, max_batch_size=8, inline_max_us=inline_max_us
    )


def _rows(n: int) -> dict[str, np.ndarray]:
    return {"input": np.arange(n * 8, dtype=np.float32).reshape(n, 8) / 10}


def test_no_inline_run_before_a_one_row_run_was_measured(mlp_path, executor):
    engine = _engine(mlp_path, executor, inline_max_us=1e9)
    assert engine.run_inline(_rows(1), ["probabilities"]) is None


def test_one_row_run_goes_inline_once_measured_cheap(mlp_path, executor):
    engine = _engine(mlp_path, executor, inline_max_us=1e9)  # any measured time counts as cheap
    expected = engine.run_sync(_rows(1), ["probabilities"])  # measures a one-row run
    thread_ids = []
    real_run = engine._session.run

    def spy(names, feed):
        thread_ids.append(threading.get_ident())
        return real_run(names, feed)

    engine._session.run = spy
    out = engine.run_inline(_rows(1), ["probabilities"])
    assert out is not None
    np.testing.assert_array_equal(out["probabilities"], expected["probabilities"])
    assert thread_ids == [threading.get_ident()]  # ran here, not on the pool


def test_inline_refused_for_several_rows_and_when_switched_off(mlp_path, executor):
    engine = _engine(mlp_path, executor, inline_max_us=1e9)
    engine.run_sync(_rows(1), ["probabilities"])
    assert engine.run_inline(_rows(2), ["probabilities"]) is None  # a real batch always goes to the pool
    off = _engine(mlp_path, executor, inline_max_us=0)
    off.run_sync(_rows(1), ["probabilities"])
    assert off.run_inline(_rows(1), ["probabilities"]) is None


def test_inline_refused_when_one_row_runs_measure_slower_than_the_limit(mlp_path, executor):
    engine = _engine(mlp_path, executor, inline_max_us=1e-3)  # 1 ns: no real run is that fast
    engine.run_sync(_rows(1), ["probabilities"])
    assert engine.run_inline(_rows(1), ["probabilities"]) is None


def test_pool_and_inline_results_agree(mlp_path, executor):
    engine = _engine(mlp_path, executor, inline_max_us=1e9)
    pooled = asyncio.run(engine.run(_rows(1), ["probabilities"]))  # measures the one-row run, on the pool
    inline = engine.run_inline(_rows(1), ["probabilities"])
    assert inline is not None
    np.testing.assert_allclose(inline["probabilities"], pooled["probabilities"])
    assert pooled["probabilities"].shape == (1, 3)


def test_probe_tells_a_change_of_shape_stall_from_a_steady_run(mlp_path, executor):
    engine = _engine(mlp_path, executor, inline_max_us=0)
    engine.warm_up([1, 8], 1)
    engine._session = ReplanningSession(engine._session, 0.03)
    first, again, switched = engine.probe_shapes()  # at 2 rows: the smallest size the warm-up skipped
    assert first >= 30 and switched >= 30 and again < 30


def test_own_sessions_per_size_each_run_one_shape_and_agree_with_the_first(mlp_path, executor):
    engine = _engine(mlp_path, executor, inline_max_us=0)
    expected = {n: engine.run_sync(_rows(n), ["probabilities"])["probabilities"] for n in (1, 2, 4, 8)}
    engine.use_batch_buckets([1, 2, 4], own_sessions=True, warmup_runs=1)
    assert engine.batch_buckets == (1, 2, 4, 8) and sorted(engine._by_rows) == [1, 2, 4]
    assert engine.shape_buckets == "sessions"
    assert [engine.padded_rows(n) for n in (1, 3, 5, 8)] == [1, 4, 8, 8]
    assert len({id(s) for s in (*engine._by_rows.values(), engine._session)}) == 4
    for n in (1, 2, 4, 8):
        np.testing.assert_allclose(
            engine.run_sync(_rows(n), ["probabilities"])["probabilities"], expected[n], rtol=1e-6
        )
    engine.close()
    assert engine._by_rows == {}


class OneHiccup:
    """A session whose ``at``-th run (counting from 0) takes ``stall_s`` longer, once."""

    def __init__(self, session, at: int, stall_s: float) -> None:
        self.session, self.at, self.stall_s, self.calls = session, at, stall_s, 0

    def run(self, names, feed):
        if self.calls == self.at:
            threading.Event().wait(self.stall_s)
        self.calls += 1
        return self.session.run(names, feed)


@pytest.mark.parametrize("at", [0, 1, 4, 6])
def test_probe_does_not_take_a_one_off_hiccup_for_a_stall(mlp_path, executor, at):
    engine = _engine(mlp_path, executor, inline_max_us=0)
    engine.warm_up([1, 8], 1)
    engine._session = OneHiccup(engine._session, at, 0.03)
    first, again, switched = engine.probe_shapes()
    assert max(first, again, switched) < 30


def test_sessions_per_size_that_cannot_be_made_leave_padding_on_one_session(mlp_path, executor, caplog):
    engine = _engine(mlp_path, executor, inline_max_us=0)

    def out_of_memory():
        raise RuntimeError("CUDA failure 2: out of memory")

    engine._new_session = out_of_memory
    engine.use_batch_buckets([1, 2, 4], own_sessions=True)
    assert engine.batch_buckets == (1, 2, 4, 8) and engine._by_rows == {} and engine.shape_buckets == "pad"
    assert "cannot make a session per batch size (CUDA failure 2: out of memory)" in caplog.text
    np.testing.assert_allclose(engine.run_sync(_rows(4), ["probabilities"])["probabilities"].shape, (4, 3))
