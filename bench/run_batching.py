"""Side by side, one session, one machine, the same models and the same load generator:

1. raw in-process ONNX Runtime at batch sizes 1..max (the ceiling of the model itself);
2. a bare grpc.aio server answering ModelInfer with the model's real response bytes (the ceiling of
   Python gRPC on this box), and the same server parsing each request and serialising the response
   with protobuf (the ceiling of any Python server that looks at the request);
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import loadgen, servers
from bench.profiling import PySpy, render_markdown
from bench.report import RESULTS_DIR, machine_info, markdown_table, result_row, save_results

# --------------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class BenchModel:
    name: str
    path: Path
    input_name: str
    features: int
    description: str


def build_models(workdir: Path, names: Sequence[str]) -> dict[str, BenchModel]:
    """Build the benchmark models into a sidecar model repository under ``workdir``."""
    from sidecar.testing.models import mlp_model, sklearn_classifier, write_version

    repo = workdir / "repository"
    models: dict[str, BenchModel] = {}
    if "mlp" in names:
        vdir = write_version(repo, "mlp", "1.0.0", mlp_model)
        models["mlp"] = BenchModel("mlp", vdir / "model.onnx", "input", 64, "MLP 64 -> 256 -> 256 -> 10, float32")
    if "tabular" in names:
        vdir = write_version(repo, "tabular", "1.0.0", lambda p: sklearn_classifier(p, "breast_cancer", "logistic")[0])
        models["tabular"] = BenchModel(
            "tabular",
            vdir / "model.onnx",
            "X",
            30,
            "scikit-learn StandardScaler + LogisticRegression on breast_cancer (30 features)",
        )
    unknown = set(names) - set(models)
    if unknown:
        raise SystemExit(f"unknown model(s): {', '.join(sorted(unknown))} (mlp, tabular)")
    return models


def batch1_input(model: BenchModel) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((1, model.features)).astype(np.float32)


def real_response(model: BenchModel, x: np.ndarray) -> bytes:
    """The ModelInferResponse a server should send for ``x`` (raw outputs), for the echo server to replay."""
    import onnxruntime as ort

    from sidecar.protocol._generated import grpc_service_pb2 as pb
    from sidecar.types import datatype_of

    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, {model.input_name: x})
    resp = pb.ModelInferResponse(model_name=model.name, model_version="1.0.0")
    for name, array in zip(names, outputs, strict=True):
        resp.outputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        resp.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    return resp.SerializeToString()


# --------------------------------------------------------------------------------------------------
# Servers under test


@dataclass(frozen=True)
class ServerSpec:
    key: str
    title: str
    batching: bool
    start: Callable[[Context], servers.ServerProcess | dict[str, servers.ServerProcess]]


@dataclass
class Context:
    args: argparse.Namespace
    workdir: Path
    models: dict[str, BenchModel]
    response_files: dict[str, Path]
    log_dir: Path

    @property
    def repository(self) -> Path:
        return self.workdir / "repository"

    def model_paths(self) -> dict[str, Path]:
        return {name: m.path for name, m in self.models.items()}


def _sidecar_settings(ctx: Context, batching: bool) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "engine.providers": "CPUExecutionProvider",
        "engine.intra_op_threads": ctx.args.intra_op_threads,
        "batching.enabled": batching,
    }
    if batching:
        settings["batching.max_batch_size"] = ctx.args.max_batch_size
        settings["batching.max_queue_delay_ms"] = ctx.args.max_queue_delay_ms
    for item in ctx.args.sidecar_setting:
        key, _, value = item.partition("=")
        settings[key] = value
    return settings


def _start_sidecar(batching: bool, extra: dict[str, Any] | None = None) -> Callable[[Context], servers.ServerProcess]:
    def start(ctx: Context) -> servers.ServerProcess:
        return servers.start_sidecar(
            ctx.repository,
            models=list(ctx.models),
            settings={**_sidecar_settings(ctx, batching), **(extra or {})},
            name=f"sidecar-{'batching' if batching else 'direct'}{'-bare' if extra else ''}",
            log_dir=ctx.log_dir,
        )

    return start


def _per_model(ctx: Context, start_one: Callable[[str], servers.ServerProcess]) -> dict[str, servers.ServerProcess]:
    """One server per model (``start_one(model name)``); those already started are stopped if one fails."""
    started: dict[str, servers.ServerProcess] = {}
    try:
        for name in ctx.models:
            started[name] = start_one(name)
    except BaseException:
        for s in started.values():
            s.stop()
        raise
    return started


def _start_echo(parse: bool) -> Callable[[Context], dict[str, servers.ServerProcess]]:
    """One echo server per model, each replaying that model's real response."""

    def start(ctx: Context) -> dict[str, servers.ServerProcess]:
        return _per_model(
            ctx,
            lambda name: servers.start_echo(
                response_file=ctx.response_files[name],
                parse=parse,
                name=f"echo{'-parse' if parse else ''}-{name}",
                log_dir=ctx.log_dir,
            ),
        )

    return start


