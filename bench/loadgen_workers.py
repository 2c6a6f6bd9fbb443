"""The load generator's worker processes (part of ``bench.loadgen``): the load runs outside the caller.

``run_workers`` spawns one worker per ``Plan`` (``python -c``, not multiprocessing, so nothing
re-imports the caller's ``__main__``), waits until each has answered one request, sends them all the
same start time and window, samples the CPU probes (the workers' CPU is the client's) at the
window's edges, and merges their tallies. Messages are length-prefixed pickles over each worker's
stdin/stdout (``_Pipe``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
import select
import struct
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadgen_driver import CpuProbe, Plan, check_target, drive, run_coro
from bench.loadgen_result import Result, Tally, build_result


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


def worker_main() -> None:
    """Entry point of a load generator worker process: connect, report ready, drive, send the tally."""
    conn = _Pipe(sys.stdin.buffer, sys.stdout.buffer)
    sys.stdout = sys.stderr  # nothing else may write to the pipe
    plan: Plan = conn.recv()
    try:

        async def main() -> None:
            await check_target(plan.target, plan.payload, plan.method, plan.timeout_s)
            conn.send(("ready", os.getpid()))
            start, ws, we = conn.recv()
            tally = await drive(plan, start, ws, we)
            conn.send(
                ("done", np.asarray(tally.latencies, dtype=np.int64).tobytes(), dict(tally.errors), tally.dropped)
            )

        run_coro(main())
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _spawn_worker(plan: Plan) -> tuple[subprocess.Popen, _Pipe]:
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from bench.loadgen_workers import worker_main; worker_main()"],
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


def run_workers(
    plans: Sequence[Plan],
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
            tallies.append(Tally(np.frombuffer(msg[1], dtype=np.int64).tolist(), collections.Counter(msg[2]), msg[3]))
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
    return build_result(
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
