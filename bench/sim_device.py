"""A simulated GPU-like device and open-loop Poisson arrivals, for in-process batcher benchmarks.

``device_engine(fixed_ms, per_row_ms)`` is a ``FakeEngine`` whose runs block one device thread for
``fixed_ms + per_row_ms * rows`` (rows as run: a padded batch costs its padding too), so runs
serialise like kernels on one stream. ``poisson_arrivals(rate, duration_s, seed, one)`` starts
``one(scheduled_ns)`` at Poisson times for ``duration_s`` and waits for all of them. Used by
``bench_batcher`` (the close policy) and ``bench_bucket_cut`` (padding to shape buckets).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


def device_engine(fixed_ms: float, per_row_ms: float, max_batch_size: int = 64) -> tuple[Any, ThreadPoolExecutor]:
    """(engine, its device thread): shut the thread down when done."""
    from sidecar.testing.fake_engine import FakeEngine
    from sidecar.types import TensorSpec

    device = ThreadPoolExecutor(1, thread_name_prefix="device")
    engine = FakeEngine(
        inputs=(TensorSpec("input", "FP32", (-1, 8)),),
        outputs=(TensorSpec("output", "FP32", (-1, 8)),),
        max_batch_size=max_batch_size,
        latency_s=lambda rows: (fixed_ms + per_row_ms * rows) / 1e3,
        compute=lambda feed, names: {"output": feed["input"]},
        executor=device,
    )
    return engine, device


async def poisson_arrivals(rate: float, duration_s: float, seed: int, one: Callable[[int], Awaitable[None]]) -> int:
    """Start ``one(scheduled_ns)`` for each arrival of a Poisson process at ``rate`` a second during
    ``duration_s``, then wait for all of them; returns how many there were."""
    rng = np.random.default_rng(seed)
    tasks = []
    start = time.monotonic_ns()
    next_ns = float(start)
    end = start + int(duration_s * 1e9)
    while next_ns < end:
        now = time.monotonic_ns()
        while next_ns <= now:  # everything due by now (sleep granularity is ~1 ms)
            tasks.append(asyncio.ensure_future(one(int(next_ns))))
            next_ns += rng.exponential(1e9 / rate)
        await asyncio.sleep(max(0.0, (next_ns - time.monotonic_ns()) / 1e9))
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    return len(tasks)
