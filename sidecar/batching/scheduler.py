"""The scheduler interface between a model version and its engine, and the unbatched scheduler.

A scheduler receives validated work items and resolves each one exactly once: with the outputs the
request asked for, or with an error from ``sidecar.errors``. Statistics (queue and compute time,
executions by batch size) are recorded by the scheduler, which is the one that knows them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sidecar.config import BatchingConfig
from sidecar.engine.base import Engine
from sidecar.engine.statistics import VersionStatistics
from sidecar.errors import DeadlineExceeded, ModelLoadError, ServerDraining
from sidecar.telemetry.spans import INVALID_SPAN, batch_span, record_queue_time
from sidecar.types import InferenceRequest, aligned_inputs


@dataclass(frozen=True, slots=True)
class WorkItem:
    """A request checked against the version's signature. ``rows`` is its batch size (1 if unbatched)."""

    request: InferenceRequest
    rows: int
    output_names: tuple[str, ...]
    arrival_ns: int
    span: Any = INVALID_SPAN  # the request's span (sidecar.telemetry.spans.current_span()), for batch links
    started: Any = None  # the forwarded call already on its way (DirectScheduler.begin), if any


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """A version's batching settings: server defaults overlaid with the version's metadata."""

    enabled: bool
    max_batch_size: int
    max_queue_delay_ms: float
    preferred_batch_sizes: tuple[int, ...]
    max_queue_size: int
    batches_in_flight: int
    adaptive: bool
    kept_merge_mb: float

    @classmethod
    def resolve(cls, defaults: BatchingConfig, overrides: Mapping[str, object]) -> BatchSettings:
        values = {
            "enabled": defaults.enabled,
            "max_batch_size": defaults.max_batch_size,
            "max_queue_delay_ms": defaults.max_queue_delay_ms,
            "preferred_batch_sizes": tuple(defaults.preferred_batch_sizes),
            "max_queue_size": defaults.max_queue_size,
            "batches_in_flight": defaults.batches_in_flight,
            "adaptive": defaults.adaptive,
            "kept_merge_mb": defaults.kept_merge_mb,
        }
        for key, value in overrides.items():
            values[key] = tuple(value) if key == "preferred_batch_sizes" else value  # type: ignore[arg-type]
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        """Raise ModelLoadError naming every setting out of range (checked when a version loads)."""
        problems = []
        if self.max_batch_size < 1:
            problems.append(f"max_batch_size must be at least 1, not {self.max_batch_size}")
        if self.max_queue_delay_ms < 0:
            problems.append(f"max_queue_delay_ms must not be negative, not {self.max_queue_delay_ms}")
        if self.max_queue_size < 1:
            problems.append(f"max_queue_size must be at least 1 (queues are always bounded), not {self.max_queue_size}")
        if self.batches_in_flight < 1:
            problems.append(f"batches_in_flight must be at least 1, not {self.batches_in_flight}")
        if self.kept_merge_mb < 0:
            problems.append(f"kept_merge_mb must not be negative, not {self.kept_merge_mb}")
        bad = [s for s in self.preferred_batch_sizes if not isinstance(s, int) or not 1 <= s <= self.max_batch_size]
        if bad:
            problems.append(f"preferred_batch_sizes must lie in [1, max_batch_size={self.max_batch_size}], not {bad}")
        if problems:
            raise ModelLoadError("batching: " + "; ".join(problems))


class InferenceObserver(Protocol):
    """Sees every engine run a version answers, and every request it rejects for its inputs (the
    monitoring stage). Both calls are made on the event loop and must never raise."""

    def observe(
        self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], request_rows: Sequence[int]
    ) -> None:
        """One run: its (merged) inputs and outputs, and the rows of each request in it, in order. An
        unbatched run's inputs are the request's own, possibly decoded only when first read and then
        unaligned views of its bytes (``LazyTensors``: ``aligned()`` where an array is used alone)."""
        ...

    def rejected(self) -> None: ...


