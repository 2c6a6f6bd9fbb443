"""Where a batched GPU run's time goes: the sidecar's own engine (OnnxEngine, its session options) run
in-process, with and without what the server adds around a run.

The batched sidecar served ResNet-50 far slower than raw ONNX Runtime on an H200 (bench/results/
gpu-h200-1.md, -2.md) while its event loop was mostly idle and its engine threads were busy. This
times ``OnnxEngine.run_sync`` at a few batch sizes, varying one thing at a time:

- ``reuse``: the same input array every run (as the raw benchmark does), or ``fresh``: a new array
  merged from single rows each run (as the batcher does);
- ``threads``: one caller, or two at once (the batcher's two batches in flight);
- the engine's session options (intra-op threads 1, no spinning) or ONNX Runtime's defaults.

    python -m bench.gpu.probe_runs MODEL.onnx [--batch-sizes 8,64] [--seconds 1.5] [--providers ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from sidecar.engine.onnx_session import OnnxEngine


def make_engine(path: str, providers: Sequence[str], defaults: bool, max_batch: int) -> OnnxEngine:
    options = {"intra_op_threads": 0, "spin_wait": True} if defaults else {"intra_op_threads": 1, "spin_wait": False}
    engine = OnnxEngine(path, providers=providers, executor=ThreadPoolExecutor(4), max_batch_size=max_batch, **options)
    sizes, b = [], 1
    while b <= max_batch:
        sizes.append(b)
        b *= 2
    engine.warm_up(sizes, 2)
    return engine


def rows_for(engine: OnnxEngine, count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        feed = {}
        for spec in engine.inputs:
            shape = [1, *(d if d > 0 else 1 for d in spec.shape[1:])]
            if spec.datatype.startswith("FP"):
                feed[spec.name] = rng.standard_normal(shape).astype(np.float32)
            else:
                feed[spec.name] = rng.integers(0, 1000, shape).astype(np.int64)
        out.append(feed)
    return out


def measure(engine: OnnxEngine, batch: int, threads: int, fresh: bool, seconds: float) -> dict[str, float]:
    rows = rows_for(engine, batch)
    names = [s.name for s in engine.inputs]
    reused = {n: np.concatenate([r[n] for r in rows]) for n in names}
    outputs = [s.name for s in engine.outputs]
    times: list[float] = []
    lock = threading.Lock()
    end = time.perf_counter() + seconds

    def caller() -> None:
        mine = []
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            feed = {n: np.concatenate([r[n] for r in rows]) for n in names} if fresh else reused
            engine.run_sync(feed, outputs)
            mine.append(time.perf_counter() - t0)
        with lock:
            times.extend(mine)

    cpu0 = time.process_time()
    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    cpu = time.process_time() - cpu0
    runs = len(times)
    return {
        "rows_per_s": runs * batch / seconds,
        "median_ms": statistics.median(times) * 1e3 if times else float("nan"),
        "cpu_cores": cpu / seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.probe_runs", description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--batch-sizes", default="8,64")
    p.add_argument("--seconds", type=float, default=1.5)
    p.add_argument("--max-batch", type=int, default=128)
    p.add_argument("--providers", default="CUDAExecutionProvider,CPUExecutionProvider")
    args = p.parse_args(argv)
    providers = [x for x in args.providers.split(",") if x]
    sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    print("| session options | batch | input | callers | rows/s | median ms per run | CPU cores |", flush=True)
    print("|---|---:|---|---:|---:|---:|---:|", flush=True)
    for defaults in (False, True):
        engine = make_engine(args.model, providers, defaults, args.max_batch)
        label = "ONNX Runtime defaults" if defaults else "sidecar (intra-op 1, no spin)"
        for batch in sizes:
            for fresh, threads in ((False, 1), (True, 1), (False, 2), (True, 2)):
                m = measure(engine, batch, threads, fresh, args.seconds)
                print(
                    f"| {label} | {batch} | {'fresh' if fresh else 'reused'} | {threads} | {m['rows_per_s']:,.0f} "
                    f"| {m['median_ms']:.2f} | {m['cpu_cores']:.2f} |",
                    flush=True,
                )
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
