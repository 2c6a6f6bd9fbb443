"""Serve ONNX models with PyTriton (Triton Inference Server driving a Python callable) and its dynamic batcher.

Runs inside PyTriton's virtualenv (bench/.venvs/pytriton), as its own process::

    python bench/peers/pytriton_onnx.py --grpc-port 8001 --model mlp=/path/mlp.onnx \\
        --model tabular=/path/tabular.onnx --max-batch-size 64 --max-queue-delay-us 1000

Each model's callable, decorated with PyTriton's ``@batch``, runs an ONNX Runtime session on the
batch Triton formed. Tensor shapes come from the ONNX graph (the first dimension is the batch); a
per-row scalar output (shape ``[batch]``) is declared as ``(1,)`` and reshaped, as Triton wants at
least one dimension per row. Triton's Python backend links libpython: put the virtualenv's own
``libpython3.x.so`` directory first on ``LD_LIBRARY_PATH`` (bench.servers' PyTriton starter does).
Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _row_shape(shape: Sequence[object]) -> tuple[int, ...]:
    rest = tuple(d if isinstance(d, int) and d > 0 else -1 for d in list(shape)[1:])
    return rest or (1,)


def make_model(path: Path, intra_op_threads: int, providers: Sequence[str]):
    """(infer_func, inputs, outputs) for one ONNX model."""
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import Tensor

    options = ort.SessionOptions()
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    ins = session.get_inputs()
    outs = session.get_outputs()
    inputs = [Tensor(name=i.name, dtype=_ORT_TO_NUMPY[i.type], shape=_row_shape(i.shape)) for i in ins]
    outputs = [Tensor(name=o.name, dtype=_ORT_TO_NUMPY[o.type], shape=_row_shape(o.shape)) for o in outs]
    output_names = [o.name for o in outs]
    scalar_rows = {o.name for o in outs if len(o.shape) == 1}

    @batch
    def infer(**feed: np.ndarray) -> dict[str, np.ndarray]:
        results = session.run(output_names, feed)
        out = {}
        for name, array in zip(output_names, results, strict=True):
            out[name] = array.reshape(-1, 1) if name in scalar_rows else array
        return out

    return infer, inputs, outputs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="PyTriton server for ONNX models (benchmark peer)")
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH of an ONNX model")
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay-us", type=int, default=1000, help="0 with --no-batching")
    parser.add_argument("--no-batching", action="store_true", help="no dynamic batcher")
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--providers", default="CPUExecutionProvider", help="comma separated ORT providers")
    parser.add_argument("--instances", type=int, default=1, help="model instances (callables) per model")
    args = parser.parse_args(argv)

    from pytriton.model_config import DynamicBatcher, ModelConfig
    from pytriton.triton import Triton, TritonConfig

    config = TritonConfig(
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_address="127.0.0.1",
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        allow_metrics=False,
        allow_gpu_metrics=False,
        allow_cpu_metrics=False,
        log_verbose=0,
    )
    providers = [p for p in args.providers.split(",") if p]
    with Triton(config=config) as triton:
        for spec in args.model:
            name, _, path = spec.partition("=")
            funcs = []
            inputs = outputs = None
            for _ in range(max(1, args.instances)):
                fn, inputs, outputs = make_model(Path(path), args.intra_op_threads, providers)
                funcs.append(fn)
            batcher = None if args.no_batching else DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us)
            triton.bind(
                model_name=name,
                infer_func=funcs if len(funcs) > 1 else funcs[0],
                inputs=inputs,
                outputs=outputs,
                config=ModelConfig(max_batch_size=args.max_batch_size, batcher=batcher, batching=True),
            )
        # serve() stops Triton cleanly on KeyboardInterrupt: make SIGTERM raise it too.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
