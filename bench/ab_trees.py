"""Two checkouts of the sidecar side by side: what a change does to served throughput and CPU.

    git worktree add /tmp/before HEAD~1 && (cd /tmp/before && ../main/.venv/bin/python setup.py -q build_ext --inplace)
    .venv/bin/python -m bench.ab_trees --before /tmp/before --after . --modes full,metrics --rounds 5

Each round starts, per mode, one ``sidecar serve`` from each tree (its own working directory, so each
imports its own ``sidecar`` package and native extensions), all at once, and drives them one at a time
in a shuffled order with the same closed loop (MLP, batch-1 requests, concurrency 64; or ``--rate`` for
an open loop), a settling pause before each. Fresh processes every round (two processes of one
configuration differ by themselves, see ``bench_telemetry.bench_serving``). Reported per mode: the
median of the per-round ratios after/before of requests/s and of the server's CPU per request (its
process tree, and its event loop thread alone). ``--before`` and ``--after`` may be the same tree: the
ratios are then the run's noise floor. Modes are ``bench_telemetry``'s (``off``, ``metrics``, ``full``,
``sampled1``, ...), the OTLP ones exporting to a null collector in this process.

Results: bench/results/ab-trees.json and .md (``--name``).
"""

from __future__ import annotations

import argparse
import random
import shlex
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


def _median_ratio(before: list[float], after: list[float]) -> tuple[float, list[float]]:
    ratios = [b / a for a, b in zip(before, after, strict=True) if a]
    return (statistics.median(ratios) if ratios else float("nan")), [round(r, 3) for r in ratios]


def _settings(parser: argparse.ArgumentParser, pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"a setting is KEY=VALUE, not {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _describe(settings: dict[str, str]) -> str:
    return " with " + ", ".join(f"`{k} = {v}`" for k, v in settings.items()) if settings else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="the checkout measured first (its extensions built in place)")
    p.add_argument("--after", required=True, help="the checkout with the change")
    p.add_argument("--modes", default="full,metrics", help="comma list of bench_telemetry's modes")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rate", type=float, default=0.0, help="requests/s for an open loop instead (0: closed loop)")
    for side in ("before", "after"):
        p.add_argument(
            f"--{side}-setting",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"a configuration key for the {side} side's servers (e.g. server.gc_gen0_threshold=700); repeatable",
        )
    p.add_argument("--name", default="ab-trees")
    p.add_argument("--out", default=str(RESULTS_DIR))
    args = p.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.ab_trees", *(sys.argv[1:] if argv is None else argv)])
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    trees = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    extra = {"before": _settings(p, args.before_setting), "after": _settings(p, args.after_setting)}
    modes = [m for m in args.modes.split(",") if m]
    repo = Path(tempfile.mkdtemp(prefix="ab-trees-")) / "repo"
    write_version(repo, "mlp", "1.0.0", mlp_model)
    payload = loadgen.make_infer_request("mlp", {"input": np.random.default_rng(0).random((1, 64), np.float32)})
    load: dict[str, Any] = {"rate_per_s": args.rate} if args.rate else {"concurrency": args.concurrency}
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    order = random.Random(0)
    with NullCollector() as collector:
        for r in range(args.rounds):
            started_servers: dict[tuple[str, str], servers.ServerProcess] = {}
            try:
                for mode in modes:
                    for which, tree in trees.items():
                        settings = {
                            **mode_settings(mode, collector.endpoint, f"http://127.0.0.1:{servers.free_port()}"),
                            **extra[which],
                        }
                        started_servers[(mode, which)] = servers.start_sidecar(
                            repo, models=["mlp"], settings=settings, name=f"{which}-{mode}", cwd=tree
                        )
                for key in order.sample(list(started_servers), len(started_servers)):
                    srv = started_servers[key]
                    time.sleep(1.0)  # the previous server's export thread drains what its load left
                    result = loadgen.run(
                        srv.target,
                        payload,
                        duration_s=args.duration,
                        warmup_s=0.5,
                        cpu_probes=server_probes(srv),
                        **load,
                    )
                    cell = {
                        "rps": result.rps,
                        "p50_ms": result.latency_ms.get("p50", float("nan")),
                        "server_us": result.cpu_us_per_request("server"),
                        "loop_us": result.cpu_us_per_request("loop"),
                        "errors": result.errors,
                    }
                    runs.setdefault(key, []).append(cell)
                    print(
                        f"round {r} {key[0]} {key[1]}: {result.summary()} loop {cell['loop_us']:.0f} us/req", flush=True
                    )
            finally:
                for srv in started_servers.values():
                    srv.stop()
    rows = []
    for mode in modes:
        before, after = runs[(mode, "before")], runs[(mode, "after")]
        row: dict[str, Any] = {"mode": mode}
        for key, label in (("rps", "rps"), ("server_us", "server"), ("loop_us", "loop")):
            ratio, per_round = _median_ratio([c[key] for c in before], [c[key] for c in after])
            row[f"{label}_before"] = statistics.median(c[key] for c in before)
            row[f"{label}_after"] = statistics.median(c[key] for c in after)
            row[f"{label}_ratio"] = ratio
            row[f"{label}_rounds"] = ", ".join(f"{x:.2f}" for x in per_round)
        row["errors"] = sum(c["errors"] for c in before + after)
        rows.append(row)
    info = machine_info()
    what = f"open loop at {args.rate:g} req/s" if args.rate else f"closed loop at concurrency {args.concurrency}"
    md = "\n".join(
        [
            f"# Two checkouts side by side ({started})",
            "",
            f"Command: `{command}`",
            "",
            f"Before: `{trees['before']}`{_describe(extra['before'])}; after: `{trees['after']}`"
            f"{_describe(extra['after'])}. Machine: {info.get('cpus')} CPUs "
            f"({info.get('cpu_model', '')}), Python {info.get('python')}. MLP, batch-1 requests, {what}, "
            f"{args.duration:g} s cells, {args.rounds} rounds of fresh processes (order shuffled). Ratios: "
            "after / before, the median of the per-round ratios (each round's listed).",
            "",
            markdown_table(
                rows,
                [
                    ("mode", "mode"),
                    ("rps_before", "req/s before"),
                    ("rps_after", "req/s after"),
                    ("rps_ratio", "req/s ratio"),
                    ("rps_rounds", "per round"),
                    ("server_before", "server CPU us/req before"),
                    ("server_after", "after"),
                    ("server_ratio", "ratio"),
                    ("loop_before", "event loop CPU us/req before"),
                    ("loop_after", "after"),
                    ("loop_ratio", "ratio"),
                    ("errors", "errors"),
                ],
            ),
            "",
        ]
    )
    print(md)
    payload_out = {
        "command": command,
        "started": started,
        "machine": info,
        "trees": {k: str(v) for k, v in trees.items()},
        "settings": extra,
    }
    payload_out |= {"rows": rows, "runs": {f"{m}/{w}": v for (m, w), v in runs.items()}}
    save_results(args.name, payload_out, md, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
