"""A fake Engine for tests and benchmarks of the stages above the engine (batching, routing).

    engine = FakeEngine(max_batch_size=8, latency_s=lambda rows: 0.001 + 0.0001 * rows)
    engine.pause()                      # runs start (and are logged) but wait at a gate
    ...submit requests...
    await engine.wait_started(1)        # no sleeps: wait on a condition
    engine.resume()
    engine.fail_next(RuntimeError("boom"))  # the next run raises it
    [call.rows for call in engine.calls]    # the call log, in start order

Default signature: ``INPUT0`` FP32 ``[-1, 4]`` -> ``OUTPUT0 = 2 * INPUT0`` (same shape) and
``OUTPUT1`` = the sum of each row (``[-1]``), so every output row is a function of its input row only
and a test can check that outputs were split back to the right caller. Pass other ``inputs``/``outputs``
specs and a ``compute`` function for other models (``-1`` in a non-batch dimension = variable).

``latency_s`` (seconds, a number or a function of the batch rows) is spent with ``asyncio.sleep`` by
default, or blocking in ``executor``'s threads when one is given (like ONNX Runtime).

``work_item`` builds a validated WorkItem the way ModelVersion.infer does, and ``batch_settings``
a BatchSettings with test-friendly defaults, so a scheduler can be driven without a server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from sidecar.batching.scheduler import BatchSettings, WorkItem
from sidecar.engine.validation import validate_inputs, validate_outputs
from sidecar.types import InferenceRequest, TensorSpec

Compute = Callable[[Mapping[str, np.ndarray], Sequence[str]], dict[str, np.ndarray]]

DEFAULT_INPUTS = (TensorSpec("INPUT0", "FP32", (-1, 4)),)
DEFAULT_OUTPUTS = (TensorSpec("OUTPUT0", "FP32", (-1, 4)), TensorSpec("OUTPUT1", "FP32", (-1,)))


def double_and_row_sum(inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The default computation: OUTPUT0 = 2 * INPUT0, OUTPUT1 = sum of each row of INPUT0."""
    x = inputs["INPUT0"]
    out = {}
    if "OUTPUT0" in output_names:
        out["OUTPUT0"] = x * 2
    if "OUTPUT1" in output_names:
        out["OUTPUT1"] = x.reshape(x.shape[0], -1).sum(axis=1)
    return out


@dataclass(frozen=True, slots=True)
class FakeCall:
    """One engine run: what it was given and when it ran (``time.monotonic_ns``)."""

    index: int
    rows: int
    input_shapes: Mapping[str, tuple[int, ...]]
    inputs: Mapping[str, np.ndarray]
    output_names: tuple[str, ...]
    started_ns: int
    finished_ns: int
    error: BaseException | None


