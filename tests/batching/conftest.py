"""Fixtures for the batcher's unit tests: a fake engine and a batcher over it."""

from __future__ import annotations

import pytest

from sidecar.batching.dynamic import DynamicBatcher
from sidecar.engine.statistics import VersionStatistics
from sidecar.testing.fake_engine import FakeEngine, batch_settings


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(max_batch_size=8)


@pytest.fixture
def make_batcher():
    """make_batcher(engine, **settings) -> (batcher, statistics); every batcher is closed at the end."""
    made: list[DynamicBatcher] = []

    def make(engine: FakeEngine, **overrides) -> tuple[DynamicBatcher, VersionStatistics]:
        stats = VersionStatistics()
        batcher = DynamicBatcher(engine, batch_settings(**overrides), stats, "m", "1.0.0")
        made.append(batcher)
        return batcher, stats

    yield make
    for b in made:
        assert b.queue_depth == 0 and b.batches_running == 0, "a test left work in the batcher"
