"""DynamicBatcher over a fake engine: one test per batching rule.

The engine's gate (``pause``/``resume``) makes queueing deterministic: while the first batch waits at
the gate, everything submitted queues behind it. Timing is used only as lower bounds (a delay that
must have been waited) or as generous upper bounds (far below a delay that must not be waited).
"""

from __future__ import annotations

import asyncio
import gc
import time

import numpy as np
import pytest

from sidecar.errors import DeadlineExceeded, EngineError, QueueFull, ServerDraining
from sidecar.testing.fake_engine import FakeEngine, double_and_row_sum, work_item
from sidecar.types import TensorSpec


def rows_of(value: float, rows: int = 1, width: int = 4) -> np.ndarray:
    """A read-only (like a decoded request) [rows, width] FP32 tensor; row r holds value + r."""
    x = (np.arange(rows, dtype=np.float32)[:, None] + value) * np.ones((1, width), np.float32)
    x.setflags(write=False)
    return x


def submit(batcher, engine, x, **kw) -> asyncio.Task:
    return asyncio.ensure_future(batcher.submit(work_item(engine, x, **kw)))


async def turns(n: int = 5) -> None:
    """Let the event loop run ``n`` turns (tasks reach their first await; scheduled callbacks run)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def hold_engine(batcher, engine) -> asyncio.Task:
    """Pause the engine and start one request, so everything submitted next queues behind it."""
    engine.pause()
    first = submit(batcher, engine, rows_of(-1.0))
    await engine.wait_started(1)
    return first


def check_outputs(x: np.ndarray, out: dict, names=("OUTPUT0", "OUTPUT1")) -> None:
    assert set(out) == set(names)
    if "OUTPUT0" in names:
        np.testing.assert_array_equal(out["OUTPUT0"], 2 * x)
    if "OUTPUT1" in names:
        np.testing.assert_array_equal(out["OUTPUT1"], x.reshape(x.shape[0], -1).sum(axis=1))


# -- merging and splitting ------------------------------------------------------------------------
async def test_lone_request_runs_alone_with_its_outputs(engine, make_batcher):
    batcher, stats = make_batcher(engine)
    x = rows_of(1.0, rows=3)
    out = await batcher.submit(work_item(engine, x))
    check_outputs(x, out)
    assert [c.rows for c in engine.calls] == [3]
    assert stats.queue.count == 1
    # The run's statistics are recorded after its callers were answered (one loop turn later).
    assert stats.execution_count == 0
    await turns(1)
    assert stats.execution_count == 1 and list(stats.batches) == [3]


async def test_requests_queued_behind_a_running_batch_run_as_one_batch_and_split_back(engine, make_batcher):
    batcher, stats = make_batcher(engine)
    first = await hold_engine(batcher, engine)
    xs = [rows_of(10.0 * i, rows=r) for i, r in enumerate([1, 3, 2, 1], start=1)]
    tasks = [submit(batcher, engine, x) for x in xs]
    await turns()
    assert batcher.queue_depth == 4
    engine.resume()
    results = await asyncio.gather(first, *tasks)
    assert [c.rows for c in engine.calls] == [1, 7]
    np.testing.assert_array_equal(engine.calls[1].inputs["INPUT0"], np.concatenate(xs))
    for x, out in zip(xs, results[1:], strict=True):
        check_outputs(x, out)
    # Outputs are views of the batch's output rows, not copies.
    assert results[1]["OUTPUT0"].base is not None and results[1]["OUTPUT0"].base is results[2]["OUTPUT0"].base
    assert stats.execution_count == 2 and sorted(stats.batches) == [1, 7] and stats.queue.count == 5
    assert stats.compute_infer.count == 5  # per request, as Triton counts them


async def test_batches_hold_at_most_max_batch_size_rows_in_arrival_order(make_batcher):
    engine = FakeEngine(max_batch_size=4)
    batcher, _ = make_batcher(engine)
    first = await hold_engine(batcher, engine)
    sizes = [1, 2, 1, 3, 1, 1, 4, 1]
    xs = [rows_of(100.0 * i, rows=r) for i, r in enumerate(sizes)]
    tasks = [submit(batcher, engine, x) for x in xs]
    await turns()
    engine.resume()
    results = await asyncio.gather(*tasks)
    await first
    # Greedy in arrival order, never overtaking: [1,2,1] [3,1] [1] (+4 would not fit) [4] [1].
    assert [c.rows for c in engine.calls[1:]] == [4, 4, 1, 4, 1]
    ran = np.concatenate([c.inputs["INPUT0"] for c in engine.calls[1:]])
    np.testing.assert_array_equal(ran, np.concatenate(xs))
    for x, out in zip(xs, results, strict=True):
        check_outputs(x, out)


async def test_each_request_gets_exactly_the_outputs_it_asked_for(engine, make_batcher):
    batcher, _ = make_batcher(engine)
    first = await hold_engine(batcher, engine)
    asks = [("OUTPUT0",), ("OUTPUT1",), None, ("OUTPUT1", "OUTPUT0")]
    xs = [rows_of(float(i), rows=2) for i in range(len(asks))]
    tasks = [submit(batcher, engine, x, outputs=a) for x, a in zip(xs, asks, strict=True)]
    await turns()
    engine.resume()
    results = await asyncio.gather(*tasks)
    await first
    assert len(engine.calls) == 2 and engine.calls[1].rows == 8
    assert engine.calls[1].output_names == ("OUTPUT0", "OUTPUT1")  # the union, in the model's order
    for x, a, out in zip(xs, asks, results, strict=True):
        check_outputs(x, out, a or ("OUTPUT0", "OUTPUT1"))


async def test_only_requested_outputs_are_computed_when_all_agree(engine, make_batcher):
    batcher, _ = make_batcher(engine)
    first = await hold_engine(batcher, engine)
    tasks = [submit(batcher, engine, rows_of(float(i)), outputs=("OUTPUT1",)) for i in range(3)]
    await turns()
    engine.resume()
    results = await asyncio.gather(*tasks)
    await first
    assert engine.calls[1].output_names == ("OUTPUT1",)
    assert all(set(r) == {"OUTPUT1"} for r in results)


async def test_requests_with_different_non_batch_shapes_are_never_merged(make_batcher):
    engine = FakeEngine(
        inputs=(TensorSpec("INPUT0", "FP32", (-1, -1)),),
        outputs=(TensorSpec("OUTPUT0", "FP32", (-1, -1)), TensorSpec("OUTPUT1", "FP32", (-1,))),
        max_batch_size=8,
    )
    batcher, _ = make_batcher(engine)
    first = await hold_engine(batcher, engine)
    widths = [3, 5, 3, 5, 5]
    xs = [rows_of(float(i), rows=1, width=w) for i, w in enumerate(widths)]
    tasks = [submit(batcher, engine, x) for x in xs]
    await turns()
    engine.resume()
    results = await asyncio.gather(*tasks)
    await first
    shapes = [c.input_shapes["INPUT0"] for c in engine.calls[1:]]
    assert shapes == [(2, 3), (3, 5)]  # the head's group first, then the others in their order
    for x, out in zip(xs, results, strict=True):
        check_outputs(x, out)


# -- order ------------------------------------------------------------------------------------------
async def test_priority_levels_then_arrival_order(make_batcher):
    engine = FakeEngine(max_batch_size=1)
    batcher, _ = make_batcher(engine)
    first = await hold_engine(batcher, engine)
    # (value, priority): 0 is the default level, served as level 1 (the most urgent).
    plan = [(1.0, 5), (2.0, 0), (3.0, 2), (4.0, 1), (5.0, 0)]
    tasks = [submit(batcher, engine, rows_of(v), priority=p) for v, p in plan]
    await turns()
    engine.resume()
    await asyncio.gather(first, *tasks)
    order = [float(c.inputs["INPUT0"][0, 0]) for c in engine.calls[1:]]
    assert order == [2.0, 4.0, 5.0, 3.0, 1.0]


# -- deadlines, cancellation, shedding ------------------------------------------------------------
async def test_request_already_past_its_deadline_is_refused_without_running(engine, make_batcher):
    batcher, _ = make_batcher(engine)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(work_item(engine, rows_of(1.0), deadline_ns=time.monotonic_ns() - 1))
    assert engine.started == 0


async def test_request_expiring_in_the_queue_is_answered_promptly_and_never_runs(engine, make_batcher):
    batcher, _ = make_batcher(engine)
    first = await hold_engine(batcher, engine)
    late = submit(batcher, engine, rows_of(7.0), deadline_ns=time.monotonic_ns() + 30_000_000)
    keeper = submit(batcher, engine, rows_of(8.0))
    with pytest.raises(DeadlineExceeded, match="did not run"):
        await asyncio.wait_for(late, 10)
    assert engine.running == 1 and engine.started == 1  # answered while the engine was still busy
    assert batcher.queue_depth == 1
    engine.resume()
    await first
    check_outputs(rows_of(8.0), await keeper)
    ran = np.concatenate([c.inputs["INPUT0"] for c in engine.calls])
    assert 7.0 not in ran


async def test_cancelled_caller_is_dropped_before_the_model_runs(engine, make_batcher):
    batcher, _ = make_batcher(engine)
    first = await hold_engine(batcher, engine)
    doomed = submit(batcher, engine, rows_of(7.0))
    kept = submit(batcher, engine, rows_of(8.0))
    await turns()
    assert batcher.queue_depth == 2
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed  # CancelledError reaches the caller: not swallowed
    assert batcher.queue_depth == 1
    engine.resume()
    await first
    check_outputs(rows_of(8.0), await kept)
    assert [c.rows for c in engine.calls] == [1, 1]
    assert engine.calls[1].inputs["INPUT0"][0, 0] == 8.0


async def test_caller_cancelled_while_its_batch_runs_does_not_disturb_its_neighbours(engine, make_batcher):
    batcher, _ = make_batcher(engine)
    first = await hold_engine(batcher, engine)
    a = submit(batcher, engine, rows_of(1.0))
    b = submit(batcher, engine, rows_of(2.0))
    await turns()
    engine.resume()
    engine.pause()  # the next run, a and b's batch, waits at a new gate
    await engine.wait_started(2)
    assert batcher.batches_running == 1 and batcher.queue_depth == 0
    a.cancel()
    engine.resume()
    check_outputs(rows_of(2.0), await b)
    await first
    assert a.cancelled()
    assert [c.rows for c in engine.calls] == [1, 2]


async def test_full_queue_sheds_new_requests_at_once(engine, make_batcher):
    batcher, _ = make_batcher(engine, max_queue_size=2)
    first = await hold_engine(batcher, engine)
    queued = [submit(batcher, engine, rows_of(float(i))) for i in range(2)]
    await turns()
    with pytest.raises(QueueFull, match="max_queue_size 2"):
        await batcher.submit(work_item(engine, rows_of(9.0)))
    assert batcher.queue_depth == 2
    queued[0].cancel()  # a cancelled caller frees its place at once
    await turns()
    again = submit(batcher, engine, rows_of(10.0))
    await turns()
    assert batcher.queue_depth == 2
    engine.resume()
    await asyncio.gather(first, queued[1], again)
    ran = np.concatenate([c.inputs["INPUT0"] for c in engine.calls])
    assert 9.0 not in ran and 0.0 not in ran and 10.0 in ran


# -- failures -------------------------------------------------------------------------------------
async def test_failing_batch_fails_every_request_in_it_and_the_next_batch_runs(engine, make_batcher):
    batcher, stats = make_batcher(engine)
    first = await hold_engine(batcher, engine)
    victims = [submit(batcher, engine, rows_of(float(i))) for i in range(3)]
    await turns()
    engine.resume()
    engine.pause()  # the victims' batch waits at a new gate ...
    await engine.wait_started(2)
    survivors = [submit(batcher, engine, rows_of(10.0 + i)) for i in range(2)]  # ... these queue behind it
    await turns()
    engine.fail_next(EngineError("model 'm' version '1.0.0': model failed while running: boom"))
    engine.resume()
    errors = await asyncio.gather(*victims, return_exceptions=True)
    assert all(isinstance(e, EngineError) and "boom" in e.message for e in errors), errors
    for i, t in enumerate(survivors):
        check_outputs(rows_of(10.0 + i), await t)
    check_outputs(rows_of(-1.0), await first)
    assert [c.rows for c in engine.calls] == [1, 3, 2]
    assert [c.error is not None for c in engine.calls] == [False, True, False]
    assert stats.execution_count == 2  # only the runs that succeeded


async def test_engine_error_reaches_every_caller_of_that_batch_only(engine, make_batcher):
    batcher, stats = make_batcher(engine)
    first = await hold_engine(batcher, engine)
    victims = [submit(batcher, engine, rows_of(float(i))) for i in range(3)]
    await turns()
    # The gated run has not computed yet: make only the three-row batch fail.
    engine.fail_when(lambda feed: RuntimeError("boom") if feed["INPUT0"].shape[0] == 3 else None)
    engine.resume()
    check_outputs(rows_of(-1.0), await first)
    errors = await asyncio.gather(*victims, return_exceptions=True)
    assert all(isinstance(e, EngineError) for e in errors)
    assert all("RuntimeError: boom" in e.message and "model 'm' version '1.0.0'" in e.message for e in errors)
    engine.fail_when(None)
    check_outputs(rows_of(5.0), await batcher.submit(work_item(engine, rows_of(5.0))))
    await turns(1)  # the statistics are recorded after the callers' answers
    assert stats.execution_count == 2  # failed runs are not counted as executions


async def test_sidecar_errors_from_the_engine_pass_through_unchanged(engine, make_batcher):
    batcher, _ = make_batcher(engine)
    error = EngineError("m: CUDA out of memory")
    engine.fail_next(error)
    with pytest.raises(EngineError) as caught:
        await batcher.submit(work_item(engine, rows_of(1.0)))
    assert caught.value is error


async def test_outputs_without_the_batch_dimension_fail_the_batch(make_batcher):
    def collapse(feed, names):
        return {n: v[:1] for n, v in double_and_row_sum(feed, names).items()}

    engine = FakeEngine(compute=collapse)
    batcher, _ = make_batcher(engine)
    with pytest.raises(EngineError, match="batch dimension first"):
        await batcher.submit(work_item(engine, rows_of(1.0, rows=3)))


# -- when batches close ---------------------------------------------------------------------------
async def test_batches_in_flight_bounds_concurrent_runs(engine, make_batcher):
    batcher, _ = make_batcher(engine, batches_in_flight=2)
    engine.pause()
    a = submit(batcher, engine, rows_of(1.0))
    await engine.wait_started(1)
    b = submit(batcher, engine, rows_of(2.0))
    await engine.wait_started(2)  # the second slot takes the next request at once (delay 0)
    c = submit(batcher, engine, rows_of(3.0))
    await turns()
    assert engine.running == 2 and batcher.batches_running == 2 and batcher.queue_depth == 1
    engine.resume()
    await asyncio.gather(a, b, c)
    assert engine.max_running == 2 and [x.rows for x in engine.calls] == [1, 1, 1]


async def test_oldest_request_waits_max_queue_delay_for_company(engine, make_batcher):
    batcher, _ = make_batcher(engine, max_queue_delay_ms=300.0)
    start = time.monotonic()
    a = submit(batcher, engine, rows_of(1.0))
    await asyncio.sleep(0.02)
    b = submit(batcher, engine, rows_of(2.0))
    await asyncio.gather(a, b)
    assert time.monotonic() - start >= 0.29
    assert [c.rows for c in engine.calls] == [2]


async def test_full_batch_closes_without_waiting_the_delay(engine, make_batcher):
    batcher, _ = make_batcher(engine, max_queue_delay_ms=60_000.0)
    xs = [rows_of(float(i), rows=2) for i in range(4)]
    results = await asyncio.wait_for(asyncio.gather(*(submit(batcher, engine, x) for x in xs)), 10)
    assert [c.rows for c in engine.calls] == [8]
    for x, out in zip(xs, results, strict=True):
        check_outputs(x, out)


async def test_preferred_batch_size_closes_at_once_and_close_flushes_the_rest(engine, make_batcher):
    batcher, _ = make_batcher(engine, max_queue_delay_ms=60_000.0, preferred_batch_sizes=(2,))
    tasks = [submit(batcher, engine, rows_of(float(i))) for i in range(3)]
    await engine.wait_finished(1)
    assert [c.rows for c in engine.calls] == [2]
    assert batcher.queue_depth == 1  # the third waits for company (the delay is a minute)
    await asyncio.wait_for(batcher.close(), 10)  # close runs it without waiting
    assert all(t.done() for t in tasks)
    assert [c.rows for c in engine.calls] == [2, 1]
    for i, t in enumerate(tasks):
        check_outputs(rows_of(float(i)), t.result())


async def test_close_answers_everything_accepted_then_refuses_new_requests(engine, make_batcher):
    batcher, _ = make_batcher(engine, max_queue_delay_ms=60_000.0, max_batch_size=8)
    tasks = [submit(batcher, engine, rows_of(float(i))) for i in range(3)]
    await turns()
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.wait_for(asyncio.shield(closing), 10)
    assert all(t.done() and not t.exception() for t in tasks)
    with pytest.raises(ServerDraining):
        await batcher.submit(work_item(engine, rows_of(1.0)))


async def test_adaptive_lone_request_on_an_idle_engine_does_not_wait_for_company(engine, make_batcher):
    batcher, _ = make_batcher(engine, adaptive=True, max_queue_delay_ms=60_000.0)
    for i in range(6):  # enough runs for the cost model to be ready
        start = time.monotonic()
        check_outputs(rows_of(float(i)), await asyncio.wait_for(batcher.submit(work_item(engine, rows_of(i))), 10))
        assert time.monotonic() - start < 5.0  # far below the 60 s delay Triton's rule would wait
    assert batcher.cost.ready


@pytest.mark.parametrize("adaptive", [True, False])
async def test_adaptive_holds_the_next_batch_while_the_engine_is_busy(make_batcher, adaptive):
    # Learn ~60 ms per run, then make the measured run faster than predicted, so the hold cannot expire
    # before the running batch finishes.
    engine = FakeEngine(max_batch_size=8, latency_s=0.06)
    batcher, _ = make_batcher(engine, adaptive=adaptive, batches_in_flight=2, max_queue_delay_ms=0.0)
    for i in range(4):
        await batcher.submit(work_item(engine, rows_of(float(i))))
    engine.latency_s = 0.02
    first = submit(batcher, engine, rows_of(10.0))
    await engine.wait_started(5)
    rest = [submit(batcher, engine, rows_of(11.0 + i)) for i in range(3)]
    await asyncio.gather(first, *rest)
    if adaptive:
        # The three waited for the running batch instead of taking the free slot with fewer rows.
        assert [c.rows for c in engine.calls[4:]] == [1, 3]
        assert engine.calls[5].started_ns >= engine.calls[4].finished_ns
    else:
        # Triton's rule with no delay uses the free slot at once, with what is there.
        assert engine.calls[5].started_ns < engine.calls[4].finished_ns
        assert engine.max_running == 2 and engine.calls[5].rows < 3


async def test_adaptive_gathers_company_when_arrivals_find_others_pending(engine, make_batcher):
    batcher, _ = make_batcher(engine, adaptive=True, max_queue_delay_ms=2_000.0)
    # Teach the batcher a busy arrival process: one request every ~20 ms, each finding others queued.
    engine.pause()
    warm = [submit(batcher, engine, rows_of(float(i))) for i in range(1)]
    for i in range(1, 10):
        await asyncio.sleep(0.02)
        warm.append(submit(batcher, engine, rows_of(float(i))))
    await turns()
    engine.resume()
    await asyncio.gather(*warm)
    assert batcher.arrivals.p_busy > 0.5
    runs = len(engine.calls)
    # Idle engine now; a request arrives, a second ~20 ms later: the first waits for it.
    a = submit(batcher, engine, rows_of(100.0))
    await asyncio.sleep(0.02)
    b = submit(batcher, engine, rows_of(101.0))
    await asyncio.gather(a, b)
    assert [c.rows for c in engine.calls[runs:]] == [2]


async def test_lone_request_cancelled_while_running_in_its_own_task_frees_its_slot(engine, make_batcher):
    batcher, _ = make_batcher(engine)
    problems: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: problems.append(context))
    engine.pause()
    lone = submit(batcher, engine, rows_of(1.0))
    await engine.wait_started(1)
    assert batcher.batches_running == 1
    lone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lone
    assert batcher.batches_running == 0
    engine.resume()
    check_outputs(rows_of(2.0), await batcher.submit(work_item(engine, rows_of(2.0))))
    gc.collect()
    await turns()
    assert problems == []  # no future left with an unretrieved exception


async def test_request_with_an_early_deadline_is_noticed_while_the_batch_waits_for_company(engine, make_batcher):
    batcher, _ = make_batcher(engine, max_queue_delay_ms=10_000.0)
    waiting = submit(batcher, engine, rows_of(1.0))  # waits up to 10 s for company (Triton's rule)
    await turns()
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(submit(batcher, engine, rows_of(2.0), deadline_ns=time.monotonic_ns() + 50_000_000), 5)
    assert time.monotonic() - start < 5  # answered at its deadline, not when the 10 s window closes
    assert engine.started == 0 and batcher.queue_depth == 1
    await batcher.close()
    check_outputs(rows_of(1.0), await waiting)


# -- inline runs ----------------------------------------------------------------------------------
class InlineEngine(FakeEngine):
    """A FakeEngine that also offers ``run_inline`` (as OnnxEngine does for cheap one-row runs)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.inline_runs = 0

    def run_inline(self, inputs, output_names):
        self.inline_runs += 1
        return double_and_row_sum(inputs, output_names)


