"""The load generator's driver: one event loop offering load to one target (part of ``bench.loadgen``).

A ``Plan`` says what to offer (picklable, so worker processes get the same one); ``drive`` offers it
from a start time to the end of the measured window, closed loop (``concurrency`` callers back to
back) or open loop (sends at fixed times, latency from each send's schedule), and returns the
``Tally`` of what fell inside the window. ``run_here`` does a whole run in the caller's event loop,
with the CPU probes sampled at the window's edges.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from bench.loadgen_result import Result, Tally, build_result

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
MAX_STREAMS_PER_CHANNEL = 64  # gRPC servers allow 100 concurrent streams per connection by default
_MAX_MESSAGE = 256 * 1024 * 1024

CpuProbe = Callable[[], float]


@dataclass(frozen=True)
class Plan:
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


def _open_channels(plan: Plan) -> list[grpc.aio.Channel]:
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
    plan = Plan(target, payload, method, 1, 0.0, timeout_s, 1, 1)
    (channel,) = _open_channels(plan)
    try:
        (call,) = _callables([channel], method)
        return await call(payload, timeout=timeout_s)
    finally:
        await channel.close()


async def _closed_worker(call: Any, plan: Plan, start_ns: int, ws: int, we: int, tally: Tally) -> None:
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


async def _open_driver(calls: Sequence[Any], plan: Plan, start_ns: int, ws: int, we: int, tally: Tally) -> None:
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


async def drive(plan: Plan, start_ns: int, ws: int, we: int) -> Tally:
    """Offer load from ``start_ns`` until ``we``; record what falls in [ws, we)."""
    tally = Tally()
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


def default_channels(concurrency: int) -> int:
    """Enough channels (one TCP connection each) that none carries more than MAX_STREAMS_PER_CHANNEL calls."""
    return max(1, math.ceil(concurrency / MAX_STREAMS_PER_CHANNEL))


async def run_here(
    plan: Plan,
    duration_s: float,
    warmup_s: float,
    rows_per_request: int,
    cpu_probes: Mapping[str, CpuProbe] | None,
    labels: Mapping[str, Any] | None,
) -> Result:
    """One whole run of ``plan`` in the running event loop; the client CPU is this process's."""
    probes = dict(cpu_probes or {})
    probes["__client__"] = _process_cpu_s
    start = time.monotonic_ns() + 20_000_000
    ws = start + int(warmup_s * 1e9)
    we = ws + int(duration_s * 1e9)
    driver = asyncio.ensure_future(drive(plan, start, ws, we))
    try:
        before = await _sample(probes, ws)
        after = await _sample(probes, we)
        tally = await driver
    finally:
        if not driver.done():
            driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await driver
    return build_result(plan, duration_s, rows_per_request, labels, [tally], before, after, processes=0)


def run_coro(coro: Any) -> Any:
    """Run ``coro`` to completion in a new event loop (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
