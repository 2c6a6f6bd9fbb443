"""Per-version inference statistics, as Triton's ModelStatistics reports them.

Counts are cumulative since the version loaded. ``inference_count`` counts rows (a batch-64
request adds 64); ``execution_count`` counts engine runs (one dynamic batch adds 1). Updated only
from the event loop thread, so no lock is needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol


class StatisticsSink(Protocol):
    """Receives every recorded event as it happens (the telemetry stage turns them into metrics)."""

    def request(self, ok: bool, duration_ns: int, rows: int) -> None: ...

    def queue(self, ns: int) -> None: ...

    def execution(self, batch_rows: int, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None: ...


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class VersionStatistics:
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=dict)
    sink: StatisticsSink | None = None

    def record_request(self, ok: bool, duration_ns: int, rows: int) -> None:
        self.last_inference_ms = time.time_ns() // 1_000_000
        if ok:
            self.success.add(duration_ns)
            self.inference_count += rows
        else:
            self.fail.add(duration_ns)
        if self.sink is not None:
            self.sink.request(ok, duration_ns, rows)

    def record_queue(self, ns: int) -> None:
        self.queue.add(ns)
        if self.sink is not None:
            self.sink.queue(ns)

    def record_execution(self, batch_rows: int, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One engine run that served ``requests`` requests with ``batch_rows`` rows in all."""
        self.execution_count += 1
        self.compute_input.add(input_ns, requests)
        self.compute_infer.add(infer_ns, requests)
        self.compute_output.add(output_ns, requests)
        stats = self.batches.get(batch_rows)
        if stats is None:
            stats = self.batches[batch_rows] = BatchStats()
        stats.compute_input.add(input_ns)
        stats.compute_infer.add(infer_ns)
        stats.compute_output.add(output_ns)
        if self.sink is not None:
            self.sink.execution(batch_rows, requests, input_ns, infer_ns, output_ns)