async def test_lone_request_runs_inline_while_the_loop_is_idle(make_batcher):
    engine = InlineEngine(max_batch_size=8)
    batcher, _ = make_batcher(engine)
    x = rows_of(2.0)
    out = await batcher.submit(work_item(engine, x))
    check_outputs(x, out)
    assert engine.inline_runs == 1 and engine.calls == []  # never went to the engine's pool


async def test_no_inline_run_when_the_loop_is_busy(make_batcher):
    engine = InlineEngine(max_batch_size=8)
    batcher, _ = make_batcher(engine)
    batcher.loop_busy = 0.9  # as sampled under concurrent load
    batcher._load_wall_ns = time.monotonic_ns()  # a fresh sample: not re-read during this test
    x = rows_of(3.0)
    out = await batcher.submit(work_item(engine, x))
    check_outputs(x, out)
    assert engine.inline_runs == 0 and len(engine.calls) == 1


async def test_a_batch_of_several_requests_never_runs_inline(make_batcher):
    engine = InlineEngine(max_batch_size=8)
    batcher, _ = make_batcher(engine)
    batcher.loop_busy = 0.9  # so that the first, lone request goes to the (paused) engine
    batcher._load_wall_ns = time.monotonic_ns()
    first = await hold_engine(batcher, engine)
    batcher.loop_busy = 0.0  # idle again: still, the three queued behind it form a batch, not inline runs
    queued = [submit(batcher, engine, rows_of(float(i))) for i in range(3)]
    await turns()
    engine.resume()
    await asyncio.gather(first, *queued)
    assert engine.inline_runs == 0
    assert [c.rows for c in engine.calls] == [1, 3]


