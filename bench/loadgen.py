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
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import os
import pickle
import select
import shlex
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
MAX_STREAMS_PER_CHANNEL = 64  # gRPC servers allow 100 concurrent streams per connection by default
_MAX_MESSAGE = 256 * 1024 * 1024

CpuProbe = Callable[[], float]


# ---------------------------------------------------------------------------------------------------
# Results


@dataclass
class Result:
    """What one load run measured. Latencies in milliseconds; CPU in seconds over the measured window."""

    mode: str  # "closed" or "open"
    target: str
    duration_s: float  # length of the measured window
    concurrency: int | None = None
    rate_per_s: float | None = None
    rows_per_request: int = 1
    requests: int = 0  # successful requests counted in the window
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    dropped: int = 0  # open loop: scheduled requests not sent because max_in_flight was reached
    latency_ms: dict[str, float] = field(default_factory=dict)  # mean, p50, p90, p95, p99, max
    client_cpu_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)  # probe name -> CPU seconds in the window
    processes: int = 0  # load generator worker processes (0 = ran in the caller's process)
    labels: dict[str, Any] = field(default_factory=dict)  # free-form: server, model, batching, ...

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rps * self.rows_per_request

    @property
    def client_cpu_us_per_request(self) -> float:
        return self.client_cpu_s / self.requests * 1e6 if self.requests else math.nan

    def cpu_us_per_request(self, probe: str) -> float:
        """CPU microseconds per completed request for one of the ``cpu_probes`` (e.g. "server")."""
        seconds = self.cpu_s.get(probe)
        if seconds is None or not self.requests:
            return math.nan
        return seconds / self.requests * 1e6

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["rps"] = round(self.rps, 2)
        out["rows_per_s"] = round(self.rows_per_s, 2)
        out["client_cpu_us_per_request"] = _round(self.client_cpu_us_per_request)
        out["cpu_us_per_request"] = {k: _round(self.cpu_us_per_request(k)) for k in self.cpu_s}
        return out

    def summary(self) -> str:
        lat = self.latency_ms
        load = f"c={self.concurrency}" if self.mode == "closed" else f"rate={self.rate_per_s:g}/s"
        server = self.cpu_us_per_request("server")
        srv = f" server {server:.0f} us/req" if not math.isnan(server) else ""
        return (
            f"{load}: {self.rps:,.0f} req/s {self.rows_per_s:,.0f} rows/s "
            f"p50 {lat.get('p50', math.nan):.2f} p99 {lat.get('p99', math.nan):.2f} "
            f"max {lat.get('max', math.nan):.2f} ms errors {self.errors} dropped {self.dropped} "
            f"client {self.client_cpu_us_per_request:.0f} us/req{srv}"
        )


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 1)


def latency_summary(latencies_ns: np.ndarray) -> dict[str, float]:
    if latencies_ns.size == 0:
        return {}
    ms = latencies_ns.astype(np.float64) / 1e6
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    return {
        "mean": round(float(ms.mean()), 4),
        "p50": round(float(p50), 4),
        "p90": round(float(p90), 4),
        "p95": round(float(p95), 4),
        "p99": round(float(p99), 4),
        "max": round(float(ms.max()), 4),
    }


# ---------------------------------------------------------------------------------------------------
# Requests


def make_infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] = (),
    version: str = "",
    request_id: str = "",
) -> bytes:
    """A serialised ModelInferRequest carrying ``inputs`` as raw_input_contents (binary tensor data)."""
    from sidecar.protocol._generated import grpc_service_pb2 as pb
    from sidecar.types import datatype_of

    msg = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, array in inputs.items():
        array = np.ascontiguousarray(array)
        msg.inputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        msg.raw_input_contents.append(array.tobytes())
    for name in outputs:
        msg.outputs.add(name=name)
    return msg.SerializeToString()


def _as_bytes(request: bytes | Any) -> bytes:
    if isinstance(request, bytes | bytearray | memoryview):
        return bytes(request)
    serialize = getattr(request, "SerializeToString", None)
    if serialize is None:
        raise TypeError(f"request must be bytes or a protobuf message, not {type(request).__name__}")
    return serialize()


# ---------------------------------------------------------------------------------------------------
# The driver (one event loop)


@dataclass(frozen=True)
class _Plan:
    """Everything a driver needs; picklable, so worker processes get the same plan."""

    target: str
    payload: bytes
    method: str
    concurrency: int  # closed loop callers (this driver's share)
    rate_per_s: float  # open loop rate (this driver's share); 0 = closed loop
    timeout_s: float
    max_in_flight: int
    channels: int
    offset_ns: int = 0  # open loop: this driver's phase, so several processes interleave their sends


