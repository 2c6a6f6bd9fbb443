"""The batch merge's copy: numpy's concatenate against the C gather (sidecar.batching.gather).

The batcher merges a batch of image-sized requests on a worker thread, beside the event loop.
``numpy.concatenate(parts, out=...)`` takes the GIL back after each part's copy; the C gather takes it
twice in all. This measures one merge (the batcher's: read-only request views into a kept buffer) of
N ResNet-50 images (602 KB each) and, for contrast, of MLP rows (256 bytes, copied without releasing
the GIL either way), on a worker thread:

- ``alone``: nothing else runs;
- ``beside a busy loop``: an asyncio event loop on another thread runs Python work 60 % of the time
  (tasks of pure-Python work between short sleeps), as the sidecar's loop does under load;
- ``beside a spinner``: a thread that never gives up the GIL of its own accord (the worst case).

Each cell is the median of ``--repeats`` merges, numpy and gather alternating; the ratio is numpy over
gather in the same cell.

    .venv/bin/python -m bench.bench_merge            # about 30 s

Results: ``bench/results/merge.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from bench.report import machine_info, markdown_table, save_results
from sidecar.batching import gather

SHAPES = {"resnet50 image (602 KB)": ((3, 224, 224), np.float32), "mlp row (256 B)": ((64,), np.float32)}


def _parts(n: int, row_shape: tuple[int, ...], dtype: Any) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    one = rng.standard_normal(row_shape).astype(dtype)
    # each part its own bytes, read-only, as a request's decoded tensor
    return [np.frombuffer(one.tobytes(), dtype).reshape(1, *row_shape) for _ in range(n)]


@contextmanager
def _background(kind: str) -> Iterator[None]:
    if kind == "alone":
        yield
        return
    stop = threading.Event()

    def spinner() -> None:
        x = 0
        while not stop.is_set():
            for i in range(500):
                x += i

    def loop() -> None:
        async def work() -> None:
            while not stop.is_set():
                start = time.perf_counter()
                x = 0
                while time.perf_counter() - start < 0.0006:  # 0.6 ms of Python ...
                    for i in range(50):
                        x += i
                await asyncio.sleep(0.0004)  # ... then 0.4 ms idle (the loop waits in epoll)

        asyncio.run(work())

    thread = threading.Thread(target=spinner if kind == "beside a spinner" else loop, daemon=True)
    thread.start()
    time.sleep(0.05)
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _on_worker(fn: Callable[[], None]) -> float:
    took: list[float] = []

    def run() -> None:
        start = time.perf_counter()
        fn()
        took.append(time.perf_counter() - start)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return took[0] * 1e3


def measure(repeats: int, rows: list[int]) -> list[dict[str, Any]]:
    out_rows = []
    for background in ("alone", "beside a busy loop", "beside a spinner"):
        for label, (row_shape, dtype) in SHAPES.items():
            for n in rows:
                parts = _parts(n, row_shape, dtype)
                out = np.empty((n, *row_shape), dtype)
                out.fill(0)  # touch the pages once, as a kept merge buffer is
                numpy_ms, gather_ms = [], []
                with _background(background):
                    for _ in range(repeats):
                        numpy_ms.append(_on_worker(lambda p=parts, o=out: np.concatenate(p, out=o)))
                        gather_ms.append(_on_worker(lambda p=parts, o=out: gather.concatenate_into(o, p)))
                assert np.array_equal(out, np.concatenate(parts))
                a, b = statistics.median(numpy_ms), statistics.median(gather_ms)
                row = {"background": background, "rows": label, "n": n, "numpy_ms": a, "gather_ms": b, "ratio": a / b}
                out_rows.append(row)
                print(
                    f"{background:20s} {label:24s} x{n:<4d} numpy {a:8.2f} ms  gather {b:7.2f} ms  {a / b:6.1f}x",
                    flush=True,
                )
    return out_rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_merge", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--rows", default="16,64,128", help="requests per merge")
    p.add_argument("--name", default="merge")
    args = p.parse_args(argv)
    if not gather.NATIVE:
        print("sidecar.batching._gather_native is not built: nothing to compare", file=sys.stderr)
        return 1
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    rows = measure(args.repeats, [int(n) for n in args.rows.split(",") if n])
    machine = machine_info()
    md = [
        f"# Batch merge: numpy concatenate vs the C gather ({started})",
        "",
        "Command: `python -m bench.bench_merge " + " ".join(sys.argv[1:] if argv is None else argv) + "`",
        "",
        f"Machine: {machine.get('cpu_model', '?')}, {machine['cpus']} CPUs, Python {sys.version.split()[0]}, "
        f"numpy {np.__version__}. One merge on a worker thread into a kept (touched) buffer; median of "
        f"{args.repeats}; switch interval {sys.getswitchinterval() * 1e3:g} ms.",
        "",
        markdown_table(
            rows,
            (
                ("background", "beside"),
                ("rows", "rows"),
                ("n", "requests"),
                ("numpy_ms", "numpy ms"),
                ("gather_ms", "gather ms"),
                ("ratio", "numpy / gather"),
            ),
        ),
        "",
    ]
    save_results(args.name, {"started": started, "machine": machine, "rows": rows}, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