# -- shape buckets and big merges -----------------------------------------------------------------
class Buckets:
    """An engine's ``padded_rows``: the next of ``sizes`` (like OnnxEngine.use_batch_buckets)."""

    def __init__(self, sizes):
        self.sizes = sizes

    def __call__(self, rows: int) -> int:
        return next((s for s in self.sizes if s >= rows), rows)


async def test_a_batch_is_padded_to_the_engines_next_bucket_and_cut_back(engine, make_batcher):
    """The engine sees 8 rows for a batch of 7 (the last one zeros); callers and the monitor see only
    their own rows."""
    engine.padded_rows = Buckets((1, 2, 4, 8))
    batcher, stats = make_batcher(engine)
    seen = []

    class Monitor:
        def observe(self, inputs, outputs, rows):
            seen.append(({n: a.shape for n, a in inputs.items()}, {n: a.shape for n, a in outputs.items()}, rows))

        def rejected(self, *args):
            pass

    batcher.observer = Monitor()
    first = await hold_engine(batcher, engine)
    xs = [rows_of(10.0 * i, rows=r) for i, r in enumerate([1, 3, 2, 1], start=1)]
    tasks = [submit(batcher, engine, x) for x in xs]
    await turns()
    engine.resume()
    results = await asyncio.gather(first, *tasks)
    assert [c.rows for c in engine.calls] == [1, 8]
    ran = engine.calls[1].inputs["INPUT0"]
    np.testing.assert_array_equal(ran[:7], np.concatenate(xs))
    np.testing.assert_array_equal(ran[7:], np.zeros((1, 4), np.float32))
    for x, out in zip(xs, results[1:], strict=True):
        check_outputs(x, out)
    await turns()
    assert seen[1] == ({"INPUT0": (7, 4)}, {"OUTPUT0": (7, 4), "OUTPUT1": (7,)}, [1, 3, 2, 1])
    assert sorted(stats.batches) == [1, 7]  # statistics count real rows