def _start_echo_batching(ctx: Context) -> dict[str, servers.ServerProcess]:
    """One minimal batching server per model: the floor of batching on grpc.aio (bench/echo_server.py)."""
    return _per_model(
        ctx,
        lambda name: servers.start_echo(
            batch_model=ctx.models[name].path,
            max_batch_size=ctx.args.max_batch_size,
            max_queue_delay_ms=ctx.args.max_queue_delay_ms,
            intra_op_threads=ctx.args.intra_op_threads,
            name=f"echo-batching-{name}",
            log_dir=ctx.log_dir,
        ),
    )


def _start_mlserver(workers: int, adaptive: bool) -> Callable[[Context], servers.ServerProcess]:
    def start(ctx: Context) -> servers.ServerProcess:
        return servers.start_mlserver(
            ctx.model_paths(),
            ctx.workdir / f"mlserver-pw{workers}-{'adaptive' if adaptive else 'plain'}",
            parallel_workers=workers,
            max_batch_size=ctx.args.max_batch_size if adaptive else 0,
            max_batch_time_s=ctx.args.max_queue_delay_ms / 1e3,
            intra_op_threads=ctx.args.intra_op_threads,
            name=f"mlserver-pw{workers}{'-adaptive' if adaptive else ''}",
            log_dir=ctx.log_dir,
        )

    return start


def _start_pytriton(batching: bool) -> Callable[[Context], servers.ServerProcess]:
    def start(ctx: Context) -> servers.ServerProcess:
        return servers.start_pytriton(
            ctx.model_paths(),
            batching=batching,
            max_batch_size=ctx.args.max_batch_size,
            max_queue_delay_us=int(ctx.args.max_queue_delay_ms * 1000),
            intra_op_threads=ctx.args.intra_op_threads,
            name=f"pytriton{'-dynamic' if batching else ''}",
            log_dir=ctx.log_dir,
        )

    return start


SERVERS: dict[str, ServerSpec] = {
    s.key: s
    for s in (
        ServerSpec("echo", "grpc.aio echo (ceiling)", False, _start_echo(False)),
        ServerSpec("echo-parse", "grpc.aio echo + protobuf parse/serialise", False, _start_echo(True)),
        ServerSpec("echo-batching", "grpc.aio + minimal batcher + ONNX Runtime (floor)", True, _start_echo_batching),
        ServerSpec("sidecar", "sidecar, batching off", False, _start_sidecar(False)),
        ServerSpec("sidecar-batching", "sidecar, batching on", True, _start_sidecar(True)),
        ServerSpec(
            "sidecar-batching-bare",
            "sidecar, batching on, telemetry and monitoring off",
            True,
            _start_sidecar(True, {"telemetry.enabled": False, "monitoring.enabled": False}),
        ),
        ServerSpec("mlserver-pw1", "MLServer, parallel_workers 1", False, _start_mlserver(1, False)),
        ServerSpec(
            "mlserver-pw1-adaptive", "MLServer, parallel_workers 1, adaptive batching", True, _start_mlserver(1, True)
        ),
        ServerSpec("mlserver-pw0", "MLServer, parallel_workers 0", False, _start_mlserver(0, False)),
        ServerSpec(
            "mlserver-pw0-adaptive", "MLServer, parallel_workers 0, adaptive batching", True, _start_mlserver(0, True)
        ),
        ServerSpec("pytriton-dynamic", "PyTriton, dynamic batcher", True, _start_pytriton(True)),
        ServerSpec("pytriton", "PyTriton, no batching", False, _start_pytriton(False)),
    )
}
DEFAULT_SERVERS = [k for k in SERVERS if k != "pytriton"]


# --------------------------------------------------------------------------------------------------
# The run


@dataclass
class Cell:
    server: str
    model: str
    result: loadgen.Result
    mean_batch: float | None = None
    response_bytes: int = 0


@dataclass
class RunRecord:
    raw: dict[str, Any] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    startup_s: dict[str, float] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)


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


def measure_server(ctx: Context, spec: ServerSpec, record: RunRecord) -> None:
    args = ctx.args
    began = time.monotonic()
    try:
        started = spec.start(ctx)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(f"[{spec.key}] skipped: {reason}", flush=True)
        record.skipped[spec.key] = reason
        return
    record.startup_s[spec.key] = round(time.monotonic() - began, 2)
    by_model = started if isinstance(started, dict) else dict.fromkeys(ctx.models, started)
    try:
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
                mean_batch = None
                if stats_before and stats_after and stats_after[1] > stats_before[1]:
                    mean_batch = (stats_after[0] - stats_before[0]) / (stats_after[1] - stats_before[1])
                record.cells.append(Cell(spec.key, name, result, mean_batch, len(response)))
                extra = f" mean batch {mean_batch:.1f}" if mean_batch else ""
                print(f"[{spec.key}] {name} {result.summary()}{extra}", flush=True)
            if args.profile and spec.key.startswith("sidecar") and name == "mlp":
                record.profiles[spec.key] = profile_cell(ctx, server, payload, max(args.concurrency))
    finally:
        for s in {id(s): s for s in by_model.values()}.values():
            s.stop()


