"""The ceiling: ONNX Runtime called in-process, no server, at batch sizes 1..max.

For each batch size, ``callers`` threads call ``session.run`` back to back for ``duration_s`` (after a
warm-up) on one shared session; reports rows/s, calls/s, latency per call and the process CPU per row.
With ``io_binding`` (GPU) inputs are copied to the device once and outputs stay there, which measures
the model without host transfers; without it, inputs and outputs are numpy arrays as a server sees.

Input tensors are made from the graph: the first dimension is the batch, other symbolic dimensions
take ``dim_values`` (name -> size) or 1; floats are random normal, integers random in [0, int_high).

    python -m bench.raw_onnxruntime MODEL.onnx --batch-sizes 1,2,4,8,16,32,64 --duration 2 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sidecar.engine.onnx_session import powers_of_two_to

_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def make_session(
    path: str | os.PathLike[str],
    providers: Sequence[str],
    intra_op_threads: int = 0,
    cudnn_conv_algo_search: str | None = None,
):
    """A session; ``cudnn_conv_algo_search`` sets the CUDA provider's option (None: ONNX Runtime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    options.log_severity_level = 3
    listed: list[Any] = list(providers)
    if cudnn_conv_algo_search:
        cuda = {"cudnn_conv_algo_search": cudnn_conv_algo_search}
        listed = [(p, cuda) if p == "CUDAExecutionProvider" else p for p in listed]
    return ort.InferenceSession(str(path), sess_options=options, providers=listed)


