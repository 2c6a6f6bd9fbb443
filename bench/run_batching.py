"""Side by side, one session, one machine, the same models and the same load generator:

1. raw in-process ONNX Runtime at batch sizes 1..max (the ceiling of the model itself);
2. a bare grpc.aio server answering ModelInfer with the model's real response bytes (the ceiling of
   Python gRPC on this box), and the same server parsing each request and serialising the response
   with protobuf (the ceiling of any Python server that looks at the request); and the same answer
   from a bare C++ gRPC server (``echo-native``, bench/native_echo: gRPC's own cost without Python);
3. the sidecar with batching off and with batching on;
4. MLServer 1.7.1 (bench/peers/mlserver_onnx.py runtime) with and without adaptive batching, with
   ``parallel_workers`` 1 (its default) and 0;
5. PyTriton (Triton 2.51 driving a Python callable) with its dynamic batcher.

Every server runs as its own process; the load generator (bench/loadgen.py) runs in a worker process
of its own, batch-1 requests, closed loop at each concurrency, plus one open-loop run at a fixed
rate per server for the MLP (latency at equal offered load). Server CPU per request is the server
process tree's CPU time over the measured window divided by the requests completed in it.

    .venv/bin/python -m bench.run_batching            # full run, under 10 minutes with all peers
    .venv/bin/python -m bench.run_batching --quick    # about 2 minutes: MLP only, c=1 and 64, short cells

Peers need their virtualenvs (bench/peers/setup_venvs.sh); a peer that is missing or fails to start
is reported as skipped with the reason, and the run goes on. Results: bench/results/<name>.json and
<name>.md (default name "batching", "batching-quick" with --quick).

The models and servers under test are in bench/batching_setup.py, the record and its report in
bench/batching_report.py; this module runs the session.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import loadgen, servers
from bench.batching_report import Cell, RunRecord, render, targets
from bench.batching_setup import (
    DEFAULT_SERVERS,
    SERVERS,
    Context,
    ServerSpec,
    batch1_input,
    build_models,
    real_response,
)
from bench.profiling import profile_cell
from bench.report import RESULTS_DIR, machine_info, save_results

# --------------------------------------------------------------------------------------------------
# The run


def run_raw(ctx: Context) -> dict[str, Any]:
    """Raw ONNX Runtime for each model, in a subprocess (its threads and memory stay out of this one)."""
    out: dict[str, Any] = {}
    args = ctx.args
    sizes = ",".join(str(b) for b in args.raw_batch_sizes)
    for name, model in ctx.models.items():
        json_path = ctx.workdir / f"raw-{name}.json"
        cmd = [
            sys.executable,
            "-m",
            "bench.raw_onnxruntime",
            str(model.path),
            "--batch-sizes",
            sizes,
            "--duration",
            str(args.raw_duration),
            "--warmup",
            "0.3",
            "--intra-op-threads",
            str(args.intra_op_threads),
            "--json",
            str(json_path),
        ]
        print(f"[raw onnxruntime] {name}", flush=True)
        subprocess.run(cmd, check=True, cwd=servers.REPO_ROOT, timeout=600)
        out[name] = json.loads(json_path.read_text())
    return out


def measure_server(ctx: Context, spec: ServerSpec, record: RunRecord, round_no: int = 0) -> None:
    args = ctx.args
    began = time.monotonic()
    try:
        started = spec.start(ctx)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(f"[{spec.key}] skipped: {reason}", flush=True)
        record.skipped[spec.key] = reason
        return
    by_model = started if isinstance(started, dict) else dict.fromkeys(ctx.models, started)
    try:  # from here on, whatever happens, the servers started are stopped
        record.startup_s[spec.key] = round(time.monotonic() - began, 2)
        for name, model in ctx.models.items():
            server = by_model[name]
            payload = loadgen.make_infer_request(name, {model.input_name: batch1_input(model)})
            try:
                response = asyncio.run(loadgen.check_target(server.target, payload, timeout_s=30))
            except Exception as exc:
                record.skipped[f"{spec.key}/{name}"] = f"first request failed: {exc}"
                print(f"[{spec.key}] {name}: first request failed: {exc}", flush=True)
                continue
            loads: list[dict[str, Any]] = [{"concurrency": c} for c in args.concurrency]
            if name == "mlp" and args.rate > 0:
                loads.append({"rate_per_s": args.rate})
            for load in loads:
                stats_before = (
                    servers.model_statistics(server.target, name) if not spec.key.startswith("echo") else None
                )
                result = loadgen.run(
                    server.target,
                    payload,
                    duration_s=args.duration,
                    warmup_s=args.warmup,
                    processes=args.processes,
                    cpu_probes=_cpu_probes(spec, server),
                    labels={"server": spec.key, "model": name},
                    **load,
                )
                stats_after = servers.model_statistics(server.target, name) if stats_before is not None else None
                mean_batch = servers.mean_batch(stats_before, stats_after)
                record.cells.append(Cell(spec.key, name, result, mean_batch, len(response), round_no))
                extra = f" mean batch {mean_batch:.1f}" if mean_batch else ""
                print(f"[{spec.key}] {name} {result.summary()}{extra}", flush=True)
            if args.profile and spec.key.startswith("sidecar") and name == "mlp" and round_no == 0:
                # One more cell with py-spy attached: kept out of the tables, since py-spy takes CPU of its own.
                record.profiles[spec.key] = profile_cell(
                    server,
                    payload,
                    ctx.workdir / f"pyspy-{server.name}.txt",
                    concurrency=max(args.concurrency),
                    duration_s=args.duration,
                    warmup_s=args.warmup,
                    processes=args.processes,
                    label=f"[{server.name}]",
                    executable=args.py_spy,
                )
    finally:
        for s in {id(s): s for s in by_model.values()}.values():
            s.stop()


def _cpu_probes(spec: ServerSpec, server: servers.ServerProcess) -> dict[str, Callable[[], float]]:
    """Whole-process CPU for every server; for our own single-process grpc.aio servers also the event loop's
    thread, where every request's Python runs (the first thing to saturate). (The C++ echo has no loop.)"""
    probes: dict[str, Callable[[], float]] = {"server": server.cpu_seconds}
    if spec.key.startswith(("echo", "sidecar")) and spec.key != "echo-native":
        pid = server.pid
        probes["loop"] = lambda: servers.thread_cpu(pid).get("main", math.nan)
    return probes


