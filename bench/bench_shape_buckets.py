"""engine.shape_buckets against a session that re-plans on every change of batch size, on a CPU.

ONNX Runtime's CUDA convolutions build a new plan whenever a node's input shape differs from its
previous run's (101-154 ms per change for ResNet-50 on an H200; microsoft/onnxruntime#23006), and a
batcher's batches change size from run to run. No GPU here, so each of the sidecar's ONNX Runtime
sessions is wrapped (``sidecar.testing.replanning.ReplanningEngines``) in a session that stalls
``--stall-ms`` whenever its batch size changes, and the real server (in this process; the load generator in its
own) serves the MLP at concurrency ``--concurrency`` with each ``shape_buckets`` mode:

- ``off``: batches run at their own sizes (the behaviour before the setting existed);
- ``pad``: padded to powers of two, one session;
- ``sessions``: padded, one session per size (what ``auto`` picks when the probe sees the stall);
- ``auto``: the probe decides (it should pick ``sessions``).

A ``no stall`` row (sessions unwrapped, ``off``) is the ceiling. Modes are measured in rotated
order over ``--rounds`` rounds; the table gives medians.

    .venv/bin/python -m bench.bench_shape_buckets [--stall-ms 20] [--rounds 3] [--duration 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.bench_routing import _mlp_payload
from bench.report import machine_info, markdown_table, save_results
from sidecar.testing.models import mlp_model, write_version
from sidecar.testing.replanning import ReplanningEngines
from sidecar.testing.server import ServerThread, config_for_tests

MODES = ("no stall", "off", "pad", "sessions", "auto")


def measure(repo: Path, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    buckets = "off" if mode == "no stall" else mode
    config = config_for_tests(
        str(repo),
        engine={"shape_buckets": buckets},
        batching={"max_queue_delay_ms": 1.0},
        monitoring={"enabled": False},
        telemetry={"enabled": False},
    )
    stall = ReplanningEngines(args.stall_ms / 1e3) if mode != "no stall" else None
    if stall is not None:
        stall.__enter__()
    try:
        with ServerThread(config) as srv:
            engine = srv.app.repository.get("mlp", "1.0.0").engine
            chose = engine.shape_buckets
            before = stall.replans if stall else 0
            result = loadgen.run(
                srv.url, _mlp_payload(), concurrency=args.concurrency, duration_s=args.duration, warmup_s=1.0
            )
            replans = (stall.replans - before) if stall else 0
            stats = srv.app.repository.get("mlp", "1.0.0").stats
            mean_batch = stats.inference_count / stats.execution_count if stats.execution_count else 0.0
    finally:
        if stall is not None:
            stall.__exit__()
    return {
        "mode": mode,
        "chose": chose,
        "rps": result.rps,
        "p50_ms": result.latency_ms["p50"],
        "p99_ms": result.latency_ms["p99"],
        "errors": result.errors,
        "mean_batch": mean_batch,
        "replans_per_s": replans / (args.duration + 1.0),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_shape_buckets", description=__doc__.splitlines()[0])
    p.add_argument("--stall-ms", type=float, default=20.0, help="simulated re-plan per change of batch size")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--name", default="shape-buckets")
    args = p.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        write_version(repo, "mlp", "1.0.0", mlp_model, {"batching": {"max_batch_size": args.max_batch_size}})
        for r in range(args.rounds):
            order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
            for mode in order:
                row = measure(repo, mode, args)
                runs[mode].append(row)
                print(
                    f"round {r} {mode:>9} (chose {row['chose']}): {row['rps']:,.0f} req/s p50 {row['p50_ms']:.2f} "
                    f"p99 {row['p99_ms']:.2f} ms mean batch {row['mean_batch']:.1f} re-plans/s "
                    f"{row['replans_per_s']:.0f} errors {row['errors']}",
                    flush=True,
                )
    rows = []
    for mode, v in runs.items():
        rows.append(
            {
                "mode": mode,
                "chose": "/".join(sorted({x["chose"] for x in v})),
                "rps": statistics.median(x["rps"] for x in v),
                "p99_ms": statistics.median(x["p99_ms"] for x in v),
                "mean_batch": statistics.median(x["mean_batch"] for x in v),
                "replans_per_s": statistics.median(x["replans_per_s"] for x in v),
                "errors": sum(x["errors"] for x in v),
            }
        )
    table = markdown_table(
        rows,
        (
            ("mode", "engine.shape_buckets"),
            ("chose", "in effect"),
            ("rps", "req/s"),
            ("p99_ms", "p99 ms"),
            ("mean_batch", "mean batch"),
            ("replans_per_s", "re-plans/s"),
            ("errors", "errors"),
        ),
    )
    text = "\n".join(
        [
            f"# engine.shape_buckets against simulated re-planning ({started})",
            "",
            f"Command: `python -m bench.bench_shape_buckets {' '.join(sys.argv[1:] if argv is None else argv)}`",
            "",
            f"MLP, batch-1 requests, closed loop at c={args.concurrency}, max batch {args.max_batch_size}, "
            f"{args.duration:g} s per cell, {args.rounds} rounds in rotated order (medians). Every ONNX Runtime "
            f"session stalls {args.stall_ms:g} ms whenever its batch size changes (a CPU stand-in for ONNX "
            "Runtime's CUDA convolutions; `no stall` is the unwrapped server). Simulated: these are not GPU "
            "numbers.",
            "",
            table,
            "",
        ]
    )
    print(text)
    save_results(args.name, {"started": started, "machine": machine_info(), "runs": runs, "rows": rows}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
