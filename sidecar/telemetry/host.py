"""Process CPU and memory (psutil), observed at collection time on the exporter's thread.

Nothing here runs on the request path: each collection reads ``/proc`` once for this process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import psutil
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from sidecar.telemetry import catalog
from sidecar.telemetry.model_metrics import create_observable


class HostMetrics:
    def __init__(self, meter: Meter, process: psutil.Process | None = None) -> None:
        self._process = process or psutil.Process()
        self._cpus = psutil.cpu_count() or 1
        self._lock = threading.Lock()  # collections from two readers (Prometheus, OTLP) may overlap
        times = self._process.cpu_times()
        self._last = (time.monotonic(), times.user + times.system)
        create_observable(meter, catalog.PROCESS_CPU_TIME, self._cpu_time)
        create_observable(meter, catalog.PROCESS_CPU_UTILIZATION, self._cpu_utilization)
        create_observable(meter, catalog.PROCESS_MEMORY_USAGE, self._memory)
        create_observable(meter, catalog.PROCESS_MEMORY_VIRTUAL, self._virtual)
        create_observable(meter, catalog.PROCESS_THREADS, self._threads)

    def _cpu_time(self, options: CallbackOptions) -> Iterable[Observation]:
        t = self._process.cpu_times()
        return [Observation(t.user, {"cpu.mode": "user"}), Observation(t.system, {"cpu.mode": "system"})]

    def _cpu_utilization(self, options: CallbackOptions) -> Iterable[Observation]:
        t = self._process.cpu_times()
        now, used = time.monotonic(), t.user + t.system
        with self._lock:
            last_at, last_used = self._last
            self._last = (now, used)
        elapsed = now - last_at
        if elapsed <= 0:
            return []
        return [Observation(max(0.0, (used - last_used) / (elapsed * self._cpus)))]

    def _memory(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._process.memory_info().rss)]

    def _virtual(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._process.memory_info().vms)]

    def _threads(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._process.num_threads())]