# --------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run_batching", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="about 2 minutes: MLP only, c=1,64, short cells")
    p.add_argument("--models", help="comma separated: mlp,tabular (default both; --quick: mlp)")
    p.add_argument("--servers", help=f"comma separated from {','.join(SERVERS)} (default all but pytriton) or 'all'")
    p.add_argument("--concurrency", help="comma separated closed-loop concurrencies (default 1,16,64)")
    p.add_argument("--rate", type=float, help="open-loop requests/s for the MLP on every server (0 = none)")
    p.add_argument("--duration", type=float, help="measured seconds per cell (default 5; --quick 2)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per cell (default 1; --quick 0.5)")
    p.add_argument("--processes", type=int, default=1, help="load generator worker processes")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every server this many times, order rotated; targets judged on the rounds' median",
    )
    p.add_argument("--intra-op-threads", type=int, default=1, help="ONNX Runtime intra-op threads, every server")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-queue-delay-ms", type=float, default=1.0)
    p.add_argument("--raw-duration", type=float, help="raw ONNX Runtime seconds per batch size (default 1)")
    p.add_argument("--sidecar-setting", action="append", default=[], help="extra sidecar KEY=VALUE (both variants)")
    p.add_argument("--name", help="results file stem (default batching / batching-quick)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="results folder")
    p.add_argument("--note", default="", help="a note printed at the top of the Markdown (e.g. 'noisy machine')")
    p.add_argument("--profile", action="store_true", help="py-spy the sidecar (MLP, top concurrency)")
    p.add_argument("--py-spy", help="path of the py-spy executable (default: PATH, then beside this Python)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the generated models and logs")
    args = p.parse_args(argv)
    quick = args.quick
    args.models = [m for m in (args.models or ("mlp" if quick else "mlp,tabular")).split(",") if m]
    chosen = args.servers or ",".join(DEFAULT_SERVERS)
    args.servers = list(SERVERS) if chosen == "all" else [s for s in chosen.split(",") if s]
    unknown = [s for s in args.servers if s not in SERVERS]
    if unknown:
        p.error(f"unknown server(s) {unknown}; choose from {list(SERVERS)}")
    args.concurrency = [int(c) for c in (args.concurrency or ("1,64" if quick else "1,16,64")).split(",") if c]
    args.rate = (0.0 if quick else 1000.0) if args.rate is None else args.rate
    args.duration = args.duration or (2.0 if quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if quick else 1.0)
    args.raw_duration = args.raw_duration or (0.5 if quick else 1.0)
    from bench.raw_onnxruntime import batch_sizes_up_to

    args.raw_batch_sizes = [1, 8, args.max_batch_size] if quick else batch_sizes_up_to(args.max_batch_size)
    args.name = args.name or ("batching-quick" if quick else "batching")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    command = shlex.join(["python", "-m", "bench.run_batching", *(sys.argv[1:] if argv is None else argv)])
    workdir = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    began = time.monotonic()
    record = RunRecord()
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    try:
        models = build_models(workdir, args.models)
        response_files = {}
        for name, model in models.items():
            path = workdir / f"response-{name}.bin"
            path.write_bytes(real_response(model, batch1_input(model)))
            response_files[name] = path
        ctx = Context(args, workdir, models, response_files, workdir / "logs")
        record.raw = run_raw(ctx)
        for r in range(args.rounds):
            # Each round starts one server further on, so that no server is always first after the raw
            # sweep, or always right after the same neighbour.
            shift = r % len(args.servers)
            for key in args.servers[shift:] + args.servers[:shift]:
                if key in record.skipped:
                    continue
                print(
                    f"[{key}] starting" + (f" (round {r + 1} of {args.rounds})" if args.rounds > 1 else ""), flush=True
                )
                try:
                    measure_server(ctx, SERVERS[key], record, r)
                except Exception as exc:  # one broken peer must not lose the others' numbers
                    traceback.print_exc()
                    record.skipped[key] = f"{type(exc).__name__}: {exc}"
        meta = {
            "started": started,
            "command": command,
            "elapsed_s": round(time.monotonic() - began, 1),
            "loadavg_start": loadavg_start,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "machine": machine_info(),
        }
        payload = {
            **meta,
            "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
            "raw_onnxruntime": record.raw,
            "cells": [
                {
                    **c.result.to_dict(),
                    "server": c.server,
                    "model": c.model,
                    "mean_batch": c.mean_batch,
                    "round": c.round,
                }
                for c in record.cells
            ],
            "targets": targets(record),
            "skipped": record.skipped,
            "startup_s": record.startup_s,
            "profiles": record.profiles,
        }
        json_path, md_path = save_results(args.name, payload, render(ctx, record, meta), args.out)
        print(f"wrote {json_path} and {md_path} in {meta['elapsed_s']:.0f} s", flush=True)
    finally:
        if args.keep_workdir:
            print(f"kept {workdir}")
        else:
            import shutil

            with contextlib.suppress(OSError):
                shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