def _cpu_probes(spec: ServerSpec, server: servers.ServerProcess) -> dict[str, Callable[[], float]]:
    """Whole-process CPU for every server; for our own single-process grpc.aio servers also the event loop's
    thread, where every request's Python runs (the first thing to saturate)."""
    probes: dict[str, Callable[[], float]] = {"server": server.cpu_seconds}
    if spec.key.startswith(("echo", "sidecar")):
        pid = server.pid
        probes["loop"] = lambda: servers.thread_cpu(pid).get("main", math.nan)
    return probes


def profile_cell(ctx: Context, server: servers.ServerProcess, payload: bytes, concurrency: int) -> dict[str, Any]:
    """One more cell, with py-spy attached: kept out of the tables, since py-spy takes CPU of its own."""
    args = ctx.args
    try:
        spy = PySpy.attach(
            server.pid,
            args.warmup + args.duration,
            ctx.workdir / f"pyspy-{server.name}.txt",
            executable=args.py_spy,
        )
    except FileNotFoundError as exc:
        return {"error": str(exc)}
    result = loadgen.run(
        server.target,
        payload,
        concurrency=concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        processes=args.processes,
    )
    try:
        summary = spy.summary()
    except RuntimeError as exc:
        return {"error": str(exc)}
    print(f"[{server.name}] profiled: {result.summary()}", flush=True)
    return {**summary, "load": f"c={concurrency}", "rps_while_profiled": round(result.rps, 1)}


# --------------------------------------------------------------------------------------------------
# Report


def cell_row(cell: Cell) -> dict[str, Any]:
    row = result_row(cell.result)
    row["server"] = SERVERS[cell.server].title
    row["mean_batch"] = cell.mean_batch
    loop = cell.result.cpu_us_per_request("loop")
    row["loop_us"] = None if math.isnan(loop) else loop
    row["response_bytes"] = cell.response_bytes
    return row