async def test_a_lone_request_is_padded_too_and_a_full_bucket_is_not(engine, make_batcher):
    engine.padded_rows = Buckets((1, 4, 8))
    batcher, _ = make_batcher(engine)
    x = rows_of(5.0, rows=3)
    check_outputs(x, await batcher.submit(work_item(engine, x)))
    y = rows_of(6.0, rows=4)
    check_outputs(y, await batcher.submit(work_item(engine, y)))
    assert [c.rows for c in engine.calls] == [4, 4]
    assert engine.calls[1].inputs["INPUT0"] is not None and engine.calls[1].inputs["INPUT0"].shape == (4, 4)


class LinearCost:
    """A cost model fixed at ``fixed_ms`` + ``per_row_ms`` per row (the batcher's learns one such line)."""

    runs = 10

    def __init__(self, fixed_ms: float, per_row_ms: float) -> None:
        self.fixed_ns, self.per_row_ns = fixed_ms * 1e6, per_row_ms * 1e6

    def predict_ns(self, rows: float) -> float:
        return self.fixed_ns + self.per_row_ns * rows

    def observe(self, rows: int, ns: float) -> None:
        pass


async def _cut_runs(engine, make_batcher, cost: LinearCost, rows=(1, 3, 2, 1), **item) -> list[int]:
    """The rows of each run when requests of ``rows`` queue behind a held run, the engine padding to
    buckets 1, 2, 4, 8 and one batch in flight (each launch takes the last free slot)."""
    engine.padded_rows = Buckets((1, 2, 4, 8))
    engine.batch_buckets = (1, 2, 4, 8)
    batcher, _ = make_batcher(engine)
    batcher.cost = cost
    first = await hold_engine(batcher, engine)
    xs = [rows_of(10.0 * i, rows=r) for i, r in enumerate(rows, start=1)]
    tasks = [submit(batcher, engine, x, **item) for x in xs]
    await turns()
    engine.resume()
    results = await asyncio.gather(first, *tasks)
    for x, out in zip(xs, results[1:], strict=True):
        check_outputs(x, out)
    return [c.rows for c in engine.calls]