@dataclass
class _Tally:
    latencies: list[int] = field(default_factory=list)
    errors: collections.Counter = field(default_factory=collections.Counter)
    dropped: int = 0


def _open_channels(plan: _Plan) -> list[grpc.aio.Channel]:
    options = [
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ("grpc.max_send_message_length", _MAX_MESSAGE),
        # One TCP connection per channel: channels with identical arguments would otherwise share one.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    return [grpc.aio.insecure_channel(plan.target, options=options) for _ in range(max(1, plan.channels))]


def _callables(channels: Sequence[grpc.aio.Channel], method: str) -> list[Any]:
    return [ch.unary_unary(method, request_serializer=None, response_deserializer=None) for ch in channels]


async def check_target(target: str, payload: bytes, method: str = INFER_METHOD, timeout_s: float = 30.0) -> bytes:
    """Send one request and return the response bytes; raises ``grpc.aio.AioRpcError`` if it fails."""
    plan = _Plan(target, payload, method, 1, 0.0, timeout_s, 1, 1)
    (channel,) = _open_channels(plan)
    try:
        (call,) = _callables([channel], method)
        return await call(payload, timeout=timeout_s)
    finally:
        await channel.close()


async def _closed_worker(call: Any, plan: _Plan, start_ns: int, ws: int, we: int, tally: _Tally) -> None:
    now = time.monotonic_ns
    payload, timeout = plan.payload, plan.timeout_s
    latencies, errors = tally.latencies, tally.errors
    # Stagger the first sends a little so callers do not move in lock step.
    await asyncio.sleep(max(0.0, (start_ns - now()) / 1e9))
    while True:
        t0 = now()
        if t0 >= we:
            return
        try:
            await call(payload, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            t1 = now()
            if ws <= t1 < we:
                errors[exc.code().name] += 1
            # An error often comes back at once (server refusing): do not spin on it.
            await asyncio.sleep(0.001)
            continue
        t1 = now()
        if ws <= t1 < we:
            latencies.append(t1 - t0)


async def _open_driver(calls: Sequence[Any], plan: _Plan, start_ns: int, ws: int, we: int, tally: _Tally) -> None:
    now = time.monotonic_ns
    payload, timeout = plan.payload, plan.timeout_s
    latencies, errors = tally.latencies, tally.errors
    interval_ns = 1e9 / plan.rate_per_s
    start_ns += plan.offset_ns
    pending: set[asyncio.Task] = set()
    n_calls = len(calls)

    async def one(call: Any, due: int) -> None:
        try:
            await call(payload, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if ws <= due < we:
                errors[exc.code().name] += 1
            return
        if ws <= due < we:
            latencies.append(now() - due)

    i = 0
    while True:
        due = start_ns + int(i * interval_ns)
        if due >= we:
            break
        t = now()
        if due > t:
            await asyncio.sleep((due - t) / 1e9)
            continue
        # Send everything that is due (the event loop's timer resolution is about a millisecond).
        while due <= t and due < we:
            if len(pending) >= plan.max_in_flight:
                if ws <= due < we:
                    tally.dropped += 1
            else:
                task = asyncio.ensure_future(one(calls[i % n_calls], due))
                pending.add(task)
                task.add_done_callback(pending.discard)
            i += 1
            due = start_ns + int(i * interval_ns)
    if pending:
        await asyncio.wait(list(pending), timeout=plan.timeout_s)


async def _drive(plan: _Plan, start_ns: int, ws: int, we: int) -> _Tally:
    """Offer load from ``start_ns`` until ``we``; record what falls in [ws, we)."""
    tally = _Tally()
    channels = _open_channels(plan)
    try:
        calls = _callables(channels, plan.method)
        if plan.rate_per_s > 0:
            await _open_driver(calls, plan, start_ns, ws, we, tally)
        else:
            spread = min(2_000_000, max(0, ws - start_ns) // 10)  # up to 2 ms of stagger
            workers = [
                _closed_worker(
                    calls[k % len(calls)], plan, start_ns + spread * k // max(1, plan.concurrency), ws, we, tally
                )
                for k in range(plan.concurrency)
            ]
            done = asyncio.gather(*workers)
            try:
                await asyncio.wait_for(done, timeout=(we - time.monotonic_ns()) / 1e9 + plan.timeout_s)
            except TimeoutError:
                tally.errors["CLIENT_TIMEOUT_AT_END"] += 1
    finally:
        for ch in channels:
            await ch.close(grace=None)
    return tally


async def _sample(probes: Mapping[str, CpuProbe], at_ns: int) -> dict[str, float]:
    delay = (at_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)
    return {name: probe() for name, probe in probes.items()}


def _process_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


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
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    plan = _Plan(
        target, _as_bytes(request), method, concurrency, 0.0, timeout_s, 0, channels or _default_channels(concurrency)
    )
    return await _run_here(plan, duration_s, warmup_s, rows_per_request, cpu_probes, labels)


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
    if rate_per_s <= 0:
        raise ValueError("rate_per_s must be positive")
    plan = _Plan(
        target,
        _as_bytes(request),
        method,
        0,
        float(rate_per_s),
        timeout_s,
        max_in_flight,
        channels or _default_channels(max(1, int(rate_per_s * 0.01))),
    )
    return await _run_here(plan, duration_s, warmup_s, rows_per_request, cpu_probes, labels)


def _default_channels(concurrency: int) -> int:
    return max(1, math.ceil(concurrency / MAX_STREAMS_PER_CHANNEL))


async def _run_here(
    plan: _Plan,
    duration_s: float,
    warmup_s: float,
    rows_per_request: int,
    cpu_probes: Mapping[str, CpuProbe] | None,
    labels: Mapping[str, Any] | None,
) -> Result:
    probes = dict(cpu_probes or {})
    probes["__client__"] = _process_cpu_s
    start = time.monotonic_ns() + 20_000_000
    ws = start + int(warmup_s * 1e9)
    we = ws + int(duration_s * 1e9)
    driver = asyncio.ensure_future(_drive(plan, start, ws, we))
    try:
        before = await _sample(probes, ws)
        after = await _sample(probes, we)
        tally = await driver
    finally:
        if not driver.done():
            driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await driver
    return _result(plan, duration_s, rows_per_request, labels, [tally], before, after, processes=0)


def _result(
    plan: _Plan,
    duration_s: float,
    rows_per_request: int,
    labels: Mapping[str, Any] | None,
    tallies: Sequence[_Tally],
    before: Mapping[str, float],
    after: Mapping[str, float],
    processes: int,
    concurrency: int | None = None,
    rate_per_s: float | None = None,
) -> Result:
    latencies = np.fromiter(
        (x for t in tallies for x in t.latencies), dtype=np.int64, count=sum(len(t.latencies) for t in tallies)
    )
    errors: collections.Counter = collections.Counter()
    for t in tallies:
        errors.update(t.errors)
    cpu = {k: after[k] - before[k] for k in before}
    client = cpu.pop("__client__")
    closed = plan.rate_per_s <= 0
    return Result(
        mode="closed" if closed else "open",
        target=plan.target,
        duration_s=duration_s,
        concurrency=(concurrency or plan.concurrency) if closed else None,
        rate_per_s=None if closed else (rate_per_s or plan.rate_per_s),
        rows_per_request=rows_per_request,
        requests=int(latencies.size),
        errors=sum(errors.values()),
        error_kinds=dict(errors),
        dropped=sum(t.dropped for t in tallies),
        latency_ms=latency_summary(latencies),
        client_cpu_s=round(client, 4),
        cpu_s={k: round(v, 4) for k, v in cpu.items()},
        processes=processes,
        labels=dict(labels or {}),
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
    if processes <= 0:
        if concurrency is not None:
            coro = closed_loop(
                target,
                request,
                concurrency,
                duration_s,
                method=method,
                warmup_s=warmup_s,
                rows_per_request=rows_per_request,
                timeout_s=timeout_s,
                cpu_probes=cpu_probes,
                channels=channels,
                labels=labels,
            )
        else:
            coro = open_loop(
                target,
                request,
                float(rate_per_s or 0),
                duration_s,
                method=method,
                warmup_s=warmup_s,
                rows_per_request=rows_per_request,
                timeout_s=timeout_s,
                max_in_flight=max_in_flight,
                cpu_probes=cpu_probes,
                channels=channels,
                labels=labels,
            )
        return _run_coro(coro)

    payload = _as_bytes(request)
    if concurrency is not None:
        processes = min(processes, concurrency)
        shares = [concurrency // processes + (1 if k < concurrency % processes else 0) for k in range(processes)]
        plans = [_Plan(target, payload, method, c, 0.0, timeout_s, 0, channels or _default_channels(c)) for c in shares]
    else:
        rate = float(rate_per_s or 0)
        per = rate / processes
        per_channels = channels or _default_channels(max(1, int(per * 0.01)))
        cap = max(1, max_in_flight // processes)
        phase = 1e9 / rate  # the whole rate's interval: worker k sends k intervals after worker 0
        plans = [
            _Plan(target, payload, method, 0, per, timeout_s, cap, per_channels, int(k * phase))
            for k in range(processes)
        ]
    return _run_workers(plans, duration_s, warmup_s, rows_per_request, cpu_probes, labels, concurrency, rate_per_s)


def _run_coro(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


class _Pipe:
    """Length-prefixed pickles over a worker's stdin/stdout (no multiprocessing: nothing re-imports __main__)."""

    def __init__(self, reader: Any, writer: Any) -> None:
        self._reader = reader
        self._writer = writer

    def send(self, obj: Any) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.write(struct.pack("<Q", len(data)) + data)
        self._writer.flush()

    def recv(self) -> Any:
        head = self._reader.read(8)
        if len(head) < 8:
            raise EOFError("load generator worker closed its pipe")
        (size,) = struct.unpack("<Q", head)
        return pickle.loads(self._reader.read(size))


def _worker_main() -> None:
    """Entry point of a load generator worker process: connect, report ready, drive, send the tally."""
    conn = _Pipe(sys.stdin.buffer, sys.stdout.buffer)
    sys.stdout = sys.stderr  # nothing else may write to the pipe
    plan: _Plan = conn.recv()
    try:

        async def main() -> None:
            await check_target(plan.target, plan.payload, plan.method, plan.timeout_s)
            conn.send(("ready", os.getpid()))
            start, ws, we = conn.recv()
            tally = await _drive(plan, start, ws, we)
            conn.send(
                ("done", np.asarray(tally.latencies, dtype=np.int64).tobytes(), dict(tally.errors), tally.dropped)
            )

        _run_coro(main())
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _spawn_worker(plan: _Plan) -> tuple[subprocess.Popen, _Pipe]:
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from bench.loadgen import _worker_main; _worker_main()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=root,
        env=env,
    )
    pipe = _Pipe(proc.stdout, proc.stdin)
    pipe.send(plan)
    return proc, pipe


def _recv_within(proc: subprocess.Popen, pipe: _Pipe, timeout_s: float, what: str) -> Any:
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready:
        raise RuntimeError(f"load generator worker: no {what} within {timeout_s:.0f} s")
    msg = pipe.recv()
    if msg[0] == "error":
        raise RuntimeError(f"load generator worker failed: {msg[1]}")
    return msg


def _run_workers(
    plans: Sequence[_Plan],
    duration_s: float,
    warmup_s: float,
    rows_per_request: int,
    cpu_probes: Mapping[str, CpuProbe] | None,
    labels: Mapping[str, Any] | None,
    concurrency: int | None,
    rate_per_s: float | None,
) -> Result:
    import psutil

    workers: list[tuple[subprocess.Popen, _Pipe]] = []
    try:
        for plan in plans:
            workers.append(_spawn_worker(plan))
        handles = []
        for proc, pipe in workers:
            msg = _recv_within(proc, pipe, 60, "ready message")
            handles.append(psutil.Process(msg[1]))

        def client_cpu() -> float:
            total = 0.0
            for h in handles:
                with contextlib.suppress(psutil.NoSuchProcess):
                    t = h.cpu_times()
                    total += t.user + t.system
            return total

        probes = dict(cpu_probes or {})
        probes["__client__"] = client_cpu
        start = time.monotonic_ns() + 50_000_000
        ws = start + int(warmup_s * 1e9)
        we = ws + int(duration_s * 1e9)
        for _, pipe in workers:
            pipe.send((start, ws, we))
        before = _sleep_and_sample(probes, ws)
        after = _sleep_and_sample(probes, we)
        tallies = []
        for proc, pipe in workers:
            msg = _recv_within(proc, pipe, plans[0].timeout_s + 30, "result")
            tallies.append(_Tally(np.frombuffer(msg[1], dtype=np.int64).tolist(), collections.Counter(msg[2]), msg[3]))
    finally:
        for proc, _ in workers:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            with contextlib.suppress(OSError):
                proc.stdout.close()
    return _result(
        plans[0],
        duration_s,
        rows_per_request,
        labels,
        tallies,
        before,
        after,
        processes=len(plans),
        concurrency=concurrency,
        rate_per_s=rate_per_s,
    )


def _sleep_and_sample(probes: Mapping[str, CpuProbe], at_ns: int) -> dict[str, float]:
    delay = (at_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)
    return {name: probe() for name, probe in probes.items()}


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
    # Run the imported module's main, not this __main__ copy: plans pickled for worker processes must
    # name their classes as bench.loadgen._Plan, which the workers can import.
    from bench.loadgen import main as _main

    sys.exit(_main())
