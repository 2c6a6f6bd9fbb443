"""Histogram kernel, side by side in one run: the native C kernel, its numpy twin, ``numpy.histogram``
per column, and boost-histogram per column; 10 bins (11 edges, the quantiles of a reference sample, so
not uniform), float32 and float64, one 4096 x 64 batch and one 1 x 64 request.

Targets (issue 4), float32, 10 bins:

* 4096 x 64: the native kernel at >= 1e9 values/s on one core, >= 15x faster than ``numpy.histogram``
  per column, and faster than boost-histogram;
* 1 x 64: <= 2 us per update, the Python call included.

    .venv/bin/python -m bench.bench_histogram              # about 1 minute
    .venv/bin/python -m bench.bench_histogram --quick      # about 15 seconds, fewer samples
    .venv/bin/python -m bench.bench_histogram --timer cpu  # thread CPU time: steadier on a busy machine
    taskset -c 2 .venv/bin/python -m bench.bench_histogram # pinned to one core (quieter numbers)

Every row times a full update as a caller makes it. "native" and "numpy twin" are
``sidecar.monitoring.histogram.implementations()`` (validation included); "native, raw binding" calls
the C binding directly (no validation) to show what the Python-side checks cost; "native <isa>" rows
force each instruction-set variant the CPU supports. ``numpy.histogram`` gets one column view per
feature (what a caller would write); boost-histogram gets its best case: one ``Histogram`` per feature
built once, and columns already transposed to contiguous rows outside the timed region (its fill
copies strided input otherwise); boost's last bin is half open and NaN lands in its overflow bin, so
its counts differ from ours on exact last-edge values and NaN, which this data has none of.

Before timing, every implementation's interior bins are checked against ``numpy.histogram``.
Each row reports the median of several timed samples (and the best); the machine's load matters, so
compare rows of one run. Results: bench/results/histogram.json and histogram.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sidecar.monitoring import histogram

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BINS = 10
FEATURES = 64
SHAPES = [(4096, FEATURES), (1, FEATURES)]
DTYPES = [np.float32, np.float64]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


TIMERS = {"wall": time.perf_counter, "cpu": time.thread_time}
timer = time.perf_counter


def time_call(fn: Callable[[], Any], sample_s: float, samples: int) -> tuple[float, float]:
    """(median, best) seconds per call over ``samples`` samples of about ``sample_s`` each."""
    fn()
    start = time.perf_counter()
    calls = 0
    while time.perf_counter() - start < sample_s / 10 or calls < 1:
        fn()
        calls += 1
    per_call = (time.perf_counter() - start) / calls
    number = max(1, int(sample_s / max(per_call, 1e-9)))
    results = []
    for _ in range(samples):
        t0 = timer()
        for _ in range(number):
            fn()
        results.append((timer() - t0) / number)
    return statistics.median(results), min(results)


def make_data(n: int, dtype: type, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    reference = rng.standard_normal((20_000, FEATURES)) * rng.uniform(0.5, 2.0, FEATURES) + rng.normal(0, 1, FEATURES)
    edges = np.ascontiguousarray(np.quantile(reference, np.linspace(0.0, 1.0, BINS + 1), axis=0))
    values = (rng.standard_normal((n, FEATURES)) * 1.1 * reference.std(axis=0) + reference.mean(axis=0)).astype(dtype)
    return values, edges


def candidates(values: np.ndarray, edges: np.ndarray) -> dict[str, tuple[Callable[[], Any], Callable[[], np.ndarray]]]:
    """name -> (timed call, interior counts (F, BINS) after one fresh call, for the correctness check)."""
    n, f = values.shape
    k = edges.shape[0]
    out: dict[str, tuple[Callable[[], Any], Callable[[], np.ndarray]]] = {}

    def ours(update: Callable[..., None], *extra: int) -> tuple[Callable[[], Any], Callable[[], np.ndarray]]:
        counts = np.zeros((f, k + 3), dtype=np.int64)

        def once() -> np.ndarray:
            fresh = np.zeros((f, k + 3), dtype=np.int64)
            update(fresh, values, edges, *extra)
            return fresh[:, 1:k]

        return (lambda: update(counts, values, edges, *extra)), once

    impls = histogram.implementations()
    if "native" in impls:
        from sidecar.monitoring import _histogram_native as native

        out["native"] = ours(impls["native"])
        raw = native.update_f32 if values.dtype == np.float32 else native.update_f64
        out["native, raw binding"] = ours(raw, n, f, k)
    out["numpy twin"] = ours(impls["numpy"])

    def np_hist() -> list[np.ndarray]:
        return [np.histogram(values[:, j], bins=edges[:, j])[0] for j in range(f)]

    out["numpy.histogram per column"] = (np_hist, lambda: np.array(np_hist()))
    try:
        import boost_histogram as bh
    except ImportError:
        pass
    else:
        columns = np.ascontiguousarray(values.T)
        hists = [bh.Histogram(bh.axis.Variable(edges[:, j]), storage=bh.storage.Int64()) for j in range(f)]

        def bh_fill() -> None:
            for h, col in zip(hists, columns, strict=True):
                h.fill(col)

        def bh_once() -> np.ndarray:
            fresh = [bh.Histogram(bh.axis.Variable(edges[:, j]), storage=bh.storage.Int64()) for j in range(f)]
            for h, col in zip(fresh, columns, strict=True):
                h.fill(col)
            return np.array([h.view() for h in fresh])

        out["boost-histogram per column"] = (bh_fill, bh_once)
    return out


def variant_rows(
    values: np.ndarray, edges: np.ndarray, sample_s: float, samples: int
) -> list[tuple[str, float, float]]:
    """Each instruction-set variant of the native kernel, forced in turn (validation included)."""
    impls = histogram.implementations()
    if "native" not in impls:
        return []
    from sidecar.monitoring import _histogram_native as native

    f, k = values.shape[1], edges.shape[0]
    counts = np.zeros((f, k + 3), dtype=np.int64)
    rows = []
    default = native.VARIANT
    try:
        for variant in native.VARIANTS:
            native.set_variant(variant)
            check = np.zeros_like(counts)
            impls["native"](check, values, edges)
            expect = np.array([np.histogram(values[:, j], bins=edges[:, j])[0] for j in range(f)])
            if not np.array_equal(check[:, 1:k], expect):
                raise AssertionError(f"native {variant} disagrees with numpy.histogram")
            median, best = time_call(lambda: impls["native"](counts, values, edges), sample_s, samples)
            rows.append((f"native {variant}", median, best))
    finally:
        native.set_variant(default)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter samples (about 15 s)")
    parser.add_argument("--name", default="histogram", help="results file name (default: histogram)")
    parser.add_argument(
        "--timer",
        choices=sorted(TIMERS),
        default="wall",
        help="wall clock (default) or this thread's CPU time (steadier on a shared, busy machine)",
    )
    args = parser.parse_args(argv)
    global timer
    timer = TIMERS[args.timer]
    sample_s, samples = (0.05, 3) if args.quick else (0.2, 7)
    rng = np.random.default_rng(20261125)

    rows: list[dict[str, Any]] = []
    for n, f in SHAPES:
        for dtype in DTYPES:
            values, edges = make_data(n, dtype, rng)
            cands = candidates(values, edges)
            expect = np.array([np.histogram(values[:, j], bins=edges[:, j])[0] for j in range(f)])
            timed: list[tuple[str, float, float]] = []
            for name, (fn, once) in cands.items():
                if not np.array_equal(once(), expect):
                    raise AssertionError(f"{name} disagrees with numpy.histogram on {n}x{f} {np.dtype(dtype).name}")
                timed.append((name, *time_call(fn, sample_s, samples)))
            timed.extend(variant_rows(values, edges, sample_s, samples))
            baseline = next(t for name, t, _ in timed if name == "numpy.histogram per column")
            for name, median, best in timed:
                rows.append(
                    {
                        "shape": f"{n} x {f}",
                        "dtype": np.dtype(dtype).name,
                        "implementation": name,
                        "us_per_update": median * 1e6,
                        "best_us_per_update": best * 1e6,
                        "ns_per_value": median / (n * f) * 1e9,
                        "gvalues_per_s": n * f / median / 1e9,
                        "speedup_vs_numpy_histogram": baseline / median,
                    }
                )
            print(f"done: {n} x {f} {np.dtype(dtype).name}", file=sys.stderr)

    meta = {
        "benchmark": "histogram kernel",
        "command": "python -m bench.bench_histogram"
        + (" --quick" if args.quick else "")
        + (f" --timer {args.timer}" if args.timer != "wall" else ""),
        "timer": args.timer,
        "bins": BINS,
        "kernel": histogram.KERNEL,
        "native_variant": histogram.NATIVE_VARIANT,
        "cpu": cpu_model(),
        "cpus_visible": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "samples": samples,
        "sample_s": sample_s,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import boost_histogram

        meta["boost_histogram"] = boost_histogram.__version__
    except ImportError:
        meta["boost_histogram"] = None

    table = markdown(rows)
    header = (
        f"# Histogram kernel ({BINS} bins, {FEATURES} features)\n\n"
        f"`{meta['command']}` on {meta['cpu']} ({meta['cpus_visible']} CPUs visible), Python {meta['python']}, "
        f"numpy {meta['numpy']}, boost-histogram {meta['boost_histogram']}, active kernel {meta['kernel']}"
        f" ({meta['native_variant']}), {meta['timestamp']}. Median of {samples} samples ({args.timer} time); "
        "single thread.\n\n"
    )
    print(header + table)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (RESULTS_DIR / f"{args.name}.md").write_text(header + table + "\n")
    return 0


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| shape | dtype | implementation | us / update | best us | ns / value | 1e9 values / s | vs numpy.histogram |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['implementation']} | {r['us_per_update']:.3g} | "
            f"{r['best_us_per_update']:.3g} | {r['ns_per_value']:.3g} | {r['gvalues_per_s']:.3g} | "
            f"{r['speedup_vs_numpy_histogram']:.3g}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
