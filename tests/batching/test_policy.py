"""The pieces under the batcher, without an event loop: cost model, close policy, queue, settings."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from sidecar.batching.cost_model import CostModel
from sidecar.batching.policy import DEADLINE_MARGIN_NS, DEADLINE_SAFETY, ClosePolicy
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


def decide(policy: ClosePolicy, now: int = 1_000 * MS, **kw) -> int:
    args = {
        "requests": 1,
        "rows": 1,
        "head_arrival_ns": now,
        "earliest_deadline_ns": None,
        "running": 0,
        "earliest_finish_ns": None,
        "last_arrival_ns": now,
        "gap_ns": 1e9,
        "rows_per_request": 1.0,
        "merge_ns": 0.0,
    }
    args.update(kw)
    return policy.close_at_ns(now, **args)


def test_triton_rule_waits_max_queue_delay_from_the_oldest_request():
    policy = ClosePolicy(64, 5 * MS, adaptive=False, cost=trained(MS, 0))
    now = 1_000 * MS
    assert decide(policy, now, head_arrival_ns=now - 2 * MS) == now + 3 * MS
    assert decide(policy, now, head_arrival_ns=now - 2 * MS, running=1, earliest_finish_ns=now + 50 * MS) == (
        now + 3 * MS
    )


def test_adaptive_idle_engine_closes_at_once_when_no_company_is_expected_soon():
    policy = ClosePolicy(64, 5 * MS, adaptive=True, cost=trained(fixed_ns=100_000, per_row_ns=1_000))
    now = 1_000 * MS
    assert decide(policy, now, gap_ns=300_000) == now  # arrivals every 0.3 ms > 0.1 ms fixed cost
    assert decide(ClosePolicy(64, 5 * MS, True, CostModel()), now, gap_ns=1.0) == 1_000 * MS  # not learned yet


def test_adaptive_idle_engine_waits_for_company_that_pays_for_the_wait_within_the_delay():
    policy = ClosePolicy(64, 5 * MS, adaptive=True, cost=trained(fixed_ns=4 * MS, per_row_ns=10_000))
    now = 1_000 * MS
    # one request queued, arrivals every 0.5 ms, a run costs 4 ms fixed: wait for the next arrival
    assert decide(policy, now, gap_ns=0.5 * MS, last_arrival_ns=now) == now + 1 * MS
    # ... but never past max_queue_delay from the oldest
    assert decide(policy, now, gap_ns=0.5 * MS, head_arrival_ns=now - 4_500_000) == now + 500_000
    # ... and no more once the queued requests together would wait longer than a run's fixed cost
    assert decide(policy, now, requests=9, rows=9, gap_ns=0.5 * MS) == now


def test_adaptive_busy_engine_holds_until_the_running_batch_is_predicted_to_finish():
    policy = ClosePolicy(64, 1 * MS, adaptive=True, cost=trained(fixed_ns=MS, per_row_ns=100_000))
    now = 1_000 * MS
    at = decide(policy, now, running=1, earliest_finish_ns=now + 20 * MS, merge_ns=200_000)
    assert at == now + 20 * MS - 200_000  # past the 1 ms delay: the device is busy anyway
    # overdue running batch: take the free slot now
    assert decide(policy, now, running=1, earliest_finish_ns=now - MS) <= now
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
        gap_ns=0.5 * MS,
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


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be at least 1"),
        ({"max_queue_delay_ms": -1.0}, "max_queue_delay_ms must not be negative"),
        ({"max_queue_size": 0}, "max_queue_size must be at least 1"),
        ({"batches_in_flight": 0}, "batches_in_flight must be at least 1"),
        (
            {"max_batch_size": 8, "preferred_batch_sizes": [4, 16]},
            r"preferred_batch_sizes .*=8\], not \[16\]",
        ),
    ],
)
def test_batch_settings_out_of_range_are_load_errors(overrides, message):
    with pytest.raises(ModelLoadError, match=message):
        BatchSettings.resolve(BatchingConfig(), overrides)
