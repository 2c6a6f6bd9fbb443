"""Routing, shadow mirroring and upstream proxy costs, measured against the issue's targets.

1. **decision**: the routing decision alone (``Router.decide``: sticky hash, bisect, version lookup,
   shadow sampling: the code ``dispatch`` runs) in-process over a real repository. Target < 5 us.
2. **shadow**: one ``sidecar serve`` process (MLP 64-256-256-10, versions 1.0.0 and 1.1.0), closed
   loop at concurrency 64 (bench/loadgen.py, one worker process), alternating the policy through the
   control API on the same warm server: no shadow / no shadow again (the A/A control) / 1.1.0 mirrors
   100 % / a shadow that sleeps one second per request (a fake upstream, ``sidecar.testing.upstream``)
   mirrors 100 %. Targets: shadow on costs <= 5 % of p99 and <= 10 % of req/s; the sleeping shadow
   changes p99 by no more than that.
   Then open loops at 40 % and 10 % of the no-shadow throughput (a busy and a lightly loaded server).
   Each shadow row also shows the *coverage*: the share of offered copies the shadow answered (the
   rest were dropped, counted, because the gate kept them off a busy primary, or still queued).
   Before it, **shadow-path**: the same dispatch in process (bench/shadow_path.py: a real router,
   mirror and gate over versions that answer at once), per request with shadows off, with every copy
   dropped (queue full) and with every copy queued, warm and with the caches disturbed.
3. **proxy**: concurrency 1, p50 latency calling an upstream sidecar directly versus through a second
   sidecar whose version is ``upstream.json`` -> the first. Target: <= 0.5 ms added at p50. The CPU
   per request of each server process is reported too (less noisy than latency on a shared box), and
   so are two floors in front of the same upstream, each its own process on grpc.aio and uvloop with
   the upstream engine's channel options and the proxy sidecar's gRPC I/O path (``server.grpc_io``,
   auto: poller for a repository of upstreams only): a minimal proxy that passes the bytes through (no
   sidecar at all: what one more Python gRPC hop costs on this machine), and one that also parses the
   request and the answer and serialises them again (the least any proxy that looks at the tensors
   pays). A third sidecar proxy runs on gRPC's other I/O path (``server.grpc_io = event_engine``,
   gRPC's own default) to show what the choice is worth. ``--upstream mlserver|pytriton`` puts MLServer
   or PyTriton (Triton's C++ server) there instead of a sidecar (their virtualenvs: bench/peers).

    .venv/bin/python -m bench.bench_routing --duration 5   # about 10 minutes
    .venv/bin/python -m bench.bench_routing --duration 5 --only shadow --open-loads ""

Each mode runs several times interleaved (``--shadow-rounds``, 12, for the closed loop of the shadow
part, whose p99 changes are a few percent; ``--open-rounds`` for its open loops; ``--rounds`` for the
proxy part, direct and proxy in alternating order), because the machine is shared and its speed
drifts. The shadow part rotates its modes' order by one place each
round, so that over a multiple of four rounds every mode runs as often in every place and after every
other mode (reversing the order every other round, as it once did, left the shadow always in the
middle and the baseline always at the ends). Changes are computed per round against the baseline of
the same round (paired), and the median over rounds is reported, next to the medians of the raw
figures and the standard error of the mean change. A second no-shadow mode, the **A/A control**,
measures the baseline against itself: its changes are what noise alone gives in the same run.
Results: bench/results/routing.json and routing.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench import loadgen, peer_servers, servers
from bench.report import machine_info, markdown_table, save_results
from sidecar import grpc_io
from sidecar.config import SidecarConfig
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


def _coverage(copies: dict[str, Any]) -> float | None:
    """The share of offered copies that the shadow answered by the end of the run (queued ones not yet)."""
    offered = copies.get("mirrored", 0) + copies.get("dropped", 0)
    return copies.get("completed", 0) / offered if offered else None


def _shadow_report(control: str) -> dict[str, Any]:
    from sidecar.protocol.routing_client import RoutingClient

    with RoutingClient(control) as client:
        return {
            r.version: {"mirrored": r.total.mirrored, "dropped": r.total.dropped, "completed": r.total.completed}
            for r in client.shadow_report("mlp")
        }


CONTROL = "no shadow (A/A control)"


def _se(values: list[float]) -> float:
    """The standard error of the mean of ``values`` (nan for fewer than two)."""
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")


def bench_shadow(
    workdir: Path,
    duration_s: float,
    rounds: int,
    concurrency: int,
    open_shares: tuple[float, ...] = (0.4, 0.1),
    open_rounds: int = 3,
) -> dict[str, Any]:
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
        CONTROL: ([("1.0.0", 100.0)], []),
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
                order = list(modes.items())
                k = r % len(order)  # rotated by one place a round: each mode in each place, after each other
                for mode, (weights, shadows) in order[k:] + order[:k]:
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
            for share in open_shares:  # a busy and a lightly loaded server, offered a fixed rate
                rate = max(20.0, round(base_rps * share, -1))
                for r in range(open_rounds):
                    cell(f"open {rate:.0f}/s ({share:.0%})", r, rate_per_s=rate)
    finally:
        slow.stop()
    rows = []
    for (load, mode), results in cells.items():
        res = [x for x, _ in results]
        copies = [next(iter(rep.values()), {}) for _, rep in results]
        base = [x for x, _ in cells[(load, "no shadow")]]
        rps_changes = [_pct(x.rps, b.rps) for x, b in zip(res, base, strict=True)]
        p99_changes = [
            _pct(x.latency_ms.get("p99", float("nan")), b.latency_ms.get("p99", float("nan")))
            for x, b in zip(res, base, strict=True)
        ]
        coverage = [c for c in (_coverage(c) for c in copies) if c is not None]
        rows.append(
            {
                "load": load,
                "mode": mode,
                "rps": statistics.median(x.rps for x in res),
                "p50_ms": statistics.median(x.latency_ms.get("p50", float("nan")) for x in res),
                "p99_ms": statistics.median(x.latency_ms.get("p99", float("nan")) for x in res),
                # paired: each round against the no-shadow run of the same round, then the median
                "rps_change_pct": statistics.median(rps_changes),
                "p99_change_pct": statistics.median(p99_changes),
                "rps_change_se": _se(rps_changes),
                "p99_change_se": _se(p99_changes),
                "rounds": len(res),
                "errors": sum(x.errors for x in res),
                "server_cpu_us": statistics.median(x.cpu_us_per_request("server") for x in res),
                "shadow_mirrored": statistics.median(c.get("mirrored", 0) for c in copies) if copies[0] else None,
                "shadow_completed": statistics.median(c.get("completed", 0) for c in copies) if copies[0] else None,
                "shadow_dropped": statistics.median(c.get("dropped", 0) for c in copies) if copies[0] else None,
                "coverage_pct": statistics.median(coverage) * 100 if coverage else None,
            }
        )
    return {"rows": rows, "runs": {f"{k[0]} / {k[1]}": [x.to_dict() for x, _ in v] for k, v in cells.items()}}


def _start_upstream(kind: str, workdir: Path, upstream_io: str) -> servers.ServerProcess:
    """The proxy part's upstream serving the MLP as ``mlp``: a sidecar (``server.grpc_io = upstream_io``),
    MLServer 1.7.1 or PyTriton (Triton's C++ server), the last two from their virtualenvs (bench/peers),
    without batching."""
    upstream_repo = workdir / "proxy-upstream"
    model = write_version(upstream_repo, "mlp", "1.0.0", mlp_model, seed=0) / "model.onnx"
    if kind == "mlserver":
        return peer_servers.start_mlserver(
            {"mlp": model}, workdir / "mlserver", name="mlserver-upstream", declare_signature=True
        )
    if kind == "pytriton":
        return peer_servers.start_pytriton({"mlp": model}, batching=False, name="pytriton-upstream")
    settings = {"server.grpc_io": upstream_io}  # auto: event_engine (it runs the model)
    return servers.start_sidecar(upstream_repo, models=["mlp"], settings=settings, name="sidecar-upstream")


def bench_proxy(
    workdir: Path, duration_s: float, rounds: int, upstream_io: str = "auto", upstream_kind: str = "sidecar"
) -> dict[str, Any]:
    payload = _mlp_payload()
    direct_runs, proxy_runs, floor_runs, parse_runs, ee_runs = [], [], [], [], []
    with _start_upstream(upstream_kind, workdir, upstream_io) as upstream:
        proxy_repo = workdir / "proxy"
        (proxy_repo / "mlp" / "1.0.0").mkdir(parents=True)
        (proxy_repo / "mlp" / "1.0.0" / "upstream.json").write_text(json.dumps({"target": upstream.target}))
        settings = {"batching.enabled": False}  # forward each request as it comes (no proxy-side queue)
        with (
            servers.start_sidecar(proxy_repo, models=["mlp"], settings=settings, name="sidecar-proxy") as proxy,
            _start_min_proxy(upstream.target, proxy_repo) as floor,
            _start_min_proxy(upstream.target, proxy_repo, parse=True) as parse_floor,
            servers.start_sidecar(
                proxy_repo, models=["mlp"], settings={**settings, "server.grpc_io": "event_engine"}, name="sidecar-ee"
            ) as proxy_ee,
        ):
            cells = [
                ("direct", upstream.target, direct_runs, upstream),
                ("proxy", proxy.target, proxy_runs, proxy),
                ("floor", floor.target, floor_runs, floor),
                ("parse", parse_floor.target, parse_runs, parse_floor),
                ("ee", proxy_ee.target, ee_runs, proxy_ee),
            ]
            for r in range(rounds):
                for label, target, sink, server in cells if r % 2 == 0 else cells[::-1]:
                    probes = {"upstream": upstream.cpu_seconds, "proxy": server.cpu_seconds}
                    result = loadgen.run(
                        target, payload, concurrency=1, duration_s=duration_s, warmup_s=1.0, cpu_probes=probes
                    )
                    sink.append(result)
                    cpu = result.cpu_us_per_request("proxy") if server is not upstream else float("nan")
                    print(
                        f"  {label:6s} round {r}: {result.summary()} proxy CPU {cpu:.0f} us/req upstream CPU "
                        f"{result.cpu_us_per_request('upstream'):.0f} us/req",
                        flush=True,
                    )
    direct_p50 = statistics.median(x.latency_ms["p50"] for x in direct_runs)
    proxy_p50 = statistics.median(x.latency_ms["p50"] for x in proxy_runs)
    paired = [p.latency_ms["p50"] - d.latency_ms["p50"] for d, p in zip(direct_runs, proxy_runs, strict=True)]
    floor = [f.latency_ms["p50"] - d.latency_ms["p50"] for d, f in zip(direct_runs, floor_runs, strict=True)]
    parse = [f.latency_ms["p50"] - d.latency_ms["p50"] for d, f in zip(direct_runs, parse_runs, strict=True)]
    ee = [f.latency_ms["p50"] - d.latency_ms["p50"] for d, f in zip(direct_runs, ee_runs, strict=True)]
    return {
        "event_engine_added_p50_ms": statistics.median(ee),
        "event_engine_cpu_us": statistics.median(x.cpu_us_per_request("proxy") for x in ee_runs),
        "floor_p50_ms": statistics.median(x.latency_ms["p50"] for x in floor_runs),
        "floor_added_p50_ms": statistics.median(floor),
        "floor_cpu_us": statistics.median(x.cpu_us_per_request("proxy") for x in floor_runs),
        "parse_floor_p50_ms": statistics.median(x.latency_ms["p50"] for x in parse_runs),
        "parse_floor_added_p50_ms": statistics.median(parse),
        "parse_floor_cpu_us": statistics.median(x.cpu_us_per_request("proxy") for x in parse_runs),
        "direct_p50_ms": direct_p50,
        "proxy_p50_ms": proxy_p50,
        "added_p50_ms": statistics.median(paired),
        "added_p50_ms_per_round": paired,
        "proxy_cpu_us": statistics.median(x.cpu_us_per_request("proxy") for x in proxy_runs),
        "upstream_cpu_us": statistics.median(x.cpu_us_per_request("upstream") for x in direct_runs),
        "runs": {
            "direct": [x.to_dict() for x in direct_runs],
            "proxy": [x.to_dict() for x in proxy_runs],
            "floor": [x.to_dict() for x in floor_runs],
            "parse floor": [x.to_dict() for x in parse_runs],
            "proxy on event_engine": [x.to_dict() for x in ee_runs],
        },
    }


async def _serve_min_proxy(upstream: str, port: int, parse: bool = False) -> None:
    """The floor for the proxy: forward ModelInfer bytes to ``upstream``, nothing else (grpc.aio, uvloop).

    ``parse``: parse the request and the answer and serialise them again on the way (protobuf, C++)."""
    import grpc

    from sidecar.engine.upstream import channel_options
    from sidecar.protocol._generated import grpc_service_pb2 as pb

    channel = grpc.aio.insecure_channel(upstream, options=channel_options(64 << 20))
    call = channel.unary_unary(loadgen.INFER_METHOD, request_serializer=None, response_deserializer=None)

    async def infer(request: bytes, context: Any) -> bytes:
        return await call(request, timeout=context.time_remaining())

    async def infer_parsed(request: Any, context: Any) -> Any:
        raw = await call(request.SerializeToString(), timeout=context.time_remaining())
        return pb.ModelInferResponse.FromString(raw)

    async def ready(request: bytes, context: Any) -> bytes:
        return b"\x08\x01"  # ServerReadyResponse(ready=True)

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                infer_parsed,
                request_deserializer=pb.ModelInferRequest.FromString,
                response_serializer=pb.ModelInferResponse.SerializeToString,
            )
            if parse
            else grpc.unary_unary_rpc_method_handler(infer),
            "ServerReady": grpc.unary_unary_rpc_method_handler(ready),  # for bench.servers' start-up wait
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _start_min_proxy(upstream: str, proxy_repo: Path, parse: bool = False) -> servers.ServerProcess:
    """A floor in its own process, on the gRPC I/O path the proxy sidecar picks for ``proxy_repo``."""
    port = servers.free_port()
    argv = [sys.executable, "-m", "bench.bench_routing", "--serve-min-proxy", upstream, "--port", str(port)]
    if parse:
        argv.append("--parse")
    name = "min-proxy-parse" if parse else "min-proxy"
    env = dict(os.environ)
    grpc_io.choose(SidecarConfig.load().server.grpc_io, proxy_repo, env)  # as the proxy sidecar reads it
    return servers.ServerProcess(name, argv, port=port, cwd=servers.REPO_ROOT, env=env).start()


def _pct(new: float, base: float) -> float:
    return (new - base) / base * 100 if base else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per load run")
    parser.add_argument("--rounds", type=int, default=3, help="proxy part: interleaved repetitions of each mode")
    parser.add_argument(
        "--shadow-rounds", type=int, default=12, help="shadow part: rounds of the closed loop (a multiple of 4)"
    )
    parser.add_argument(
        "--upstream",
        default="sidecar",
        choices=["sidecar", "mlserver", "pytriton"],
        help="the proxy part's upstream server (mlserver, pytriton: from bench/.venvs, see bench/peers)",
    )
    parser.add_argument(
        "--upstream-grpc-io",
        default="auto",
        choices=["auto", "poller", "event_engine"],
        help="server.grpc_io of the proxy part's upstream sidecar (auto: event_engine, it runs the model)",
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--only", default="decision,shadow-path,shadow,proxy", help="comma-separated parts to run")
    parser.add_argument(
        "--open-loads",
        default="0.4,0.1",
        help="shadow part: open-loop rates as shares of the no-shadow closed-loop req/s ('' for none)",
    )
    parser.add_argument("--open-rounds", type=int, default=3, help="shadow part: rounds of each open loop")
    parser.add_argument("--name", default="routing", help="results file name under bench/results")
    parser.add_argument("--serve-min-proxy", metavar="UPSTREAM", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--parse", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_min_proxy:  # the proxy part's floor, in its own process
        import uvloop

        uvloop.install()
        asyncio.run(_serve_min_proxy(args.serve_min_proxy, args.port, args.parse))
        return 0
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
        if "shadow-path" in parts:
            from bench import shadow_path

            print("== shadow mirroring, the primary's dispatch in process", flush=True)
            path = shadow_path.run()
            payload["shadow_path"] = path
            for row in path["rows"]:
                print(
                    f"  {row['caches']} {row['mode']:8s}: {row['dispatch_us']:.2f} us/dispatch, "
                    f"{row['extra_us']:+.2f} us vs off"
                )
            lines += [
                "## Shadow mirroring: the primary's dispatch in process (bench/shadow_path.py)",
                "",
                "Per request, median; `extra` is over the same dispatch without shadows (cold: paired per request). "
                f"The gate times one request in {path['gate_stride']} (served at ~3,400 req/s: 1 in 3 to 1 in 5).",
                "",
                markdown_table(
                    path["rows"],
                    [
                        ("caches", "caches"),
                        ("mode", "copies"),
                        ("dispatch_us", "us/dispatch"),
                        ("extra_us", "extra vs off us"),
                    ],
                ),
                "",
            ]
        if "shadow" in parts:
            print(f"== shadow mirroring at concurrency {args.concurrency}", flush=True)
            open_shares = tuple(float(x) for x in args.open_loads.split(",") if x.strip())
            shadow = bench_shadow(
                workdir, args.duration, args.shadow_rounds, args.concurrency, open_shares, args.open_rounds
            )
            payload["shadow"] = shadow
            rows = shadow["rows"]
            for row in rows:
                if row["mode"] == "no shadow":
                    continue
                if row["mode"] == CONTROL:
                    print(
                        f"  {row['load']} {row['mode']}: p99 {row['p99_change_pct']:+.1f} % "
                        f"(SE {row['p99_change_se']:.1f}), req/s {row['rps_change_pct']:+.1f} % "
                        f"(SE {row['rps_change_se']:.1f}): what noise alone gives"
                    )
                    continue
                verdict = row["p99_change_pct"] <= TARGET_P99_PCT and row["rps_change_pct"] >= -TARGET_RPS_PCT
                if row["load"].startswith("closed"):
                    ok &= verdict
                print(
                    f"  {row['load']} {row['mode']}: p99 {row['p99_change_pct']:+.1f} % "
                    f"(SE {row['p99_change_se']:.1f}; target <= +{TARGET_P99_PCT} %), "
                    f"req/s {row['rps_change_pct']:+.1f} % "
                    f"(SE {row['rps_change_se']:.1f}; target >= -{TARGET_RPS_PCT} %); shadow answered "
                    f"{row['shadow_completed']} of {row['shadow_mirrored']} queued, {row['shadow_dropped']} dropped "
                    f"(coverage {row['coverage_pct'] or 0:.0f} %) {'ok' if verdict else 'MISSED'}"
                )
            cols = [
                ("load", "load"),
                ("mode", "mode"),
                ("rps", "req/s"),
                ("rps_change_pct", "req/s change %"),
                ("rps_change_se", "SE"),
                ("p50_ms", "p50 ms"),
                ("p99_ms", "p99 ms"),
                ("p99_change_pct", "p99 change %"),
                ("p99_change_se", "SE"),
                ("server_cpu_us", "server CPU us/req"),
                ("shadow_completed", "shadow answered"),
                ("shadow_dropped", "shadow dropped"),
                ("coverage_pct", "coverage %"),
                ("errors", "errors"),
            ]
            lines += [
                f"## Shadow mirroring (median of {args.shadow_rounds} interleaved rounds, {args.open_rounds} for the "
                "open loops; changes paired per round)",
                "",
                "SE: the standard error of the mean change over the rounds. The A/A control is the baseline measured "
                "against itself: its changes are the noise of this run.",
                "",
            ]
            lines += [markdown_table(rows, cols), ""]
        if "proxy" in parts:
            print("== upstream proxy overhead at concurrency 1", flush=True)
            proxy = bench_proxy(workdir, args.duration, args.rounds, args.upstream_grpc_io, args.upstream)
            payload["proxy"] = proxy
            verdict = proxy["added_p50_ms"] <= TARGET_PROXY_MS
            ok &= verdict
            print(
                f"  direct p50 {proxy['direct_p50_ms']:.3f} ms, via proxy {proxy['proxy_p50_ms']:.3f} ms: "
                f"+{proxy['added_p50_ms']:.3f} ms paired median (target <= {TARGET_PROXY_MS} ms) "
                f"{'ok' if verdict else 'MISSED'}; proxy CPU {proxy['proxy_cpu_us']:.0f} us/req, "
                f"upstream CPU {proxy['upstream_cpu_us']:.0f} us/req; floors: bare grpc.aio proxy "
                f"+{proxy['floor_added_p50_ms']:.3f} ms ({proxy['floor_cpu_us']:.0f} us/req), parsing proxy "
                f"+{proxy['parse_floor_added_p50_ms']:.3f} ms ({proxy['parse_floor_cpu_us']:.0f} us/req); "
                f"proxy on event_engine +{proxy['event_engine_added_p50_ms']:.3f} ms"
            )
            per_round = ", ".join(f"{x:+.3f}" for x in proxy["added_p50_ms_per_round"])
            upstream_label = {
                "sidecar": f"a sidecar (server.grpc_io = {args.upstream_grpc_io})",
                "mlserver": "MLServer 1.7.1 (no batching)",
                "pytriton": "PyTriton (Triton's C++ server, Python model, no batching)",
            }[args.upstream]
            lines += [
                f"## Upstream proxy, concurrency 1 (median of {args.rounds} interleaved rounds)",
                "",
                f"- direct to the upstream, {upstream_label}: p50 {proxy['direct_p50_ms']:.3f} ms",
                f"- through the proxy sidecar: p50 {proxy['proxy_p50_ms']:.3f} ms",
                f"- added (median of the per-round differences): {proxy['added_p50_ms']:.3f} ms "
                f"(target <= {TARGET_PROXY_MS} ms); per round: {per_round} ms",
                f"- CPU per request: proxy process {proxy['proxy_cpu_us']:.0f} us, upstream process "
                f"{proxy['upstream_cpu_us']:.0f} us",
                f"- floor, a bare grpc.aio proxy (raw bytes through, nothing else) in front of the same upstream: "
                f"p50 {proxy['floor_p50_ms']:.3f} ms, added {proxy['floor_added_p50_ms']:.3f} ms, "
                f"{proxy['floor_cpu_us']:.0f} us CPU/req",
                f"- floor that also parses the request and the answer and serialises them again (protobuf): "
                f"p50 {proxy['parse_floor_p50_ms']:.3f} ms, added {proxy['parse_floor_added_p50_ms']:.3f} ms, "
                f"{proxy['parse_floor_cpu_us']:.0f} us CPU/req",
                f"- the same proxy sidecar on gRPC's other I/O path (server.grpc_io = event_engine, gRPC's default): "
                f"added {proxy['event_engine_added_p50_ms']:.3f} ms, {proxy['event_engine_cpu_us']:.0f} us CPU/req",
                "",
            ]
    json_path, md_path = save_results(args.name, payload, "\n".join(lines))
    print(f"results: {json_path} {md_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