class FakeEngine:
    platform = "fake"
    provider = "FakeExecutionProvider"

    def __init__(
        self,
        *,
        inputs: Sequence[TensorSpec] = DEFAULT_INPUTS,
        outputs: Sequence[TensorSpec] = DEFAULT_OUTPUTS,
        max_batch_size: int = 8,
        latency_s: float | Callable[[int], float] = 0.0,
        compute: Compute = double_and_row_sum,
        executor: Executor | None = None,
    ) -> None:
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.max_batch_size = max_batch_size
        self.latency_s = latency_s
        self.compute = compute
        self._executor = executor
        self.calls: list[FakeCall] = []  # finished runs, in the order they started
        self.started = 0
        self.running = 0
        self.max_running = 0  # most runs seen at once
        self.closed = False
        self._failures: list[BaseException] = []
        self._fail_when: Callable[[Mapping[str, np.ndarray]], BaseException | None] | None = None
        self._gate: asyncio.Event | None = None
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    # -- control ------------------------------------------------------------------------------
    def pause(self) -> None:
        """Runs that start from now on wait (counted as started and running) until ``resume``."""
        self._gate = asyncio.Event()

    def resume(self) -> None:
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    def fail_next(self, error: BaseException, times: int = 1) -> None:
        """The next ``times`` runs raise ``error`` (after their latency)."""
        self._failures.extend([error] * times)

    def fail_when(self, predicate: Callable[[Mapping[str, np.ndarray]], BaseException | None] | None) -> None:
        """Every run whose inputs make ``predicate`` return an exception raises it (None: stop)."""
        self._fail_when = predicate

    async def wait_started(self, count: int, timeout_s: float = 10.0) -> None:
        """Wait until ``count`` runs have started in all."""
        await self._wait(lambda: self.started >= count, timeout_s)

    async def wait_finished(self, count: int, timeout_s: float = 10.0) -> None:
        """Wait until ``count`` runs have finished in all."""
        await self._wait(lambda: len(self.calls) >= count, timeout_s)

    async def _wait(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        if predicate():
            return
        future = asyncio.get_running_loop().create_future()
        waiter = (predicate, future)
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(future, timeout_s)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _changed(self) -> None:
        for predicate, future in list(self._waiters):
            if not future.done() and predicate():
                future.set_result(None)

    # -- Engine -------------------------------------------------------------------------------
    async def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        index = self.started
        self.started += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        started = time.monotonic_ns()
        first = inputs[self.inputs[0].name] if self.inputs else None
        rows = int(first.shape[0]) if first is not None and first.ndim and self.max_batch_size else 1
        names = tuple(output_names) or tuple(s.name for s in self.outputs)
        feed = {k: np.array(v, copy=True) for k, v in inputs.items()}
        error: BaseException | None = None
        try:
            self._changed()
            gate = self._gate
            if gate is not None:
                await gate.wait()
            latency = self.latency_s(rows) if callable(self.latency_s) else self.latency_s
            if self._executor is not None:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self._executor, self._blocking, feed, names, latency)
            else:
                if latency > 0:
                    await asyncio.sleep(latency)
                result = self._compute(feed, names)
            return result
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.running -= 1
            call = FakeCall(
                index, rows, {k: v.shape for k, v in feed.items()}, feed, names, started, time.monotonic_ns(), error
            )
            self.calls.append(call)
            self.calls.sort(key=lambda c: c.index)
            self._changed()

    def _blocking(self, feed: Mapping[str, np.ndarray], names: tuple[str, ...], latency: float) -> dict:
        if latency > 0:
            time.sleep(latency)
        return self._compute(feed, names)

    def _compute(self, feed: Mapping[str, np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
        if self._failures:
            raise self._failures.pop(0)
        if self._fail_when is not None:
            error = self._fail_when(feed)
            if error is not None:
                raise error
        return self.compute(feed, names)

    def close(self) -> None:
        self.closed = True


def work_item(
    engine: FakeEngine,
    inputs: np.ndarray | Mapping[str, np.ndarray],
    *,
    outputs: Sequence[str] | None = None,
    priority: int = 0,
    deadline_ns: int | None = None,
    id: str = "",
) -> WorkItem:
    """A request checked against ``engine``'s signature (a bare array is the first input)."""
    feed = dict(inputs) if isinstance(inputs, Mapping) else {engine.inputs[0].name: inputs}
    request = InferenceRequest(
        "fake",
        "",
        id,
        feed,
        requested_outputs=tuple(outputs) if outputs else None,
        deadline_ns=deadline_ns,
        priority=priority,
    )
    rows = validate_inputs("fake", feed, engine.inputs, engine.max_batch_size)
    names = validate_outputs("fake", request.requested_outputs, engine.outputs)
    return WorkItem(request, rows, names, time.monotonic_ns())


def batch_settings(**overrides: object) -> BatchSettings:
    """Triton's rule, no queue delay, one batch in flight, a queue of 1000, unless overridden."""
    values: dict[str, object] = {
        "enabled": True,
        "max_batch_size": 8,
        "max_queue_delay_ms": 0.0,
        "preferred_batch_sizes": (),
        "max_queue_size": 1000,
        "batches_in_flight": 1,
        "adaptive": False,
        "kept_merge_mb": 512.0,
    }
    values.update(overrides)
    settings = BatchSettings(**values)  # type: ignore[arg-type]
    settings.check()
    return settings
