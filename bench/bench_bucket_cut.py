"""Padding to shape buckets, with and without cutting batches to a bucket (simulated GPU, in process).

Where a version's batches are padded to buckets (``engine.shape_buckets``, chosen on GPUs whose
convolutions re-plan on every new shape), a batch of 44 rows runs as 64 and costs the device what 64
cost. When the batch takes the batcher's last free slot, the batcher may instead run the largest
bucket the queue fills exactly (32) and leave the rest to wait for the next slot, when its cost model
says that serves more rows a second (``DynamicBatcher._aligned``). This benchmark measures what that
changes on the simulated device of ``bench_batcher`` (one stream, 2 ms + 0.25 ms per row *run*, so
padding rows cost as much as real ones), with Poisson arrivals at three loads, each request with a
100 ms deadline, the adaptive policy, max batch 64, max queue delay 2 ms, two batches in flight:

- ``unpadded``: every batch runs at its own size (the device as if shapes cost nothing): the ceiling;
- ``padded``: batches padded up to powers of two, never cut (what the sidecar did before);
- ``padded + cut``: the same buckets, batches cut to a bucket where the cost model says it pays.

Reported per cell (median-goodput run of ``--repeats``): answers within the deadline per second,
p50/p99, mean rows per run (real and as run) and the share of device time spent on padding rows.

    .venv/bin/python -m bench.bench_bucket_cut                 # about 1 minute
    .venv/bin/python -m bench.bench_bucket_cut --duration 5 --repeats 5

Results: bench/results/bucket-cut.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from typing import Any

import numpy as np

from bench.report import machine_info, markdown_table, save_results
from bench.sim_device import device_engine, poisson_arrivals

FIXED_MS = 2.0
PER_ROW_MS = 0.25
BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LOADS = (1500, 2500, 3300)  # requests/s; the device runs at most 64 / 18 ms = 3,556 rows/s
MODES = ("unpadded", "padded", "padded + cut")
DEADLINE_MS = 100.0


def _padded(rows: int) -> int:
    return next((b for b in BUCKETS if b >= rows), rows)


async def _simulate(mode: str, rate: float, duration_s: float, seed: int) -> dict[str, Any]:
    from sidecar.batching.dynamic import DynamicBatcher
    from sidecar.engine.statistics import VersionStatistics
    from sidecar.errors import SidecarError
    from sidecar.testing.fake_engine import batch_settings, work_item

    engine, device = device_engine(FIXED_MS, PER_ROW_MS)
    if mode != "unpadded":
        engine.padded_rows = _padded  # type: ignore[attr-defined]
    if mode == "padded + cut":
        engine.batch_buckets = BUCKETS  # type: ignore[attr-defined]
    stats = VersionStatistics()
    settings = batch_settings(
        max_batch_size=64, max_queue_delay_ms=2.0, batches_in_flight=2, adaptive=True, max_queue_size=100_000
    )
    batcher = DynamicBatcher(engine, settings, stats, "sim", "1")
    x = np.zeros((1, 8), np.float32)
    latencies: list[float] = []
    met = 0

    async def one(scheduled_ns: int) -> None:
        nonlocal met
        item = work_item(engine, x, deadline_ns=scheduled_ns + int(DEADLINE_MS * 1e6))
        try:
            await batcher.submit(item)
        except SidecarError:
            return
        latency_ms = (time.monotonic_ns() - scheduled_ns) / 1e6
        latencies.append(latency_ms)
        met += latency_ms <= DEADLINE_MS

    await poisson_arrivals(rate, duration_s, seed, one)
    await batcher.close()
    device.shutdown()
    lat = np.array(latencies) if latencies else np.array([np.nan])
    real = len(latencies)  # answered requests, a row each (an expired one never ran)
    runs = max(1, len(engine.calls))
    ran = sum(c.rows for c in engine.calls)
    device_ms = sum(FIXED_MS + PER_ROW_MS * c.rows for c in engine.calls)
    return {
        "mode": mode,
        "rate": rate,
        "goodput_per_s": met / duration_s,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "rows_per_run": real / runs,
        "run_rows_per_run": ran / runs,
        "padding_pct": 100.0 * PER_ROW_MS * (ran - real) / device_ms if device_ms else 0.0,
        "runs": len(engine.calls),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--name", default="bucket-cut")
    args = p.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.bench_bucket_cut", *(sys.argv[1:] if argv is None else argv)])
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    runs: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for r in range(args.repeats):
        for rate in LOADS:
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                row = runner(_simulate(mode, rate, args.duration, seed=int(rate) + r))
                runs.setdefault((rate, mode), []).append(row)
                print(
                    f"{r} {rate:5.0f}/s {mode:13s} goodput {row['goodput_per_s']:6.0f}/s p50 {row['p50_ms']:6.1f} "
                    f"p99 {row['p99_ms']:6.1f} ms rows/run {row['rows_per_run']:5.1f} (run as "
                    f"{row['run_rows_per_run']:5.1f}) padding {row['padding_pct']:4.1f}%",
                    flush=True,
                )
    rows = []
    for _key, group in sorted(runs.items(), key=lambda kv: (kv[0][0], MODES.index(kv[0][1]))):
        ordered = sorted(group, key=lambda row: row["goodput_per_s"])
        median = dict(ordered[len(ordered) // 2])
        median["goodput_runs"] = [round(row["goodput_per_s"]) for row in group]
        rows.append(median)
    info = machine_info()
    md = "\n".join(
        [
            f"# Shape buckets: padding whole batches, or cutting them to a bucket ({time.strftime('%Y-%m-%d %H:%M')})",
            "",
            f"Command: `{command}`",
            "",
            f"Simulated device: {FIXED_MS:g} ms + {PER_ROW_MS:g} ms per row run, one stream; buckets "
            f"{', '.join(map(str, BUCKETS))}; adaptive policy, max batch 64, max queue delay 2 ms, two batches "
            f"in flight; Poisson arrivals, {DEADLINE_MS:g} ms deadlines; {args.duration:g} s per run, the "
            f"median-goodput run of {args.repeats}. Machine: {info.get('cpus')} CPUs, Python {info.get('python')}.",
            "",
            markdown_table(
                rows,
                [
                    ("rate", "offered req/s"),
                    ("mode", "batches"),
                    ("goodput_per_s", "answered in time /s"),
                    ("p50_ms", "p50 ms"),
                    ("p99_ms", "p99 ms"),
                    ("rows_per_run", "rows per run"),
                    ("run_rows_per_run", "rows run (padded)"),
                    ("padding_pct", "device time on padding %"),
                    ("goodput_runs", "goodput of each run"),
                ],
            ),
            "",
        ]
    )
    print(md)
    save_results(args.name, {"command": command, "machine": info, "rows": rows}, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