async def test_where_rows_cost_most_a_batch_is_cut_to_a_bucket_instead_of_padded(engine, make_batcher):
    """Per row 1 ms, per run 0.1 ms (a GPU's big model): 7 queued rows run as 4 + 2 + 1, no padding,
    rather than as 8 (7 and a row of zeros)."""
    assert await _cut_runs(engine, make_batcher, LinearCost(0.1, 1.0)) == [1, 4, 2, 1]


async def test_where_runs_cost_most_a_batch_is_padded_whole(engine, make_batcher):
    assert await _cut_runs(engine, make_batcher, LinearCost(5.0, 0.1)) == [1, 8]


async def test_a_batch_is_not_cut_when_a_deadline_could_not_wait(engine, make_batcher):
    soon = time.monotonic_ns() + 5_000_000_000  # 5 s: more than two runs of up to 8 rows at 1 s a row
    assert await _cut_runs(engine, make_batcher, LinearCost(0.1, 1000.0), deadline_ns=soon) == [1, 8]


async def test_batches_are_not_cut_without_buckets_or_with_another_slot_free(engine, make_batcher):
    engine.padded_rows = Buckets((1, 2, 4, 8))  # padding, but no bucket list: as before
    batcher, _ = make_batcher(engine)
    batcher.cost = LinearCost(0.1, 1.0)
    first = await hold_engine(batcher, engine)
    tasks = [submit(batcher, engine, rows_of(float(i), rows=r)) for i, r in enumerate((1, 3, 2, 1))]
    await turns()
    engine.resume()
    await asyncio.gather(first, *tasks)
    assert [c.rows for c in engine.calls] == [1, 8]
    engine.batch_buckets = (1, 2, 4, 8)
    engine.calls.clear()
    two, _ = make_batcher(engine, batches_in_flight=2)
    two.cost = LinearCost(0.1, 1.0)
    assert two._aligned(time.monotonic_ns(), 8) == 8  # two slots free: nothing queued waits for a slot


