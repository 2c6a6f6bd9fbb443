"""The result of one load run and its statistics (part of ``bench.loadgen``, which re-exports ``Result``).

``Tally`` is what one driver (one event loop, in this process or a worker) records in the measured
window; ``build_result`` merges the tallies of a run into one ``Result``.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bench.loadgen_driver import Plan


@dataclass
class Result:
    """What one load run measured. Latencies in milliseconds; CPU in seconds over the measured window."""

    mode: str  # "closed" or "open"
    target: str
    duration_s: float  # length of the measured window
    concurrency: int | None = None
    rate_per_s: float | None = None
    rows_per_request: int = 1
    requests: int = 0  # successful requests counted in the window
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    dropped: int = 0  # open loop: scheduled requests not sent because max_in_flight was reached
    latency_ms: dict[str, float] = field(default_factory=dict)  # mean, p50, p90, p95, p99, max
    client_cpu_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)  # probe name -> CPU seconds in the window
    processes: int = 0  # load generator worker processes (0 = ran in the caller's process)
    labels: dict[str, Any] = field(default_factory=dict)  # free-form: server, model, batching, ...

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rps * self.rows_per_request

    @property
    def client_cpu_us_per_request(self) -> float:
        return self.client_cpu_s / self.requests * 1e6 if self.requests else math.nan

    def cpu_us_per_request(self, probe: str) -> float:
        """CPU microseconds per completed request for one of the ``cpu_probes`` (e.g. "server")."""
        seconds = self.cpu_s.get(probe)
        if seconds is None or not self.requests:
            return math.nan
        return seconds / self.requests * 1e6

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["rps"] = round(self.rps, 2)
        out["rows_per_s"] = round(self.rows_per_s, 2)
        out["client_cpu_us_per_request"] = _round(self.client_cpu_us_per_request)
        out["cpu_us_per_request"] = {k: _round(self.cpu_us_per_request(k)) for k in self.cpu_s}
        return out

    def summary(self) -> str:
        lat = self.latency_ms
        load = f"c={self.concurrency}" if self.mode == "closed" else f"rate={self.rate_per_s:g}/s"
        server = self.cpu_us_per_request("server")
        srv = f" server {server:.0f} us/req" if not math.isnan(server) else ""
        return (
            f"{load}: {self.rps:,.0f} req/s {self.rows_per_s:,.0f} rows/s "
            f"p50 {lat.get('p50', math.nan):.2f} p99 {lat.get('p99', math.nan):.2f} "
            f"max {lat.get('max', math.nan):.2f} ms errors {self.errors} dropped {self.dropped} "
            f"client {self.client_cpu_us_per_request:.0f} us/req{srv}"
        )


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 1)


def latency_summary(latencies_ns: np.ndarray) -> dict[str, float]:
    if latencies_ns.size == 0:
        return {}
    ms = latencies_ns.astype(np.float64) / 1e6
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    return {
        "mean": round(float(ms.mean()), 4),
        "p50": round(float(p50), 4),
        "p90": round(float(p90), 4),
        "p95": round(float(p95), 4),
        "p99": round(float(p99), 4),
        "max": round(float(ms.max()), 4),
    }


@dataclass
class Tally:
    """What one driver recorded inside the measured window: latencies (ns), errors by status, drops."""

    latencies: list[int] = field(default_factory=list)
    errors: collections.Counter = field(default_factory=collections.Counter)
    dropped: int = 0


def build_result(
    plan: Plan,
    duration_s: float,
    rows_per_request: int,
    labels: Mapping[str, Any] | None,
    tallies: Sequence[Tally],
    before: Mapping[str, float],
    after: Mapping[str, float],
    processes: int,
    concurrency: int | None = None,
    rate_per_s: float | None = None,
) -> Result:
    """Merge the tallies of one run (one per driver) into its Result; CPU is ``after - before`` per probe."""
    latencies = np.fromiter(
        (x for t in tallies for x in t.latencies), dtype=np.int64, count=sum(len(t.latencies) for t in tallies)
    )
    errors: collections.Counter = collections.Counter()
    for t in tallies:
        errors.update(t.errors)
    cpu = {k: after[k] - before[k] for k in before}
    client = cpu.pop("__client__")
    closed = plan.rate_per_s <= 0
    return Result(
        mode="closed" if closed else "open",
        target=plan.target,
        duration_s=duration_s,
        concurrency=(concurrency or plan.concurrency) if closed else None,
        rate_per_s=None if closed else (rate_per_s or plan.rate_per_s),
        rows_per_request=rows_per_request,
        requests=int(latencies.size),
        errors=sum(errors.values()),
        error_kinds=dict(errors),
        dropped=sum(t.dropped for t in tallies),
        latency_ms=latency_summary(latencies),
        client_cpu_s=round(client, 4),
        cpu_s={k: round(v, 4) for k, v in cpu.items()},
        processes=processes,
        labels=dict(labels or {}),
    )
