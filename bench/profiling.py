"""Where a server's time goes: sample it with py-spy while it is under load, summarise per thread and function.

py-spy attaches to a running process from outside (no restart, no instrumentation, little overhead),
so the profile covers exactly the load window. It is a separate binary (``pip install py-spy``,
found on PATH or next to the running Python); without it ``find_py_spy()`` returns None and callers
skip profiling. Samples are taken only while a thread is running, so shares are shares of CPU.

    spy = PySpy.attach(server.pid, duration_s=10, out=Path("sidecar.txt"))
    ... offer load ...
    summary = spy.summary()   # {"threads": {...}, "self": [...], "inclusive": [...]} for the main thread

``profile_cell`` does both for a benchmark: one more closed-loop cell against a server with py-spy
attached (kept out of the tables, since py-spy takes CPU of its own).
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.servers import ServerProcess

# Frames every main-thread stack starts with: not interesting as "inclusive" entries.
_GENERIC = ("<module>", "_run_module_as_main", "_run_code", "main (", "_serve (", "run (asyncio", "Runner.run")


def find_py_spy(hint: str | None = None) -> str | None:
    """The py-spy executable: ``hint``, then PATH, then beside this interpreter; None if absent."""
    for candidate in (hint, shutil.which("py-spy"), str(Path(sys.executable).with_name("py-spy"))):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class PySpy:
    proc: subprocess.Popen
    out: Path

    @classmethod
    def attach(
        cls,
        pid: int,
        duration_s: float,
        out: Path,
        *,
        rate_hz: int = 250,
        native: bool = False,
        executable: str | None = None,
    ) -> PySpy:
        exe = find_py_spy(executable)
        if exe is None:
            raise FileNotFoundError("py-spy not found (pip install py-spy, or pass its path)")
        cmd = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(duration_s))),
            "--rate",
            str(rate_hz),
            "--format",
            "raw",
            "--output",
            str(out),
            "--threads",
            "--function",
        ]
        # --native pauses the process for each sample (py-spy cannot unwind C stacks otherwise).
        cmd.append("--native" if native else "--nonblocking")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return cls(proc, out)

    def wait(self, timeout_s: float = 60.0) -> None:
        try:
            _, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise RuntimeError("py-spy did not finish in time") from None
        if self.proc.returncode != 0 or not self.out.exists():
            raise RuntimeError(f"py-spy failed ({self.proc.returncode}): {err.decode(errors='replace')[-500:]}")

    def summary(self, top: int = 20, thread: str = "MainThread") -> dict[str, Any]:
        self.wait()
        return summarize(self.out.read_text(), top=top, thread=thread)


def profile_cell(
    server: ServerProcess,
    payload: bytes,
    out: Path,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    processes: int,
    label: str,
    timeout_s: float = 30.0,
    top: int = 20,
    native: bool = False,
    executable: str | None = None,
) -> dict[str, Any]:
    """One closed-loop cell at ``concurrency`` with py-spy attached to ``server`` for the whole cell.

    Returns the ``summary`` plus the load and the req/s while profiled, or ``{"error": ...}`` when
    py-spy is missing or fails. ``label`` starts the progress line (e.g. "[sidecar-batching] mlp").
    """
    from bench import loadgen

    try:
        spy = PySpy.attach(server.pid, warmup_s + duration_s, out, native=native, executable=executable)
    except FileNotFoundError as exc:
        return {"error": str(exc)}
    result = loadgen.run(
        server.target,
        payload,
        concurrency=concurrency,
        duration_s=duration_s,
        warmup_s=warmup_s,
        processes=processes,
        timeout_s=timeout_s,
    )
    try:
        summary = spy.summary(top=top)
    except RuntimeError as exc:
        return {"error": str(exc)}
    print(f"{label} profiled: {result.summary()}", flush=True)
    return {**summary, "load": f"c={concurrency}", "rps_while_profiled": round(result.rps, 1)}


def summarize(raw: str, top: int = 20, thread: str = "MainThread") -> dict[str, Any]:
    """Per-thread sample shares, and the top self / inclusive functions of ``thread`` (py-spy raw format)."""
    per_thread: collections.Counter = collections.Counter()
    self_time: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        head = frames[0]
        name = head.split(": ", 1)[1] if ": " in head else head
        per_thread[name] += count
        if name != thread:
            continue
        calls = frames[1:]
        if calls:
            self_time[calls[-1]] += count
        for frame in set(calls):
            if not frame.startswith(_GENERIC):
                inclusive[frame] += count
    total = sum(per_thread.values()) or 1
    in_thread = per_thread.get(thread, 0) or 1
    return {
        "samples": total,
        "threads": {k: round(v / total, 3) for k, v in per_thread.most_common()},
        "thread": thread,
        "self": [{"function": f, "share": round(n / in_thread, 3)} for f, n in self_time.most_common(top)],
        "inclusive": [{"function": f, "share": round(n / in_thread, 3)} for f, n in inclusive.most_common(top)],
    }


def render_markdown(summary: dict[str, Any], top: int = 12) -> str:
    """Threads line plus two small tables (self and inclusive shares of the profiled thread)."""
    from bench.report import markdown_table

    threads = ", ".join(f"{k} {v:.0%}" for k, v in list(summary["threads"].items())[:8])
    parts = [
        f"py-spy, {summary['samples']:,} samples while running; share of samples by thread: {threads}.",
        "",
        f"{summary['thread']}, self time (top {top}):",
        "",
        markdown_table(summary["self"][:top], (("function", "function"), ("share", "share"))),
        "",
        f"{summary['thread']}, inclusive time (top {top}):",
        "",
        markdown_table(summary["inclusive"][:top], (("function", "function"), ("share", "share"))),
    ]
    return "\n".join(parts)