async def run_engine(
    engine: Engine,
    run_inline: Callable[..., dict[str, np.ndarray] | None] | None,
    inputs: Mapping[str, np.ndarray],
    output_names: Sequence[str],
) -> dict[str, np.ndarray]:
    """One engine run: on the caller's thread if ``run_inline`` (the engine's) takes it, else ``engine.run``."""
    if run_inline is not None:
        outputs = run_inline(inputs, output_names)
        if outputs is not None:
            return outputs
    return await engine.run(inputs, output_names)


class Scheduler(Protocol):
    queue_depth: int
    observer: InferenceObserver | None  # told of every run (set when the version loads)
    # Starts a request's engine work before it is checked, returning the handle for WorkItem.started
    # (or None); None where the scheduler never does (DirectScheduler.begin).
    begin: Callable[[InferenceRequest], Any] | None

    async def submit(self, item: WorkItem) -> dict[str, np.ndarray]: ...

    async def close(self) -> None:
        """Stop accepting; resolve everything already accepted; return when idle."""
        ...


class DirectScheduler:
    """No batching: each request runs the engine on its own, as soon as it arrives."""

    def __init__(self, engine: Engine, stats: VersionStatistics, model: str = "", version: str = "") -> None:
        self._engine = engine
        self._stats = stats
        self._model = model
        self._version = version
        self._closed = False
        self.queue_depth = 0
        self.observer: InferenceObserver | None = None
        self._run_inline = getattr(engine, "run_inline", None)  # small one-row runs on the loop (OnnxEngine)
        self._forward = getattr(engine, "forward", None)  # requests passed through as encoded (UpstreamEngine)
        self._start_forward = getattr(engine, "start_forward", None)
        self._finish_forward = getattr(engine, "finish_forward", None)
        # ``begin`` where the engine can start a forwarded call early; None otherwise (nothing to ask).
        self.begin = self._begin if self._start_forward is not None else None

    def _begin(self, request: InferenceRequest) -> Any:
        """Put a request (its ``encoded`` bytes: as the caller encoded it) on its way to the upstream
        before it is decoded and checked against the signature: that then runs while the upstream works.
        The handle goes into the work item (``WorkItem.started``); whoever fails the request before
        ``submit`` awaits it calls its ``cancel()``; its ``sent`` says whether the request has left
        already (False: it leaves when the event loop next turns). None if no call starts (closed,
        expired): ``submit`` forwards as usual."""
        if self._closed:
            return None
        return self._start_forward(request.encoded, request.deadline_ns, request.names_end)

    async def submit(self, item: WorkItem) -> dict[str, np.ndarray]:
        if self._closed:
            raise ServerDraining("the version is shutting down and accepts no new requests")
        deadline = item.request.deadline_ns
        start = time.monotonic_ns()
        if deadline is not None and start >= deadline:
            raise DeadlineExceeded(f"request '{item.request.id}' expired before the model ran")
        self._stats.record_queue(start - item.arrival_ns)
        span = item.span
        if span is INVALID_SPAN:  # not traced: no span work at all
            outputs = await self._execute(item)
        else:
            record_queue_time(span, (start - item.arrival_ns) / 1e9)
            with batch_span(self._model, self._version, (span,), item.rows, self._engine.provider):
                outputs = await self._execute(item)
        # The statistics and the monitor's look at the run wait until the caller's answer is on its way:
        # a callback queued now runs right after this task's step, which returns the answer to gRPC
        # (and starts its write), and before the loop takes any new call.
        asyncio.get_running_loop().call_soon(self._after_run, item, outputs, time.monotonic_ns() - start)
        return outputs

    def _after_run(self, item: WorkItem, outputs: Mapping[str, np.ndarray], compute_ns: int) -> None:
        self._stats.record_execution(item.rows, 1, 0, compute_ns, 0)
        if self.observer is not None:
            self.observer.observe(item.request.inputs, outputs, (item.rows,))  # (decoded when counted)

    def _execute(self, item: WorkItem) -> Any:
        """The engine run for one request (an awaitable)."""
        if item.started is not None:
            return self._finish_forward(item.started)
        request = item.request
        if request.encoded is not None and self._forward is not None:  # an upstream: the caller's bytes go on
            return self._forward(request.encoded, request.names_end)
        return run_engine(self._engine, self._run_inline, aligned_inputs(request.inputs), item.output_names)

    async def close(self) -> None:
        self._closed = True