@pytest.mark.parametrize("kept_merge_mb", [512.0, 0.0])
async def test_a_big_merge_is_copied_off_the_event_loop(make_batcher, monkeypatch, kept_merge_mb):
    """Rows of 1 MiB: merging two requests copies on a worker thread, into a kept buffer unless
    ``kept_merge_mb`` leaves no room; the result is the same."""
    import threading

    from sidecar.batching import dynamic

    width = 1 << 18  # FP32: 1 MiB a row
    engine = FakeEngine(
        max_batch_size=4,
        inputs=(TensorSpec("INPUT0", "FP32", (-1, width)),),
        outputs=(TensorSpec("OUTPUT0", "FP32", (-1, width)), TensorSpec("OUTPUT1", "FP32", (-1,))),
    )
    threads = []
    real = dynamic.concatenate_into

    def spy(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(dynamic, "concatenate_into", spy)
    batcher, _ = make_batcher(engine, kept_merge_mb=kept_merge_mb)
    first = await hold_engine_wide(batcher, engine, width)
    xs = [rows_of(float(i), rows=1, width=width) for i in range(2)]
    tasks = [submit(batcher, engine, x) for x in xs]
    await turns()
    engine.resume()
    results = await asyncio.gather(first, *tasks)
    for x, out in zip(xs, results[1:], strict=True):
        check_outputs(x, out)
    assert [c.rows for c in engine.calls] == [1, 2]
    assert threads and all(t is not threading.main_thread() for t in threads)
    assert 2 * width * 4 >= dynamic.MERGE_OFF_LOOP_BYTES
    assert batcher._buffers.kept_bytes == (2 * width * 4 if kept_merge_mb else 0)  # two rows' buffer, or none


async def hold_engine_wide(batcher, engine, width):
    engine.pause()
    first = submit(batcher, engine, rows_of(-1.0, width=width))
    await engine.wait_started(1)
    return first
