"""The pieces under the batcher, without an event loop: cost model, close policy, queue, settings."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import numpy as np
import pytest

from sidecar.batching.cost_model import CostModel
from sidecar.batching.policy import (
    BUSY_TURN_NS,
    DEADLINE_MARGIN_NS,
    DEADLINE_SAFETY,
    LEAD_SHARE,
    LOOP_BUSY,
    NEXT_TURN,
    OVERDUE_GRACE_NS,
    ArrivalStats,
    ClosePolicy,
)
from sidecar.batching.queue import GONE, QUEUED, TAKEN, Entry, RequestQueue, priority_level
from sidecar.batching.scheduler import BatchSettings
from sidecar.config import BatchingConfig
from sidecar.errors import ModelLoadError
from sidecar.testing.fake_engine import FakeEngine, work_item

MS = 1_000_000


# -- cost model -------------------------------------------------------------------------------------
def test_cost_model_recovers_fixed_and_per_row_cost():
    cm = CostModel()
    for rows in [1, 2, 4, 8, 16, 32, 64] * 3:
        cm.observe(rows, 50_000 + 2_000 * rows)
    assert cm.ready
    assert cm.fixed_ns == pytest.approx(50_000, rel=1e-6)
    assert cm.per_row_ns == pytest.approx(2_000, rel=1e-6)
    assert cm.predict_ns(10) == pytest.approx(70_000, rel=1e-6)


def test_cost_model_follows_an_engine_that_slows_down():
    cm = CostModel(half_life_runs=20)
    for rows in [1, 8, 16, 32] * 10:
        cm.observe(rows, 10_000 + 1_000 * rows)
    for rows in [1, 8, 16, 32] * 40:
        cm.observe(rows, 40_000 + 3_000 * rows)
    assert cm.predict_ns(16) == pytest.approx(40_000 + 3_000 * 16, rel=0.02)


def test_cost_model_with_one_size_seen_predicts_proportionally_and_never_below_the_mean():
    cm = CostModel()
    for _ in range(5):
        cm.observe(4, 100_000)
    assert cm.predict_ns(4) == pytest.approx(100_000)
    assert cm.predict_ns(8) == pytest.approx(200_000)  # conservative for bigger batches
    assert cm.predict_ns(1) == pytest.approx(100_000)


def test_cost_model_clamps_noise_to_a_flat_or_origin_fit_and_ignores_garbage():
    flat = CostModel()
    for rows, ns in [(1, 100), (2, 90), (4, 80), (8, 70)]:
        flat.observe(rows, ns)
    assert flat.per_row_ns == 0.0 and flat.fixed_ns == pytest.approx(85.0, rel=1e-3)
    origin = CostModel()
    for rows, ns in [(1, 0), (2, 0), (3, 50), (4, 100)]:
        origin.observe(rows, ns)
    assert origin.fixed_ns == 0.0 and origin.per_row_ns > 0
    runs = origin.runs
    origin.observe(0, 100)
    origin.observe(4, float("nan"))
    assert origin.runs == runs
    assert CostModel().predict_ns(8) == 0.0 and not CostModel().ready


# -- close policy ---------------------------------------------------------------------------------
def trained(fixed_ns: float, per_row_ns: float) -> CostModel:
    cm = CostModel()
    for rows in (1, 2, 4, 8, 16):
        cm.observe(rows, fixed_ns + per_row_ns * rows)
    return cm


def arrivals(gap_ns: float = 1e9, p_busy: float = 0.0, last_ns: int = 1_000 * MS) -> ArrivalStats:
    stats = ArrivalStats()
    stats.gap_ns, stats.p_busy, stats.last_ns = gap_ns, p_busy, last_ns
    return stats


def decide(policy: ClosePolicy, now: int = 1_000 * MS, **kw) -> int:
    args = {
        "requests": 1,
        "rows": 1,
        "head_arrival_ns": now,
        "earliest_deadline_ns": None,
        "running": 0,
        "merge_ns": 0.0,
        "arrivals": arrivals(last_ns=now),
    }
    finish = kw.pop("earliest_finish_ns", None)
    duration = kw.pop("running_ns", 0)
    args["earliest_finish"] = None if finish is None else (finish, duration)
    args.update(kw)
    return policy.close_at_ns(now, **args)


def test_arrival_stats_learn_the_gap_and_the_share_of_arrivals_that_found_company():
    stats = ArrivalStats()
    t = 0
    for i in range(200):
        t += 500_000
        stats.observe(t, 1, busy=i % 4 != 0)
    assert stats.gap_ns == pytest.approx(500_000, rel=0.01)
    assert stats.p_busy == pytest.approx(0.75, abs=0.15)
    assert stats.busy_gap_ns() == pytest.approx(stats.gap_ns / stats.p_busy)
    lone = ArrivalStats()
    for i in range(50):
        lone.observe(i * 300_000, 1, busy=False)
    assert lone.busy_gap_ns() == float("inf")


def test_triton_rule_waits_max_queue_delay_from_the_oldest_request():
    policy = ClosePolicy(64, 5 * MS, adaptive=False, cost=trained(MS, 0))
    now = 1_000 * MS
    assert decide(policy, now, head_arrival_ns=now - 2 * MS) == now + 3 * MS
    assert decide(policy, now, head_arrival_ns=now - 2 * MS, running=1, earliest_finish_ns=now + 50 * MS) == (
        now + 3 * MS
    )
    assert decide(policy, now, fresh_arrivals=3, arrivals=arrivals(100_000, 1.0)) == now + 5 * MS


def test_adaptive_idle_engine_closes_at_once_for_a_lone_client():
    policy = ClosePolicy(64, 5 * MS, adaptive=True, cost=trained(fixed_ns=100_000, per_row_ns=1_000))
    now = 1_000 * MS
    lone = arrivals(gap_ns=300_000, p_busy=0.0)  # requests arrive only when nothing is pending
    assert decide(policy, now, arrivals=lone) == now
    assert decide(policy, now, arrivals=lone, fresh_arrivals=1, turn_ns=500_000) == now
    # rare company (5% of arrivals, every 2 ms): not worth the 5 ms window
    assert decide(policy, now, arrivals=arrivals(gap_ns=2 * MS, p_busy=0.05)) == now


def test_adaptive_idle_engine_gathers_company_under_load_within_the_delay():
    policy = ClosePolicy(64, 5 * MS, adaptive=True, cost=trained(fixed_ns=100_000, per_row_ns=1_000))
    now = 1_000 * MS
    load = arrivals(gap_ns=300_000, p_busy=1.0, last_ns=now - 100_000)
    # wait for the next arrival: about two gaps after the last one at most
    assert decide(policy, now, arrivals=load) == now - 100_000 + 600_000
    assert decide(policy, now, arrivals=load, fresh_arrivals=3) == now + 500_000
    # two gaps without an arrival: close, unless requests just arrived or the loop is busy (one more turn)
    quiet = arrivals(gap_ns=300_000, p_busy=1.0, last_ns=now - 700_000)
    assert decide(policy, now, arrivals=quiet) <= now
    assert decide(policy, now, arrivals=quiet, fresh_arrivals=2) == NEXT_TURN
    assert decide(policy, now, arrivals=quiet, turn_ns=BUSY_TURN_NS) == NEXT_TURN
    # never past max_queue_delay from the oldest, never against a deadline
    assert decide(policy, now, arrivals=load, fresh_arrivals=3, head_arrival_ns=now - 5 * MS) == now
    assert decide(policy, now, arrivals=quiet, fresh_arrivals=3, earliest_deadline_ns=now + MS) <= now
    # a batch that already amortises the engine's fixed cost closes
    assert decide(policy, now, arrivals=load, requests=60, rows=60) == now + 500_000
    heavy_rows = ClosePolicy(4096, 5 * MS, adaptive=True, cost=trained(fixed_ns=10_000, per_row_ns=1_000))
    assert decide(heavy_rows, now, arrivals=load, requests=300, rows=300) == now


def test_adaptive_cpu_bound_concurrent_traffic_gathers_for_the_whole_delay():
    policy = ClosePolicy(64, 5 * MS, adaptive=True, cost=trained(fixed_ns=100_000, per_row_ns=1_000))
    now = 1_000 * MS
    quiet = arrivals(gap_ns=300_000, p_busy=1.0, last_ns=now - 700_000)
    busy_cpu = LOOP_BUSY
    # a pause in arrivals no longer closes early, nor does a running batch about to finish
    assert decide(policy, now, arrivals=quiet, loop_busy=busy_cpu, head_arrival_ns=now - MS) == now + 4 * MS
    at = decide(policy, now, arrivals=quiet, loop_busy=busy_cpu, running=1, earliest_finish_ns=now + 50_000)
    assert at == now + 5 * MS
    # a lone client still never waits, and deadlines still cap the wait
    lone = arrivals(gap_ns=300_000, p_busy=0.0)
    assert decide(policy, now, arrivals=lone, loop_busy=1.0) == now
    assert decide(policy, now, arrivals=quiet, loop_busy=1.0, earliest_deadline_ns=now + 2 * MS) < now + MS


def test_adaptive_busy_engine_holds_until_the_running_batch_is_predicted_to_finish():
    policy = ClosePolicy(64, 1 * MS, adaptive=True, cost=trained(fixed_ns=MS, per_row_ns=100_000))
    now = 1_000 * MS
    at = decide(policy, now, running=1, earliest_finish_ns=now + 20 * MS, merge_ns=200_000)
    assert at == now + 20 * MS - 200_000  # past the 1 ms delay: the device is busy anyway
    # the next batch is queued on the device a share of the running batch's duration before it ends
    at = decide(policy, now, running=1, earliest_finish_ns=now + 20 * MS, running_ns=10 * MS, merge_ns=200_000)
    assert at == now + 20 * MS - 200_000 - int(LEAD_SHARE * 10 * MS)
    # a running batch past its predicted finish still holds the next for a grace period ...
    assert decide(policy, now, running=1, earliest_finish_ns=now - MS) == now - MS + OVERDUE_GRACE_NS
    # ... after which the free slot is used
    assert decide(policy, now, running=1, earliest_finish_ns=now - OVERDUE_GRACE_NS - MS) <= now
    # not learned yet: Triton's rule
    assert decide(ClosePolicy(64, 1 * MS, True, CostModel()), now, running=1, earliest_finish_ns=now + 20 * MS) == (
        now + 1 * MS
    )


def test_adaptive_hold_ends_early_enough_for_the_earliest_deadline():
    cost = trained(fixed_ns=MS, per_row_ns=100_000)
    policy = ClosePolicy(64, 1 * MS, adaptive=True, cost=cost)
    now = 1_000 * MS
    deadline = now + 12 * MS
    at = decide(
        policy,
        now,
        running=1,
        earliest_finish_ns=now + 20 * MS,
        earliest_deadline_ns=deadline,
        arrivals=arrivals(gap_ns=0.5 * MS, p_busy=1.0),
    )
    # the hold (20 ms) would bring ~40 more rows; the batch must still finish before the deadline
    expected_rows = 1 + (20 * MS) / (0.5 * MS)
    assert at == deadline - int(cost.predict_ns(expected_rows) * DEADLINE_SAFETY) - DEADLINE_MARGIN_NS
    assert now < at < now + 20 * MS
    # a deadline already too close: close now
    assert decide(policy, now, running=1, earliest_finish_ns=now + 20 * MS, earliest_deadline_ns=now + MS) <= now


# -- queue ----------------------------------------------------------------------------------------
def entries(engine: FakeEngine, specs, loop) -> list[Entry]:
    out = []
    for value, rows, width, deadline in specs:
        x = np.full((rows, width), value, np.float32)
        out.append(Entry(work_item(engine, x, deadline_ns=deadline), loop.create_future(), (width,)))
    return out


def test_priority_levels_map_default_to_the_most_urgent():
    assert priority_level(0) == priority_level(1) == 1
    assert priority_level(7) == 7


def test_queue_take_groups_by_key_respects_the_row_limit_and_reports_expired():
    loop = asyncio.new_event_loop()
    try:
        engine = FakeEngine(max_batch_size=8)
        now = time.monotonic_ns()
        a, b, c, d, e = entries(
            engine,
            [(1, 1, 4, None), (2, 2, 4, now - 1), (3, 3, 4, None), (4, 1, 4, now + 10**9), (5, 1, 4, None)],
            loop,
        )
        d.key = ("other",)
        q = RequestQueue()
        for x, level in ((a, 2), (b, 1), (c, 1), (d, 1), (e, 2)):
            q.push(x, level)
        assert (q.count, q.rows) == (5, 8) and q.earliest_deadline() == now - 1
        expired: list[Entry] = []
        batch, rows = q.take(now, 4, expired)
        assert batch == [c, a] and rows == 4  # level 1 first (b expired, d other group), then level 2
        assert expired == [b] and b.state == GONE and c.state == TAKEN and d.state == QUEUED
        assert q.head() is d and (q.count, q.rows) == (2, 2)
        assert q.earliest_deadline() == now + 10**9
        assert q.discard(d) and not q.discard(d) and q.count == 1
        assert q.head() is e and e.state == QUEUED
    finally:
        loop.close()


def test_queue_expire_removes_only_past_deadlines_and_preferred_target_finds_exact_sums():
    loop = asyncio.new_event_loop()
    try:
        engine = FakeEngine(max_batch_size=8)
        now = time.monotonic_ns()
        a, b, c = entries(engine, [(1, 1, 4, now - 5), (2, 3, 4, now + 10**9), (3, 2, 4, None)], loop)
        q = RequestQueue()
        for x in (a, b, c):
            q.push(x, 1)
        assert q.due(now)
        assert q.expire(now) == [a] and q.count == 2 and not q.due(now)
        assert q.preferred_target(frozenset({3, 5}), 8) == 5
        assert q.preferred_target(frozenset({4}), 8) == 0
        assert q.preferred_target(frozenset({5}), 4) == 0  # beyond max rows
    finally:
        loop.close()


# -- settings ------------------------------------------------------------------------------------
def test_batch_settings_overlay_metadata_on_server_defaults():
    s = BatchSettings.resolve(BatchingConfig(), {"max_batch_size": 16, "preferred_batch_sizes": [4, 8]})
    assert s.max_batch_size == 16 and s.preferred_batch_sizes == (4, 8)
    assert s.max_queue_delay_ms == BatchingConfig().max_queue_delay_ms and s.adaptive is True
    assert s.kept_merge_mb == 512.0
    assert BatchSettings.resolve(BatchingConfig(), {"kept_merge_mb": 0}).kept_merge_mb == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be at least 1"),
        ({"max_queue_delay_ms": -1.0}, "max_queue_delay_ms must not be negative"),
        ({"max_queue_size": 0}, "max_queue_size must be at least 1"),
        ({"batches_in_flight": 0}, "batches_in_flight must be at least 1"),
        ({"kept_merge_mb": -1.0}, "kept_merge_mb must not be negative"),
        (
            {"max_batch_size": 8, "preferred_batch_sizes": [4, 16]},
            r"preferred_batch_sizes .*=8\], not \[16\]",
        ),
    ],
)
def test_batch_settings_out_of_range_are_load_errors(overrides, message):
    with pytest.raises(ModelLoadError, match=message):
        BatchSettings.resolve(BatchingConfig(), overrides)


def test_queue_memory_stays_bounded_when_callers_cancel_while_the_engine_is_stuck():
    loop = asyncio.new_event_loop()
    try:
        engine = FakeEngine(max_batch_size=8)
        q = RequestQueue()
        keep = Entry(work_item(engine, np.zeros((1, 4), np.float32)), loop.create_future(), None)
        q.push(keep, 1)
        refs = []
        for i in range(500):
            x = np.full((1, 4), i, np.float32)
            refs.append(weakref.ref(x))
            e = Entry(work_item(engine, x), loop.create_future(), None)
            q.push(e, 1 + i % 3)
            assert q.discard(e)
            del x, e
        gc.collect()
        alive = sum(r() is not None for r in refs)
        assert alive <= 64  # discarded requests' tensors are released, not kept until the engine frees up
        assert q.count == 1 and q.head() is keep
        batch, rows = q.take(time.monotonic_ns(), 8, [])
        assert batch == [keep] and rows == 1 and q.count == 0
    finally:
        loop.close()
