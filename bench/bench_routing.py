"""Routing, shadow mirroring and upstream proxy costs, measured against the issue's targets.

1. **decision**: the routing decision alone (``Router.decide``: sticky hash, bisect, version lookup,
   shadow sampling: the code ``dispatch`` runs) in-process over a real repository. Target < 5 us.
2. **shadow**: one ``sidecar serve`` process (MLP 64-256-256-10, versions 1.0.0 and 1.1.0), closed
   loop at concurrency 64 (bench/loadgen.py, one worker process), alternating the policy through the
   control API on the same warm server: no shadow / 1.1.0 mirrors 100 % / a shadow that sleeps one
   second per request (a fake upstream, ``sidecar.testing.upstream``) mirrors 100 %. Targets: shadow
   on costs <= 5 % of p99 and <= 10 % of req/s; the sleeping shadow changes p99 by no more than that.
3. **proxy**: concurrency 1, p50 latency calling an upstream sidecar directly versus through a second
   sidecar whose version is ``upstream.json`` -> the first. Target: <= 0.5 ms added at p50.

    .venv/bin/python -m bench.bench_routing                 # about 2.5 minutes
    .venv/bin/python -m bench.bench_routing --duration 5 --rounds 1 --only decision,shadow

Each mode runs ``--rounds`` times interleaved (off, on, slow, off, on, slow, ...) and the median is
reported, because the machine is shared. Results: bench/results/routing.json and routing.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench import loadgen, servers
from bench.report import machine_info, markdown_table, save_results
from sidecar.testing.models import mlp_model, write_version

TARGET_DECISION_US = 5.0
TARGET_P99_PCT = 5.0
TARGET_RPS_PCT = 10.0
TARGET_PROXY_MS = 0.5


def bench_decision(workdir: Path, n: int = 200_000) -> dict[str, Any]:
    from sidecar.config import SidecarConfig
    from sidecar.engine.repository import Repository
    from sidecar.routing.policy import CompiledPolicy, TrafficPolicy
    from sidecar.routing.router import Router
    from sidecar.types import InferenceRequest

    repo = workdir / "decision"
    for i, v in enumerate(("1.0.0", "1.1.0", "1.2.0")):
        write_version(repo, "mlp", v, mlp_model, seed=i, hidden=16)
    config = SidecarConfig.load(
        None, overrides={"repository.path": str(repo), "engine.providers": ["CPUExecutionProvider"]}, environ={}
    )
    with ThreadPoolExecutor(2) as pool:
        repository = Repository(config, pool)
        asyncio.run(repository.load_all())
        router = Router(repository)
        router.install(
            "mlp",
            CompiledPolicy.compile(
                TrafficPolicy.build("mlp", [("1.0.0", 900), ("1.1.0", 100)], [("1.2.0", 100)], "1.0.0")
            ),
        )
        x = {"input": np.zeros((1, 64), np.float32)}
        keyed = [InferenceRequest("mlp", "", "", x, routing_key=f"user-{i}") for i in range(n)]
        unkeyed = [InferenceRequest("mlp", "", "", x) for _ in range(n)]
        out: dict[str, Any] = {}
        for label, requests in (("sticky key", keyed), ("no key (random)", unkeyed)):
            start = time.perf_counter_ns()
            for r in requests:
                router.decide(r)
            out[label] = (time.perf_counter_ns() - start) / n / 1e3
    return out


def _mlp_payload() -> bytes:
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    return loadgen.make_infer_request("mlp", {"input": x})


def _set_policy(control: str, weights: list[tuple[str, float]], shadows: list[tuple[str, float]]) -> None:
    from sidecar.protocol.routing_client import RoutingClient

    with RoutingClient(control) as client:
        client.set_policy("mlp", weights, shadows, actor="bench_routing")


def _shadow_report(control: str) -> dict[str, Any]:
    from sidecar.protocol.routing_client import RoutingClient

    with RoutingClient(control) as client:
        return {
            r.version: {"mirrored": r.total.mirrored, "dropped": r.total.dropped, "completed": r.total.completed}
            for r in client.shadow_report("mlp")
        }


def bench_shadow(workdir: Path, duration_s: float, rounds: int, concurrency: int) -> dict[str, Any]:
    from sidecar.testing.upstream import FakeUpstream
    from sidecar.types import TensorSpec

    repo = workdir / "shadow"
    write_version(repo, "mlp", "1.0.0", mlp_model, seed=0)
    write_version(repo, "mlp", "1.1.0", mlp_model, seed=1)
    slow = FakeUpstream(
        "mlp",
        delay_s=1.0,
        inputs=(TensorSpec("input", "FP32", (-1, 64)),),
        outputs=(TensorSpec("probabilities", "FP32", (-1, 10)), TensorSpec("label", "INT64", (-1,))),
        compute=lambda inp: {
            "probabilities": np.full((inp["input"].shape[0], 10), 0.1, np.float32),
            "label": np.zeros(inp["input"].shape[0], np.int64),
        },
    ).start()
    (repo / "mlp" / "2.0.0").mkdir(parents=True)
    (repo / "mlp" / "2.0.0" / "upstream.json").write_text(json.dumps({"target": slow.target, "retries": 0}))
    control_port = servers.free_port()
    modes = {
        "no shadow": ([("1.0.0", 100.0)], []),
        "shadow 1.1.0 100%": ([("1.0.0", 100.0)], [("1.1.0", 100.0)]),
        "sleeping shadow 100%": ([("1.0.0", 100.0)], [("2.0.0", 100.0)]),
    }
    payload = _mlp_payload()
    cells: dict[tuple[str, str], list[tuple[loadgen.Result, dict[str, Any]]]] = {}
    try:
        with servers.start_sidecar(
            repo, models=["mlp"], extra_args=["--control-port", str(control_port)], name="sidecar-routing"
        ) as server:
            control = f"127.0.0.1:{control_port}"

            def cell(load: str, r: int, **offered: Any) -> None:
                for mode, (weights, shadows) in modes.items():
                    _set_policy(control, weights, shadows)  # a new shadow starts fresh statistics
                    result = loadgen.run(
                        server.target,
                        payload,
                        duration_s=duration_s,
                        warmup_s=1.0,
                        cpu_probes={"server": server.cpu_seconds},
                        labels={"mode": mode, "round": r, "load": load},
                        **offered,
                    )
                    report = _shadow_report(control)
                    cells.setdefault((load, mode), []).append((result, report))
                    copies = "; ".join(f"{v}: {c}" for v, c in report.items())
                    print(f"  {load} {mode:22s} round {r}: {result.summary()} {copies}", flush=True)

            closed = f"closed c={concurrency}"
            for r in range(rounds):
                cell(closed, r, concurrency=concurrency)
            base_rps = statistics.median(res.rps for res, _ in cells[(closed, "no shadow")])
            rate = max(50.0, round(base_rps * 0.4, -1))
            opened = f"open {rate:.0f}/s"
            for r in range(rounds):
                cell(opened, r, rate_per_s=rate)
    finally:
        slow.stop()
    rows = []
    for (load, mode), results in cells.items():
        res = [x for x, _ in results]
        copies = [next(iter(rep.values()), {}) for _, rep in results]
        rows.append(
            {
                "load": load,
                "mode": mode,
                "rps": statistics.median(x.rps for x in res),
                "p50_ms": statistics.median(x.latency_ms.get("p50", float("nan")) for x in res),
                "p99_ms": statistics.median(x.latency_ms.get("p99", float("nan")) for x in res),
                "errors": sum(x.errors for x in res),
                "server_cpu_us": statistics.median(x.cpu_us_per_request("server") for x in res),
                "shadow_mirrored": statistics.median(c.get("mirrored", 0) for c in copies) if copies[0] else None,
                "shadow_completed": statistics.median(c.get("completed", 0) for c in copies) if copies[0] else None,
                "shadow_dropped": statistics.median(c.get("dropped", 0) for c in copies) if copies[0] else None,
            }
        )
    base = {row["load"]: row for row in rows if row["mode"] == "no shadow"}
    for row in rows:
        b = base[row["load"]]
        row["rps_change_pct"] = _pct(row["rps"], b["rps"])
        row["p99_change_pct"] = _pct(row["p99_ms"], b["p99_ms"])
    return {"rows": rows, "runs": {f"{k[0]} / {k[1]}": [x.to_dict() for x, _ in v] for k, v in cells.items()}}


def bench_proxy(workdir: Path, duration_s: float, rounds: int) -> dict[str, Any]:
    upstream_repo = workdir / "proxy-upstream"
    write_version(upstream_repo, "mlp", "1.0.0", mlp_model, seed=0)
    payload = _mlp_payload()
    direct_runs, proxy_runs = [], []
    with servers.start_sidecar(upstream_repo, models=["mlp"], name="sidecar-upstream") as upstream:
        proxy_repo = workdir / "proxy"
        (proxy_repo / "mlp" / "1.0.0").mkdir(parents=True)
        (proxy_repo / "mlp" / "1.0.0" / "upstream.json").write_text(json.dumps({"target": upstream.target}))
        settings = {"batching.enabled": False}  # forward each request as it comes (no proxy-side queue)
        with servers.start_sidecar(proxy_repo, models=["mlp"], settings=settings, name="sidecar-proxy") as proxy:
            for r in range(rounds):
                for label, target, sink in (
                    ("direct", upstream.target, direct_runs),
                    ("proxy", proxy.target, proxy_runs),
                ):
                    result = loadgen.run(target, payload, concurrency=1, duration_s=duration_s, warmup_s=1.0)
                    sink.append(result)
                    print(f"  {label:6s} round {r}: {result.summary()}", flush=True)
    direct_p50 = statistics.median(x.latency_ms["p50"] for x in direct_runs)
    proxy_p50 = statistics.median(x.latency_ms["p50"] for x in proxy_runs)
    return {
        "direct_p50_ms": direct_p50,
        "proxy_p50_ms": proxy_p50,
        "added_p50_ms": proxy_p50 - direct_p50,
        "runs": {"direct": [x.to_dict() for x in direct_runs], "proxy": [x.to_dict() for x in proxy_runs]},
    }


def _pct(new: float, base: float) -> float:
    return (new - base) / base * 100 if base else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per load run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of each mode")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--only", default="decision,shadow,proxy", help="comma-separated parts to run")
    parser.add_argument("--name", default="routing", help="results file name under bench/results")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    payload: dict[str, Any] = {"machine": machine_info(), "args": vars(args)}
    lines = [
        "# Routing, shadow and proxy benchmark",
        "",
        "Shared machine: numbers are noisy; compare within a run.",
        "",
    ]
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as tmp:
        workdir = Path(tmp)
        if "decision" in parts:
            print("== routing decision (in-process)", flush=True)
            decision = bench_decision(workdir)
            payload["decision_us"] = decision
            for label, us in decision.items():
                verdict = us < TARGET_DECISION_US
                ok &= verdict
                mark = "ok" if verdict else "MISSED"
                print(f"  {label}: {us:.2f} us per decision (target < {TARGET_DECISION_US} us) {mark}")
            lines += ["## Routing decision", ""]
            lines += [f"- {k}: {v:.2f} us per request (target < {TARGET_DECISION_US} us)" for k, v in decision.items()]
            lines.append("")
        if "shadow" in parts:
            print(f"== shadow mirroring at concurrency {args.concurrency}", flush=True)
            shadow = bench_shadow(workdir, args.duration, args.rounds, args.concurrency)
            payload["shadow"] = shadow
            rows = shadow["rows"]
            for row in rows:
                if row["mode"] == "no shadow":
                    continue
                verdict = row["p99_change_pct"] <= TARGET_P99_PCT and row["rps_change_pct"] >= -TARGET_RPS_PCT
                if row["load"].startswith("closed"):
                    ok &= verdict
                print(
                    f"  {row['load']} {row['mode']}: p99 {row['p99_change_pct']:+.1f} % "
                    f"(target <= +{TARGET_P99_PCT} %), "
                    f"req/s {row['rps_change_pct']:+.1f} % (target >= -{TARGET_RPS_PCT} %); shadow answered "
                    f"{row['shadow_completed']} of {row['shadow_mirrored']} queued, {row['shadow_dropped']} dropped "
                    f"{'ok' if verdict else 'MISSED'}"
                )
            cols = [
                ("load", "load"),
                ("mode", "mode"),
                ("rps", "req/s"),
                ("rps_change_pct", "req/s change %"),
                ("p50_ms", "p50 ms"),
                ("p99_ms", "p99 ms"),
                ("p99_change_pct", "p99 change %"),
                ("server_cpu_us", "server CPU us/req"),
                ("shadow_completed", "shadow answered"),
                ("shadow_dropped", "shadow dropped"),
                ("errors", "errors"),
            ]
            lines += [f"## Shadow mirroring (median of {args.rounds} interleaved rounds)", ""]
            lines += [markdown_table(rows, cols), ""]
        if "proxy" in parts:
            print("== upstream proxy overhead at concurrency 1", flush=True)
            proxy = bench_proxy(workdir, args.duration, args.rounds)
            payload["proxy"] = proxy
            verdict = proxy["added_p50_ms"] <= TARGET_PROXY_MS
            ok &= verdict
            print(
                f"  direct p50 {proxy['direct_p50_ms']:.3f} ms, via proxy {proxy['proxy_p50_ms']:.3f} ms: "
                f"+{proxy['added_p50_ms']:.3f} ms (target <= {TARGET_PROXY_MS} ms) {'ok' if verdict else 'MISSED'}"
            )
            lines += [
                "## Upstream proxy, concurrency 1",
                "",
                f"- direct to the upstream sidecar: p50 {proxy['direct_p50_ms']:.3f} ms",
                f"- through the proxy sidecar: p50 {proxy['proxy_p50_ms']:.3f} ms",
                f"- added: {proxy['added_p50_ms']:.3f} ms (target <= {TARGET_PROXY_MS} ms)",
                "",
            ]
    json_path, md_path = save_results(args.name, payload, "\n".join(lines))
    print(f"results: {json_path} {md_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
