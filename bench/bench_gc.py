"""What the cyclic garbage collector costs a served sidecar, at Python's threshold and at the sidecar's.

Per round, one ``sidecar serve`` per (mode, ``server.gc_gen0_threshold``), fresh processes, all started
at once and loaded one at a time in a shuffled order (closed loop, MLP, concurrency 64); inside each
server ``bench/gc_probe`` times every collection (``gc.callbacks``). Reported per cell: req/s, event
loop CPU per request, and the collections per 1,000 requests and their time per request, by
generation (medians over the rounds); modes are ``bench_telemetry``'s (``off``, ``full``, ...).

    .venv/bin/python -m bench.bench_gc --modes off,full --thresholds 700,10000 --rounds 4

Results: bench/results/gc.json and .md (``--name``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import loadgen, servers
from bench.bench_telemetry import NullCollector, mode_settings, server_probes
from bench.report import RESULTS_DIR, machine_info, markdown_table, save_results
from sidecar.testing.models import mlp_model, write_version

PROBE = Path(__file__).resolve().parent / "gc_probe"


def snapshot(server: servers.ServerProcess, path: Path, timeout_s: float = 5.0) -> dict[str, Any]:
    """The probe's counts now: SIGUSR1 to the server, then its file once rewritten."""
    before = json.loads(path.read_text())["snapshot"] if path.exists() else -1
    os.kill(server.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            got = json.loads(path.read_text())
        except (OSError, ValueError):
            got = None
        if got is not None and got["snapshot"] > before:
            return got
        time.sleep(0.02)
    raise RuntimeError(f"the GC probe of {server.name} did not answer")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="off,full")
    p.add_argument("--thresholds", default="700,10000", help="server.gc_gen0_threshold values (700: Python's)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--name", default="gc")
    p.add_argument("--out", default=str(RESULTS_DIR))
    args = p.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.bench_gc", *(sys.argv[1:] if argv is None else argv)])
    modes = [m for m in args.modes.split(",") if m]
    thresholds = [int(t) for t in args.thresholds.split(",") if t]
    work = Path(tempfile.mkdtemp(prefix="bench-gc-"))
    repo = work / "repo"
    write_version(repo, "mlp", "1.0.0", mlp_model)
    payload = loadgen.make_infer_request("mlp", {"input": np.random.default_rng(0).random((1, 64), np.float32)})
    cells: dict[tuple[str, int], list[dict[str, float]]] = {}
    order = random.Random(0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROBE), os.environ.get("PYTHONPATH", "")])}
    with NullCollector() as collector:
        for r in range(args.rounds):
            started: dict[tuple[str, int], tuple[servers.ServerProcess, Path]] = {}
            try:
                for mode in modes:
                    for threshold in thresholds:
                        probe = work / f"gc-{mode}-{threshold}-{r}.json"
                        settings = {
                            **mode_settings(mode, collector.endpoint, f"http://127.0.0.1:{servers.free_port()}"),
                            "server.gc_gen0_threshold": threshold,
                        }
                        srv = servers.start_sidecar(
                            repo,
                            models=["mlp"],
                            settings=settings,
                            env={**env, "SIDECAR_GC_PROBE": str(probe)},
                            name=f"{mode}-{threshold}",
                        )
                        started[(mode, threshold)] = (srv, probe)
                for key in order.sample(list(started), len(started)):
                    srv, probe = started[key]
                    time.sleep(1.0)
                    loadgen.run(srv.target, payload, concurrency=args.concurrency, duration_s=0.5, warmup_s=0.0)
                    before = snapshot(srv, probe)
                    result = loadgen.run(
                        srv.target,
                        payload,
                        concurrency=args.concurrency,
                        duration_s=args.duration,
                        warmup_s=0.0,
                        cpu_probes=server_probes(srv),
                    )
                    after = snapshot(srv, probe)
                    n = max(result.requests, 1)
                    cell = {"rps": result.rps, "loop_us": result.cpu_us_per_request("loop"), "errors": result.errors}
                    for g in range(3):
                        cell[f"gen{g}_per_1000"] = 1000.0 * (after["n"][g] - before["n"][g]) / n
                        cell[f"gen{g}_us"] = (after["ns"][g] - before["ns"][g]) / n / 1000.0
                    cell["gc_us"] = sum(cell[f"gen{g}_us"] for g in range(3))
                    cells.setdefault(key, []).append(cell)
                    print(
                        f"round {r} {key[0]} threshold {key[1]}: {result.rps:,.0f} req/s, loop "
                        f"{cell['loop_us']:.0f} us/req, gc {cell['gc_us']:.2f} us/req "
                        f"({cell['gen0_per_1000']:.1f} young collections per 1,000 requests)",
                        flush=True,
                    )
            finally:
                for srv, _ in started.values():
                    srv.stop()
    rows = []
    for (mode, threshold), got in cells.items():
        row: dict[str, Any] = {"mode": mode, "threshold": threshold}
        for key in got[0]:
            row[key] = statistics.median(c[key] for c in got) if key != "errors" else sum(c[key] for c in got)
        rows.append(row)
    rows.sort(key=lambda x: (modes.index(x["mode"]), x["threshold"]))
    info = machine_info()
    md = "\n".join(
        [
            f"# The cyclic garbage collector while serving ({time.strftime('%Y-%m-%d %H:%M:%S')})",
            "",
            f"Command: `{command}`",
            "",
            f"Machine: {info.get('cpus')} CPUs ({info.get('cpu_model', '')}), Python {info.get('python')}. MLP, "
            f"batch-1 requests, closed loop at concurrency {args.concurrency}, {args.duration:g} s cells, "
            f"{args.rounds} rounds of fresh processes; medians over the rounds. GC time from `gc.callbacks` "
            "inside each server (`bench/gc_probe`).",
            "",
            markdown_table(
                rows,
                [
                    ("mode", "mode"),
                    ("threshold", "gen-0 threshold"),
                    ("rps", "req/s"),
                    ("loop_us", "event loop CPU us/req"),
                    ("gen0_per_1000", "gen-0 collections / 1,000 req"),
                    ("gen1_per_1000", "gen-1 / 1,000"),
                    ("gen2_per_1000", "gen-2 / 1,000"),
                    ("gc_us", "GC us/req"),
                    ("gen0_us", "gen-0 us/req"),
                    ("errors", "errors"),
                ],
            ),
        ]
    )
    print(md)
    save_results(
        args.name,
        {"command": command, "machine": info, "rows": rows, "cells": {f"{m}/{t}": v for (m, t), v in cells.items()}},
        md,
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