def make_inputs(
    session: Any, batch: int, dim_values: Mapping[str, int] | None = None, int_high: int = 100, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs for ``session`` with ``batch`` rows."""
    rng = np.random.default_rng(seed)
    feed = {}
    for arg in session.get_inputs():
        shape = []
        for k, d in enumerate(arg.shape):
            if k == 0:
                shape.append(batch)
            elif isinstance(d, int) and d > 0:
                shape.append(d)
            else:
                shape.append(int((dim_values or {}).get(str(d), 1)))
        dtype = _NUMPY[arg.type]
        if np.issubdtype(dtype, np.floating):
            feed[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feed[arg.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feed[arg.name] = rng.integers(0, int_high, shape).astype(dtype)
    return feed


def measure_batch(
    session: Any,
    feed: Mapping[str, np.ndarray],
    batch: int,
    duration_s: float,
    warmup_s: float = 0.5,
    callers: int = 1,
    io_binding: bool = False,
    device: str = "cuda",
) -> dict[str, Any]:
    """Back-to-back runs at one batch size; returns rows/s, calls/s, latency (ms) and CPU per row (us)."""
    output_names = [o.name for o in session.get_outputs()]
    run = _binding_runner(session, feed, output_names, device) if io_binding else _plain_runner(session, feed)
    for _ in range(3):
        run()
    lock = threading.Lock()
    latencies: list[float] = []
    start = time.perf_counter() + 0.01
    ws = start + warmup_s
    we = ws + duration_s

    def caller() -> None:
        mine = []
        runner = _binding_runner(session, feed, output_names, device) if io_binding else run
        while True:
            t0 = time.perf_counter()
            if t0 >= we:
                break
            runner()
            t1 = time.perf_counter()
            if ws <= t1 < we:
                mine.append(t1 - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=caller) for _ in range(max(1, callers))]
    for t in threads:
        t.start()
    time.sleep(max(0.0, ws - time.perf_counter()))
    cpu0 = time.process_time()
    time.sleep(max(0.0, we - time.perf_counter()))
    cpu1 = time.process_time()
    for t in threads:
        t.join()
    window = duration_s  # calls that completed inside the window, as the load generator counts
    if not latencies:  # one call is longer than the window: time a single call instead
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        run()
        latencies.append(time.perf_counter() - t0)
        cpu1 = time.process_time()
        window = latencies[0]
    lat = np.asarray(latencies) * 1e3
    calls = len(latencies)
    return {
        "batch": batch,
        "calls": calls,
        "calls_per_s": calls / window,
        "rows_per_s": calls * batch / window,
        "p50_ms": float(np.percentile(lat, 50)) if calls else None,
        "p99_ms": float(np.percentile(lat, 99)) if calls else None,
        "mean_ms": float(lat.mean()) if calls else None,
        "cpu_us_per_row": (cpu1 - cpu0) / (calls * batch) * 1e6 if calls else None,
    }


def _plain_runner(session: Any, feed: Mapping[str, np.ndarray]):
    feed = dict(feed)

    def run() -> None:
        session.run(None, feed)

    return run


def _binding_runner(session: Any, feed: Mapping[str, np.ndarray], output_names: Sequence[str], device: str):
    import onnxruntime as ort

    binding = session.io_binding()
    for name, array in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, device, 0))
    for name in output_names:
        binding.bind_output(name, device)

    def run() -> None:
        session.run_with_iobinding(binding)

    return run


def measure(
    path: str | os.PathLike[str],
    batch_sizes: Sequence[int],
    *,
    duration_s: float = 2.0,
    warmup_s: float = 0.5,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    intra_op_threads: int = 0,
    callers: int = 1,
    io_binding: bool = False,
    dim_values: Mapping[str, int] | None = None,
    int_high: int = 100,
    cudnn_conv_algo_search: str | None = None,
) -> dict[str, Any]:
    """The whole sweep for one model: ``{"provider": ..., "rows": [per batch size ...]}``."""
    session = make_session(path, providers, intra_op_threads, cudnn_conv_algo_search)
    rows = []
    for b in batch_sizes:
        feed = make_inputs(session, b, dim_values, int_high)
        rows.append(measure_batch(session, feed, b, duration_s, warmup_s, callers, io_binding))
    return {
        "model": str(path),
        "provider": session.get_providers()[0],
        "intra_op_threads": intra_op_threads,
        "callers": callers,
        "io_binding": io_binding,
        "cudnn_conv_algo_search": cudnn_conv_algo_search or "onnxruntime default",
        "rows": rows,
    }


def batch_sizes_up_to(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to and including ``max_batch`` (the sizes the sidecar pads batches to)."""
    return powers_of_two_to(max_batch)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_onnxruntime", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="ONNX model file")
    parser.add_argument("--batch-sizes", default="", help="comma separated (default: powers of 2 to --max-batch)")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per batch size")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--providers", default="CPUExecutionProvider", help="comma separated ORT providers")
    parser.add_argument("--intra-op-threads", type=int, default=0, help="0 = ONNX Runtime's default")
    parser.add_argument("--callers", type=int, default=1, help="threads calling run() at once")
    parser.add_argument("--io-binding", action="store_true", help="inputs and outputs stay on the device")
    parser.add_argument("--dim", action="append", default=[], help="NAME=SIZE for a symbolic non-batch dimension")
    parser.add_argument("--int-high", type=int, default=100, help="integer inputs are drawn from [0, this)")
    parser.add_argument(
        "--cudnn-conv-algo-search", choices=("EXHAUSTIVE", "HEURISTIC", "DEFAULT"), help="CUDA provider option"
    )
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.batch_sizes.split(",") if s] or batch_sizes_up_to(args.max_batch)
    providers = [p for p in args.providers.split(",") if p]
    if any(p == "CUDAExecutionProvider" for p in providers):
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
    dims = {k: int(v) for k, _, v in (d.partition("=") for d in args.dim)}
    result = measure(
        args.model,
        sizes,
        duration_s=args.duration,
        warmup_s=args.warmup,
        providers=providers,
        intra_op_threads=args.intra_op_threads,
        callers=args.callers,
        io_binding=args.io_binding,
        dim_values=dims,
        int_high=args.int_high,
        cudnn_conv_algo_search=args.cudnn_conv_algo_search,
    )
    for row in result["rows"]:
        print(
            f"batch {row['batch']:>4}: {row['rows_per_s']:>12,.0f} rows/s {row['calls_per_s']:>10,.0f} calls/s "
            f"p50 {row['p50_ms']:.3f} ms p99 {row['p99_ms']:.3f} ms cpu {row['cpu_us_per_row']:.1f} us/row",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
