"""What an ingest worker takes off the serving process's event loop (server.ingest_workers).

A sidecar runs in this process (``sidecar.testing.server.ServerThread``) with its relay socket open
and one ingest worker (``sidecar.ingest.worker``) on a port of its own, so that every call sent there
is relayed and every call sent to the sidecar's port is not. The same closed loop (bench/loadgen.py
in a worker process) goes to each in turn, round after round, for two requests: the MLP's (64 float32,
256 bytes) and an image-sized one (float32 1x3x224x224, 602 KB, into a model that averages each
channel: the model costs little, the bytes are what is measured). Reported per cell: requests/s,
p99, and the CPU the serving process's event-loop thread spends per request (``time.thread_time``
read on the loop): the figure that caps one process, since batching, routing and the models'
Python all run on that thread.

On a 2-core machine the worker competes with the load generator and the sidecar for the same cores,
so requests/s say little here; the loop's CPU per request is the point. On a many-core machine
(bench/gpu) the workers run on cores of their own.

    .venv/bin/python -m bench.bench_ingest                    # about 1 minute
    .venv/bin/python -m bench.bench_ingest --rounds 5 --duration 4

Results: bench/results/ingest-relay.json and .md (``--name``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import loadgen
from bench.report import RESULTS_DIR, machine_info, markdown_table, save_results
from bench.servers import free_port
from sidecar.ingest.relay import IngestWorkers
from sidecar.testing.models import mlp_model, write_version
from sidecar.testing.server import ServerThread, config_for_tests

IMAGE = (1, 3, 224, 224)


def channel_means(path: Path) -> Path:
    """An ONNX model averaging each channel of an N x 3 x 224 x 224 float32 image (output N x 3)."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("ReduceMean", ["image"], ["means"], axes=[2, 3], keepdims=0)
    graph = helper.make_graph(
        [node],
        "channel_means",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("means", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


async def _loop_cpu() -> float:
    return time.thread_time()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--name", default="ingest-relay")
    p.add_argument("--out", default=str(RESULTS_DIR))
    args = p.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.bench_ingest", *(sys.argv[1:] if argv is None else argv)])
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    repo = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    write_version(repo, "mlp", "1.0.0", mlp_model)
    write_version(repo, "image", "1.0.0", channel_means)
    rng = np.random.default_rng(0)
    requests = {
        "MLP, 256 B, c=64": (loadgen.make_infer_request("mlp", {"input": rng.random((1, 64), dtype=np.float32)}), 64),
        "image, 602 KB, c=16": (
            loadgen.make_infer_request("image", {"image": rng.random(IMAGE, dtype=np.float32)}),
            16,
        ),
    }
    config = config_for_tests(
        str(repo),
        batching={"enabled": True, "max_batch_size": 64, "max_queue_delay_ms": 2},
        monitoring={"enabled": False},
    )
    cells: dict[tuple[str, str], list[dict[str, float]]] = {}
    with ServerThread(config) as srv:
        relay = IngestWorkers(
            0, srv.app.register_inference, srv.app.stream_message, "127.0.0.1", config.server.max_message_bytes
        )
        srv.call(relay.start(srv.app.grpc_port))
        port = free_port()
        argv_ = relay.argv(0)
        argv_[argv_.index("--port") + 1] = str(port)
        worker = subprocess.Popen(argv_, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.5)
            targets = {"direct to the sidecar": srv.url, "through an ingest worker": f"127.0.0.1:{port}"}
            for r in range(args.rounds):
                for what, (payload, concurrency) in requests.items():
                    order = list(targets.items()) if r % 2 == 0 else list(targets.items())[::-1]
                    for path, target in order:
                        before, relayed = srv.call(_loop_cpu()), relay.relayed
                        result = loadgen.run(
                            target,
                            payload,
                            concurrency=concurrency,
                            duration_s=args.duration,
                            warmup_s=args.warmup,
                            processes=1,
                            channels=4,
                        )
                        loop_s = srv.call(_loop_cpu()) - before
                        sent = result.requests / args.duration * (args.duration + args.warmup)  # warm-up too
                        cell = {
                            "rps": result.rps,
                            "p99_ms": result.latency_ms["p99"],
                            "loop_us": loop_s / sent * 1e6,
                            "errors": result.errors,
                            "relayed": relay.relayed - relayed,
                        }
                        cells.setdefault((what, path), []).append(cell)
                        print(
                            f"round {r} {what} {path}: {cell['rps']:,.0f} req/s p99 {cell['p99_ms']:.1f} ms "
                            f"loop {cell['loop_us']:.0f} us/req errors {cell['errors']}",
                            flush=True,
                        )
        finally:
            worker.terminate()
            worker.wait(10)
            srv.call(relay.stop())
    rows: list[dict[str, Any]] = []
    for (what, path), runs in cells.items():
        rows.append(
            {
                "request": what,
                "path": path,
                "rps": statistics.median(c["rps"] for c in runs),
                "p99_ms": statistics.median(c["p99_ms"] for c in runs),
                "loop_us": statistics.median(c["loop_us"] for c in runs),
                "errors": sum(c["errors"] for c in runs),
            }
        )
    for row in rows:
        direct = next(r for r in rows if r["request"] == row["request"] and r["path"].startswith("direct"))
        row["loop_vs_direct"] = row["loop_us"] / direct["loop_us"]
    info = machine_info()
    md = "\n".join(
        [
            f"# Ingest relay: the serving loop's CPU per request, direct and relayed ({started})",
            "",
            f"Command: `{command}`",
            "",
            f"Machine: {info.get('cpus')} CPUs ({info.get('cpu_model', '')}), Python {info.get('python')}. "
            f"Medians of {args.rounds} rounds (order alternated), {args.duration:g} s per cell; batching on "
            "(max batch 64, max queue delay 2 ms), monitoring off, telemetry metrics on.",
            "",
            markdown_table(
                rows,
                [
                    ("request", "request"),
                    ("path", "path"),
                    ("rps", "req/s"),
                    ("p99_ms", "p99 ms"),
                    ("loop_us", "serving loop CPU us/req"),
                    ("loop_vs_direct", "x direct"),
                    ("errors", "errors"),
                ],
            ),
            "",
        ]
    )
    print(md)
    save_results(args.name, {"command": command, "started": started, "machine": info, "rows": rows}, md, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