COLUMNS = (
    ("server", "server"),
    ("load", "load"),
    ("rps", "req/s (= rows/s)"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("max_ms", "max ms"),
    ("errors", "errors"),
    ("server_us", "server CPU us/req"),
    ("loop_us", "event-loop thread CPU us/req"),
    ("client_us", "client CPU us/req"),
    ("mean_batch", "mean batch"),
)


def find(record: RunRecord, server: str, model: str, concurrency: int) -> loadgen.Result | None:
    for cell in record.cells:
        r = cell.result
        if cell.server == server and cell.model == model and r.mode == "closed" and r.concurrency == concurrency:
            return r
    return None


def targets(record: RunRecord, model: str = "mlp", concurrency: int = 64) -> list[dict[str, Any]]:
    """The issue's targets, checked for each sidecar variant against the measured peers."""
    rows: list[dict[str, Any]] = []
    echo = find(record, "echo", model, concurrency)
    # The stronger of MLServer's two adaptive-batching configurations (parallel_workers 0 and 1).
    adaptive = [find(record, k, model, concurrency) for k in ("mlserver-pw0-adaptive", "mlserver-pw1-adaptive")]
    mls = max((r for r in adaptive if r is not None), key=lambda r: r.rps, default=None)
    echo1 = find(record, "echo", model, 1)
    raw = record.raw.get(model, {}).get("rows", [])
    model_ms = raw[0]["p50_ms"] if raw and raw[0]["batch"] == 1 else None
    for key in ("echo-batching", "sidecar", "sidecar-batching", "sidecar-batching-bare"):  # the floor first
        side = find(record, key, model, concurrency)
        if side is None:
            continue
        title = SERVERS[key].title

        def add(name: str, value: float | None, goal: str, ok: bool | None, title: str = title) -> None:
            verdict = "-" if ok is None else ("met" if ok else "NOT met")
            rows.append({"sidecar": title, "target": name, "measured": value, "goal": goal, "verdict": verdict})

        if mls is not None and mls.rps:
            ratio = side.rps / mls.rps
            add(f"req/s vs MLServer adaptive (c={concurrency})", ratio, ">= 2.0x", ratio >= 2.0)
            p99s, p99m = side.latency_ms.get("p99"), mls.latency_ms.get("p99")
            if p99s is not None and p99m is not None:
                add("p99 vs MLServer adaptive (ms)", p99s, f"< {p99m:.2f}", p99s < p99m)
        if echo is not None and echo.rps:
            ratio = side.rps / echo.rps
            add(f"req/s vs echo server (c={concurrency})", ratio, ">= 0.80x", ratio >= 0.8)
            cpu_s, cpu_e = side.cpu_us_per_request("server"), echo.cpu_us_per_request("server")
            if not math.isnan(cpu_s) and not math.isnan(cpu_e) and cpu_e > 0:
                add("server CPU per request vs echo", cpu_s / cpu_e, "<= 1.3x", cpu_s / cpu_e <= 1.3)
        side1 = find(record, key, model, 1)
        if side1 is not None and echo1 is not None and model_ms is not None:
            extra = side1.latency_ms["p50"] - echo1.latency_ms["p50"] - model_ms
            add("c=1 p50 - (echo p50 + model p50) (ms)", extra, "<= 0.30", extra <= 0.3)
    return rows


def render(ctx: Context, record: RunRecord, meta: dict[str, Any]) -> str:
    lines = [f"# Batching benchmark: sidecar vs peers ({meta['started']})", ""]
    lines += [
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine'].get('cpu_model', '?')}, {meta['machine']['cpus']} CPUs, "
        f"Python {meta['machine']['python']}, grpcio {meta['machine']['grpcio']}, "
        f"onnxruntime {meta['machine'].get('onnxruntime', '?')}. "
        f"Load average at start {meta['loadavg_start']}, at end {meta['loadavg_end']}.",
        "",
        f"Load: batch-1 requests, closed loop for {ctx.args.duration:g} s after {ctx.args.warmup:g} s of warm-up "
        f"per cell, load generator in {ctx.args.processes} worker process(es) on the same machine; "
        f"ONNX Runtime intra-op threads {ctx.args.intra_op_threads} everywhere; batching: max batch "
        f"{ctx.args.max_batch_size}, max queue delay {ctx.args.max_queue_delay_ms:g} ms (sidecar, MLServer "
        "max_batch_time, Triton max_queue_delay_microseconds).",
        "",
    ]
    if ctx.args.note:
        lines += [f"**Note:** {ctx.args.note}", ""]
    for name, model in ctx.models.items():
        lines += [f"## {name}: {model.description}", ""]
        raw = record.raw.get(name)
        if raw:
            lines += [f"Raw ONNX Runtime in-process ({raw['provider']}, one caller):", ""]
            lines.append(
                markdown_table(
                    raw["rows"],
                    (
                        ("batch", "batch"),
                        ("rows_per_s", "rows/s"),
                        ("p50_ms", "p50 ms"),
                        ("p99_ms", "p99 ms"),
                        ("cpu_us_per_row", "CPU us/row"),
                    ),
                )
            )
            lines.append("")
        rows = [cell_row(c) for c in record.cells if c.model == name]
        if rows:
            lines += ["Servers (same load generator, batch-1 requests):", "", markdown_table(rows, COLUMNS), ""]
    checks = targets(record)
    if checks:
        lines += [
            "## Targets (MLP, batch-1 requests, concurrency 64)",
            "",
            "The floor (a minimal batching server on grpc.aio, `bench/echo_server.py --batch-model`) is held to "
            "the same targets: what it misses, no Python server built on grpc.aio in one process can meet.",
            "",
        ]
        lines.append(
            markdown_table(
                checks,
                (
                    ("sidecar", "server"),
                    ("target", "target"),
                    ("measured", "measured"),
                    ("goal", "goal"),
                    ("verdict", ""),
                ),
            )
        )
        lines.append("")
    for key, prof in record.profiles.items():
        lines += [f"## Where the time goes: {SERVERS[key].title}, MLP", ""]
        if "error" in prof:
            lines += [f"Not profiled: {prof['error']}", ""]
        else:
            lines += [
                f"An extra cell at {prof['load']} with py-spy attached ({prof['rps_while_profiled']:,.0f} req/s "
                "while profiled; not in the tables above). " + render_markdown(prof),
                "",
            ]
    if record.skipped:
        lines += ["## Skipped", ""]
        lines += [f"- {k}: {v}" for k, v in record.skipped.items()]
        lines.append("")
    lines += [
        "Server CPU us/req: CPU time (user + system) of the server's whole process tree over the measured "
        "window divided by the requests completed in it; client CPU likewise for the load generator. "
        "Mean batch: inferences / executions from ModelStatistics (servers that report it).",
        "",
    ]
    return "\n".join(lines)


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
        for key in args.servers:
            print(f"[{key}] starting", flush=True)
            try:
                measure_server(ctx, SERVERS[key], record)
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
                {**c.result.to_dict(), "server": c.server, "model": c.model, "mean_batch": c.mean_batch}
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
