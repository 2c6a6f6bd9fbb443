"""The record of a ``bench.run_batching`` session and its Markdown report.

``RunRecord`` collects the cells (one load run on one server and model), the raw ONNX Runtime sweep,
skipped servers with reasons, start-up times and py-spy profiles; ``targets`` checks the issue's
targets against the measured peers; ``render`` writes the report's tables.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from bench import loadgen
from bench.batching_setup import SERVERS, Context
from bench.profiling import render_markdown
from bench.report import OUTCOME_COLUMNS, markdown_table, result_row

# --------------------------------------------------------------------------------------------------
# The record


@dataclass
class Cell:
    server: str
    model: str
    result: loadgen.Result
    mean_batch: float | None = None
    response_bytes: int = 0
    round: int = 0  # which round of the session (``--rounds``): every server is measured once per round


@dataclass
class RunRecord:
    raw: dict[str, Any] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    startup_s: dict[str, float] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Report


def cell_row(cell: Cell) -> dict[str, Any]:
    row = result_row(cell.result)
    row["server"] = SERVERS[cell.server].title
    row["mean_batch"] = cell.mean_batch
    loop = cell.result.cpu_us_per_request("loop")
    row["loop_us"] = None if math.isnan(loop) else loop
    row["response_bytes"] = cell.response_bytes
    row["round"] = cell.round + 1
    return row


COLUMNS = (
    ("server", "server"),
    ("load", "load"),
    ("rps", "req/s (= rows/s)"),
    *OUTCOME_COLUMNS,
    ("loop_us", "event-loop thread CPU us/req"),
    ("client_us", "client CPU us/req"),
    ("mean_batch", "mean batch"),
)


def find(record: RunRecord, server: str, model: str, concurrency: int, round_no: int = 0) -> loadgen.Result | None:
    for cell in record.cells:
        r = cell.result
        if (
            cell.server == server
            and cell.model == model
            and r.mode == "closed"
            and r.concurrency == concurrency
            and cell.round == round_no
        ):
            return r
    return None


def targets(record: RunRecord, model: str = "mlp", concurrency: int = 64) -> list[dict[str, Any]]:
    """The issue's targets, checked for each sidecar variant against the measured peers.

    With several rounds, each round's figures are compared within that round (the sidecar against the
    echo server measured minutes apart, not across the session), and a target is judged on the median
    of the per-round figures; ``rounds`` lists them all, so that their spread shows."""
    by_round = [_round_targets(record, model, concurrency, r) for r in sorted({c.round for c in record.cells})]
    if len(by_round) <= 1:
        return by_round[0] if by_round else []
    rows: list[dict[str, Any]] = []
    for first in by_round[0]:
        key = (first["sidecar"], first["target"])
        same = [row for rows_r in by_round for row in rows_r if (row["sidecar"], row["target"]) == key]
        values = [row["measured"] for row in same]
        mid = statistics.median(values)
        rows.append(
            {
                **first,
                "measured": mid,
                "verdict": _verdict(_judge(first["goal"], mid)),
                "rounds": ", ".join(f"{v:.2f}" for v in values),
            }
        )
    return rows


def _judge(goal: str, value: float) -> bool:
    """``value`` against a goal written as ``">= 2.0x"``, ``"<= 0.30"`` or ``"< 12.50"``."""
    op, _, bound = goal.partition(" ")
    limit = float(bound.rstrip("x"))
    return {">=": value >= limit, "<=": value <= limit, "<": value < limit}[op]


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "NOT met")


def _round_targets(record: RunRecord, model: str, concurrency: int, round_no: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    at = functools.partial(find, record, round_no=round_no)
    echo = at("echo", model, concurrency)
    # The stronger of MLServer's two adaptive-batching configurations (parallel_workers 0 and 1).
    adaptive = [at(k, model, concurrency) for k in ("mlserver-pw0-adaptive", "mlserver-pw1-adaptive")]
    mls = max((r for r in adaptive if r is not None), key=lambda r: r.rps, default=None)
    echo1 = at("echo", model, 1)
    raw = record.raw.get(model, {}).get("rows", [])
    model_ms = raw[0]["p50_ms"] if raw and raw[0]["batch"] == 1 else None
    for key in ("echo-batching", "sidecar", "sidecar-batching", "sidecar-batching-bare", "sidecar-batching-aio"):
        side = at(key, model, concurrency)
        if side is None:
            continue
        title = SERVERS[key].title

        def add(name: str, value: float | None, goal: str, ok: bool | None, title: str = title) -> None:
            rows.append({"sidecar": title, "target": name, "measured": value, "goal": goal, "verdict": _verdict(ok)})

        if mls is not None and mls.rps:
            ratio = side.rps / mls.rps
            add(f"req/s vs MLServer adaptive (c={concurrency})", ratio, ">= 2.0x", ratio >= 2.0)
            p99s, p99m = side.latency_ms.get("p99"), mls.latency_ms.get("p99")
            if p99s is not None and p99m:
                add("p99 vs MLServer adaptive (ratio)", p99s / p99m, "< 1.0x", p99s < p99m)
        if echo is not None and echo.rps:
            ratio = side.rps / echo.rps
            add(f"req/s vs echo server (c={concurrency})", ratio, ">= 0.80x", ratio >= 0.8)
            cpu_s, cpu_e = side.cpu_us_per_request("server"), echo.cpu_us_per_request("server")
            if not math.isnan(cpu_s) and not math.isnan(cpu_e) and cpu_e > 0:
                add("server CPU per request vs echo", cpu_s / cpu_e, "<= 1.3x", cpu_s / cpu_e <= 1.3)
        side1 = at(key, model, 1)
        if side1 is not None and echo1 is not None and model_ms is not None:
            extra = side1.latency_ms["p50"] - echo1.latency_ms["p50"] - model_ms
            add("c=1 p50 - (echo p50 + model p50) (ms)", extra, "<= 0.30", extra <= 0.3)
    return rows


def render(ctx: Context, record: RunRecord, meta: dict[str, Any]) -> str:
    rounds = len({c.round for c in record.cells})
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
            columns = (("round", "round"), *COLUMNS) if rounds > 1 else COLUMNS
            lines += ["Servers (same load generator, batch-1 requests):", "", markdown_table(rows, columns), ""]
    checks = targets(record)
    if checks:
        lines += [
            "## Targets (MLP, batch-1 requests, concurrency 64)",
            "",
            "The floor (a minimal batching server on grpc.aio, `bench/echo_server.py --batch-model`) is held to "
            "the same targets: what it misses, no Python server built on grpc.aio in one process can meet."
            + (
                f" Each of the {rounds} rounds is compared within itself (every server measured once per round, "
                "the order rotated); `measured` is the median of the rounds' figures, listed in `rounds`."
                if rounds > 1
                else ""
            ),
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
                    *((("rounds", "rounds"),) if rounds > 1 else ()),
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
