"""A lean Open Inference Protocol load generator on grpc.aio, importable by every benchmark.

Two ways to offer load, both bounded in time:

* **closed loop** (``closed_loop``): ``concurrency`` callers, each sending its next request as soon as
  the previous one answered. Measures the throughput a server sustains at that concurrency.
* **open loop** (``open_loop``): requests sent at a fixed rate whatever the server does; latency is
  measured from each request's *scheduled* send time, so a server that stalls is charged for the
  requests queued behind the stall (no coordinated omission).

Requests are serialised once, before the run, and sent as bytes on a raw channel with identity
(de)serialisers: the client never builds or parses a protobuf on the hot path, which keeps its CPU per
request low. The client shares the machine with the server, so its CPU is part of the measurement and
is reported (``Result.client_cpu_s``).

Each run has three phases on one monotonic clock: warm-up (load offered, nothing recorded), the
measured window (``duration_s``), and the tail (no new requests, in-flight ones allowed to finish but
not counted). Only requests that *complete* inside the window count (closed loop), or that were
*scheduled* inside it (open loop). CPU probes (``cpu_probes``: name -> callable returning cumulative
CPU seconds, e.g. ``bench.servers.ServerProcess.cpu_seconds``) are sampled at the window's edges, so
``Result.cpu_us_per_request("server")`` is the server's CPU per completed request.

In-process use, from a running event loop::

    from bench.loadgen import closed_loop, make_infer_request

    payload = make_infer_request("mlp", {"input": np.zeros((1, 64), np.float32)})
    result = await closed_loop(server.target, payload, concurrency=64, duration_s=5,
                               cpu_probes={"server": server.cpu_seconds})
    print(result.rps, result.latency_ms["p99"], result.cpu_us_per_request("server"))

From synchronous code, optionally in separate worker processes (their CPU is the client CPU)::

    from bench.loadgen import run

    result = run(target, payload, concurrency=64, duration_s=5, processes=1)
    result = run(target, payload, rate_per_s=2000, duration_s=5)

Command line (builds a random request from a name, shape and datatype)::

    python -m bench.loadgen --target 127.0.0.1:8001 --model mlp --input input:1x64:FP32 \\
        (--concurrency 64 | --rate 2000) --duration 10 [--processes 2] [--json out.json] [--name NAME]

In this process (``processes=0``, or ``closed_loop``/``open_loop``) the client CPU is the whole
process's, so run nothing else heavy in it meanwhile; worker processes measure the load alone.

This module is the public face (the names above, ``Result``, ``INFER_METHOD``, ``check_target``,
``make_infer_response``) and the command line; the parts live beside it: ``loadgen_payload``
(requests and responses), ``loadgen_driver`` (one event loop's closed and open loops),
``loadgen_workers`` (worker processes), ``loadgen_result`` (the result and its statistics).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadgen_driver import (
    INFER_METHOD,
    MAX_STREAMS_PER_CHANNEL,
    CpuProbe,
    Plan,
    check_target,
    default_channels,
    run_coro,
    run_here,
)
from bench.loadgen_payload import as_bytes, make_infer_request, make_infer_response
from bench.loadgen_result import Result, latency_summary
from bench.loadgen_workers import run_workers

__all__ = [
    "INFER_METHOD",
    "MAX_STREAMS_PER_CHANNEL",
    "CpuProbe",
    "Result",
    "check_target",
    "closed_loop",
    "latency_summary",
    "main",
    "make_infer_request",
    "make_infer_response",
    "open_loop",
    "run",
]


# ---------------------------------------------------------------------------------------------------
# Public API: in the caller's event loop


async def closed_loop(
    target: str,
    request: bytes | Any,
    concurrency: int,
    duration_s: float,
    *,
    method: str = INFER_METHOD,
    warmup_s: float = 1.0,
    rows_per_request: int = 1,
    timeout_s: float = 30.0,
    cpu_probes: Mapping[str, CpuProbe] | None = None,
    channels: int | None = None,
    labels: Mapping[str, Any] | None = None,
) -> Result:
    """``concurrency`` callers back to back for ``warmup_s`` + ``duration_s``; measured over the last part."""
    plan = _closed_plan(target, as_bytes(request), method, concurrency, timeout_s, channels)
    return await run_here(plan, duration_s, warmup_s, rows_per_request, cpu_probes, labels)


async def open_loop(
    target: str,
    request: bytes | Any,
    rate_per_s: float,
    duration_s: float,
    *,
    method: str = INFER_METHOD,
    warmup_s: float = 1.0,
    rows_per_request: int = 1,
    timeout_s: float = 30.0,
    max_in_flight: int = 10_000,
    cpu_probes: Mapping[str, CpuProbe] | None = None,
    channels: int | None = None,
    labels: Mapping[str, Any] | None = None,
) -> Result:
    """Requests at ``rate_per_s`` (evenly spaced) for ``warmup_s`` + ``duration_s``; latency from schedule."""
    plan = _open_plan(target, as_bytes(request), method, rate_per_s, timeout_s, max_in_flight, channels)
    return await run_here(plan, duration_s, warmup_s, rows_per_request, cpu_probes, labels)


def _closed_plan(
    target: str, payload: bytes, method: str, concurrency: int, timeout_s: float, channels: int | None
) -> Plan:
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    return Plan(target, payload, method, concurrency, 0.0, timeout_s, 0, channels or default_channels(concurrency))


def _open_plan(
    target: str,
    payload: bytes,
    method: str,
    rate_per_s: float,
    timeout_s: float,
    max_in_flight: int,
    channels: int | None,
) -> Plan:
    if rate_per_s <= 0:
        raise ValueError("rate_per_s must be positive")
    return Plan(
        target,
        payload,
        method,
        0,
        float(rate_per_s),
        timeout_s,
        max_in_flight,
        channels or default_channels(max(1, int(rate_per_s * 0.01))),
    )


# ---------------------------------------------------------------------------------------------------
# Public API: from synchronous code, optionally in worker processes


def run(
    target: str,
    request: bytes | Any,
    *,
    concurrency: int | None = None,
    rate_per_s: float | None = None,
    duration_s: float,
    warmup_s: float = 1.0,
    processes: int = 1,
    method: str = INFER_METHOD,
    rows_per_request: int = 1,
    timeout_s: float = 30.0,
    max_in_flight: int = 10_000,
    cpu_probes: Mapping[str, CpuProbe] | None = None,
    channels: int | None = None,
    labels: Mapping[str, Any] | None = None,
) -> Result:
    """Closed loop (``concurrency``) or open loop (``rate_per_s``), blocking until done.

    ``processes`` >= 1 runs the load in that many spawned worker processes (the load is split evenly
    among them; the client CPU is theirs, sampled by this process); 0 runs it here, in a new event loop.
    """
    if (concurrency is None) == (rate_per_s is None):
        raise ValueError("give exactly one of concurrency (closed loop) or rate_per_s (open loop)")
    payload = as_bytes(request)
    if processes <= 0:
        if concurrency is not None:
            plan = _closed_plan(target, payload, method, concurrency, timeout_s, channels)
        else:
            plan = _open_plan(target, payload, method, float(rate_per_s or 0), timeout_s, max_in_flight, channels)
        return run_coro(run_here(plan, duration_s, warmup_s, rows_per_request, cpu_probes, labels))

    if concurrency is not None:
        processes = min(processes, concurrency)
        shares = [concurrency // processes + (1 if k < concurrency % processes else 0) for k in range(processes)]
        plans = [Plan(target, payload, method, c, 0.0, timeout_s, 0, channels or default_channels(c)) for c in shares]
    else:
        rate = float(rate_per_s or 0)
        per = rate / processes
        per_channels = channels or default_channels(max(1, int(per * 0.01)))
        cap = max(1, max_in_flight // processes)
        phase = 1e9 / rate  # the whole rate's interval: worker k sends k intervals after worker 0
        plans = [
            Plan(target, payload, method, 0, per, timeout_s, cap, per_channels, int(k * phase))
            for k in range(processes)
        ]
    return run_workers(plans, duration_s, warmup_s, rows_per_request, cpu_probes, labels, concurrency, rate_per_s)


# ---------------------------------------------------------------------------------------------------
# Command line


def _parse_input(spec: str) -> tuple[str, np.ndarray]:
    """``name:1x64:FP32`` -> a random array of that shape and datatype."""
    from sidecar.types import DATATYPE_TO_DTYPE

    try:
        name, shape_text, datatype = spec.split(":")
        shape = tuple(int(d) for d in shape_text.lower().split("x"))
        dtype = DATATYPE_TO_DTYPE[datatype.upper()]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(
            f"--input wants NAME:SHAPE:DATATYPE such as input:1x64:FP32, not {spec!r}"
        ) from None
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.floating):
        return name, rng.standard_normal(shape).astype(dtype)
    return name, rng.integers(0, 100, shape).astype(dtype)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen", description="Open Inference Protocol load generator (grpc.aio)."
    )
    parser.add_argument("--target", required=True, help="host:port of the gRPC inference server")
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument(
        "--input", action="append", required=True, type=_parse_input, help="NAME:SHAPE:DATATYPE, e.g. input:1x64:FP32"
    )
    load = parser.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=int, help="closed loop with this many callers")
    load.add_argument("--rate", type=float, help="open loop at this many requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (after the warm-up)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds, not measured")
    parser.add_argument("--processes", type=int, default=1, help="worker processes (0 = this process)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request deadline in seconds")
    parser.add_argument("--server-pid", type=int, help="measure this process tree's CPU (psutil)")
    parser.add_argument("--json", help="write the result as JSON to this file")
    parser.add_argument("--name", help="also write bench/results/NAME.json and NAME.md (a one-row table)")
    args = parser.parse_args(argv)

    inputs = dict(args.input)
    rows = next(iter(inputs.values())).shape[0] if inputs else 1
    payload = make_infer_request(args.model, inputs)
    probes: dict[str, CpuProbe] = {}
    if args.server_pid:
        from bench.servers import process_tree_cpu

        probes["server"] = lambda: process_tree_cpu(args.server_pid)
    asyncio.run(check_target(args.target, payload, timeout_s=args.timeout))
    result = run(
        args.target,
        payload,
        concurrency=args.concurrency,
        rate_per_s=args.rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        processes=args.processes,
        rows_per_request=rows,
        timeout_s=args.timeout,
        cpu_probes=probes,
    )
    print(result.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    if args.name:
        from bench.report import STANDARD_COLUMNS, machine_info, markdown_table, result_row, save_results

        result.labels.update(target=args.target, model=args.model)
        table = markdown_table([result_row(result)], (("model", "model"), *STANDARD_COLUMNS))
        command = shlex.join(["python", "-m", "bench.loadgen", *(sys.argv[1:] if argv is None else argv)])
        payload = {"command": command, "machine": machine_info(), "result": result.to_dict()}
        paths = save_results(args.name, payload, f"# {args.name}\n\nCommand: `{command}`\n\n{table}\n")
        print(f"wrote {paths[0]} and {paths[1]}")
    return 0 if result.requests else 1


if __name__ == "__main__":
    sys.exit(main())
