"""Start, watch and stop servers under test as their own processes; read their CPU time.

Every benchmark that needs a server uses this module, so they all start and measure servers the
same way::

    from bench.servers import start_sidecar

    with start_sidecar(repo, env={"SIDECAR_BATCHING__ENABLED": "false"}) as server:
        result = loadgen.run(server.target, payload, concurrency=64, duration_s=5,
                             cpu_probes={"server": server.cpu_seconds})

A server is ready when it answers the Open Inference Protocol ``ModelReady`` for each model named in
``models`` (or ``ServerReady`` when none are named). ``cpu_seconds()`` is user + system CPU of the
process and all its descendants (MLServer's workers, Triton under PyTriton), live ones read from
/proc and finished-and-reaped ones from the parent's ``children_*`` times. Output goes to a log file
(``log_path``) whose tail is shown when a server fails to start. ``stop()`` sends SIGTERM to the
process group, waits, then SIGKILLs whatever is left, so nothing outlives the benchmark.

This module starts the sidecar and the echo server; the peers (MLServer, PyTriton) are started by
``bench.peer_servers`` as ``ServerProcess`` objects too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
_READY_METHOD = "/inference.GRPCInferenceService/ServerReady"
_MODEL_READY_METHOD = "/inference.GRPCInferenceService/ModelReady"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (reaped children included)."""
    try:
        root = psutil.Process(pid)
        t = root.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        kids = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    for child in kids:
        with contextlib.suppress(psutil.NoSuchProcess):
            ct = child.cpu_times()
            # A live child's own time; its reaped children are in its children_* fields.
            total += ct.user + ct.system + ct.children_user + ct.children_system
    return total


def _model_ready_request(name: str) -> bytes:
    """ModelReadyRequest{name=1} serialised by hand (no generated code needed)."""
    raw = name.encode()
    return b"\x0a" + _varint(len(raw)) + raw


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _is_ready(response: bytes) -> bool:
    # ServerReadyResponse / ModelReadyResponse: bool ready = 1 -> b"\x08\x01" when true.
    return response == b"\x08\x01"


class ServerProcess:
    """A server under test in its own process group. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port: int,
        models: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 120.0,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.models = tuple(models)
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.startup_timeout_s = startup_timeout_s
        log_root = Path(log_dir) if log_dir else Path(tempfile.gettempdir())
        log_root.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        self.log_path = log_root / f"{safe}-{os.getpid()}-{port}.log"
        self.proc: subprocess.Popen | None = None
        self.startup_s = 0.0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """Cumulative CPU seconds of the server and all its descendant processes."""
        return process_tree_cpu(self.pid)

    def start(self) -> ServerProcess:
        if self.proc is not None:
            raise RuntimeError(f"{self.name} was already started")
        began = time.monotonic()
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        with grpc.insecure_channel(self.target) as channel:
            server_ready = channel.unary_unary(_READY_METHOD, request_serializer=None, response_deserializer=None)
            model_ready = channel.unary_unary(_MODEL_READY_METHOD, request_serializer=None, response_deserializer=None)
            pending = list(self.models)
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with code {self.proc.returncode} before it was ready; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    if pending:
                        if _is_ready(model_ready(_model_ready_request(pending[0]), timeout=2)):
                            pending.pop(0)
                            continue
                    elif _is_ready(server_ready(b"", timeout=2)):
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.name} not ready after {self.startup_timeout_s:.0f} s; log {self.log_path}:\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(0.2)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM the process group, wait ``timeout_s``, SIGKILL what is left. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        descendants: list[psutil.Process] = []
        with contextlib.suppress(ProcessLookupError, PermissionError, psutil.Error):  # exited already: none
            descendants = psutil.Process(proc.pid).children(recursive=True)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # Children that left the process group (Triton's stubs do not, but be sure).
        _, alive = psutil.wait_procs(descendants, timeout=3)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode

    def __enter__(self) -> ServerProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sidecar_env(settings: Mapping[str, Any] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for ``sidecar serve``: ``{"batching.enabled": False}`` -> ``SIDECAR_BATCHING__ENABLED=false``."""
    env = dict(os.environ if base is None else base)
    for key, value in (settings or {}).items():
        section, _, name = key.partition(".")
        var = f"SIDECAR_{section.upper()}__{name.upper()}" if name else f"SIDECAR_{section.upper()}"
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        env[var] = str(value)
    return env


def start_sidecar(
    repository: str | os.PathLike[str],
    *,
    models: Sequence[str] = (),
    settings: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    port: int | None = None,
    python: str = sys.executable,
    name: str = "sidecar",
    log_dir: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
    python_args: Sequence[str] = (),
    startup_timeout_s: float = 120.0,
    cwd: str | os.PathLike[str] = REPO_ROOT,
) -> ServerProcess:
    """Start ``sidecar serve`` on a free port (or ``port``) and return it once ``models`` are ready.

    ``settings`` are configuration keys ("batching.enabled": False, "engine.executor_threads": 2, ...)
    passed as SIDECAR_* environment variables over ``env`` (default: this process's environment).
    ``python_args`` go before ``-m sidecar``: ``["-m", "cProfile", "-o", "out.prof"]`` profiles the event
    loop thread (the profile is written when the server exits on SIGTERM). ``cwd``: the checkout whose
    ``sidecar`` package (and extensions, built in place) serves: this one by default (``bench.ab_trees``
    starts another beside it).
    """
    port = port or free_port()
    argv = [
        python,
        *python_args,
        "-m",
        "sidecar",
        "serve",
        "--model-repository",
        str(repository),
        "--grpc-port",
        str(port),
        "--grpc-address",
        "127.0.0.1",
        "--control-port",
        "0",
        "--log-level",
        "WARNING",
    ]
    if config_file is not None:
        argv += ["--config", str(config_file)]
    argv += list(extra_args)
    proc_env = sidecar_env(settings, env)
    proc_env.setdefault("PYTHONUNBUFFERED", "1")
    server = ServerProcess(
        name,
        argv,
        port=port,
        models=models,
        env=proc_env,
        cwd=cwd,
        startup_timeout_s=startup_timeout_s,
        log_dir=log_dir,
    )
    return server.start()


def start_echo(
    *,
    response_file: str | os.PathLike[str] | None = None,
    parse: bool = False,
    port: int | None = None,
    python: str = sys.executable,
    name: str = "echo",
    log_dir: str | os.PathLike[str] | None = None,
    batch_model: str | os.PathLike[str] | None = None,
    max_batch_size: int = 64,
    max_queue_delay_ms: float = 1.0,
    intra_op_threads: int = 1,
    reuse_port: bool = False,
) -> ServerProcess:
    """Start ``bench.echo_server`` (the bare grpc.aio ceiling) on a free port and return it once ready.

    With ``batch_model`` it is the floor of batching on grpc.aio instead (see the module); with
    ``reuse_port`` it shares ``port`` with other echo servers started so (``SO_REUSEPORT``)."""
    port = port or free_port()
    argv = [python, "-m", "bench.echo_server", "--port", str(port)]
    if response_file is not None:
        argv += ["--response-file", str(response_file)]
    if parse:
        argv.append("--parse")
    if batch_model is not None:
        argv += ["--batch-model", str(batch_model), "--max-batch-size", str(max_batch_size)]
        argv += ["--max-queue-delay-ms", str(max_queue_delay_ms), "--intra-op-threads", str(intra_op_threads)]
    if reuse_port:
        argv.append("--reuse-port")
    return ServerProcess(name, argv, port=port, cwd=REPO_ROOT, log_dir=log_dir).start()


NATIVE_ECHO_DIR = REPO_ROOT / "bench" / "native_echo"


def build_native_echo() -> Path:
    """The C++ echo server's executable (``bench/native_echo``), built on first use.

    Raises RuntimeError with the build's own words where it cannot be built (no g++, no libgrpc++-dev)."""
    exe = NATIVE_ECHO_DIR / "build" / "echo"
    source = NATIVE_ECHO_DIR / "echo.cc"
    if exe.exists() and exe.stat().st_mtime >= source.stat().st_mtime:
        return exe
    done = subprocess.run(["bash", str(NATIVE_ECHO_DIR / "build.sh")], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cannot build the C++ echo server: {(done.stderr or done.stdout).strip()[-500:]}")
    return exe


def start_native_echo(
    *,
    response_file: str | os.PathLike[str],
    port: int | None = None,
    name: str = "echo-native",
    log_dir: str | os.PathLike[str] | None = None,
) -> ServerProcess:
    """Start the C++ gRPC echo server (``bench/native_echo/echo.cc``: libgrpc++'s callback API answering
    every ModelInfer with ``response_file``), built first if needed; returned once it answers ServerReady."""
    exe = build_native_echo()
    port = port or free_port()
    return ServerProcess(name, [str(exe), str(port), str(response_file)], port=port, log_dir=log_dir).start()


def _unary(target: str, method: str, request: Any, response_type: Any, timeout_s: float) -> Any:
    """One ``inference.GRPCInferenceService`` call on a channel of its own; None if it fails."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            f"/inference.GRPCInferenceService/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        try:
            return call(request, timeout=timeout_s)
        except grpc.RpcError:
            return None


def model_statistics(target: str, model: str, timeout_s: float = 5.0) -> tuple[int, int] | None:
    """(inference_count, execution_count) summed over versions, from Triton's ModelStatistics; None if absent.

    inference_count / execution_count is the mean batch size the server formed (Triton, PyTriton, sidecar).
    """
    timings = model_timings(target, model, timeout_s)
    return None if timings is None else (timings["inferences"], timings["executions"])


def mean_batch(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Rows per engine run between two ``model_statistics``; None if either is missing or nothing ran."""
    if not before or not after or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def model_timings(target: str, model: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """Triton's ModelStatistics of ``model`` summed over its versions: counts, cumulative nanoseconds and the
    executions per batch size (``batches``); None if absent. ``timings_between`` turns two into means."""
    from sidecar.protocol._generated import grpc_service_pb2 as pb

    resp = _unary(
        target, "ModelStatistics", pb.ModelStatisticsRequest(name=model), pb.ModelStatisticsResponse, timeout_s
    )
    if resp is None or not resp.model_stats:
        return None
    out: dict[str, Any] = {"inferences": 0, "executions": 0, "batches": {}}
    for s in resp.model_stats:
        out["inferences"] += s.inference_count
        out["executions"] += s.execution_count
        st = s.inference_stats
        for name in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
            d = getattr(st, name)
            out[f"{name}_ns"] = out.get(f"{name}_ns", 0) + d.ns
            out[f"{name}_count"] = out.get(f"{name}_count", 0) + d.count
        for b in s.batch_stats:
            out["batches"][b.batch_size] = out["batches"].get(b.batch_size, 0) + b.compute_infer.count
    return out


def timings_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Means over the window between two ``model_timings``: server-side request time and queue time per
    request, merge (compute_input) and engine (compute_infer) time per execution, and the executions per
    batch size."""

    def d(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    executions = d("executions") or float("nan")
    sizes = {k: v - before["batches"].get(k, 0) for k, v in after["batches"].items()}
    return {
        "request_ms": d("success_ns") / (d("success_count") or float("nan")) / 1e6,
        "queue_ms": d("queue_ns") / (d("queue_count") or float("nan")) / 1e6,
        "merge_ms_per_batch": d("compute_input_ns") / executions / 1e6,
        "engine_ms_per_batch": d("compute_infer_ns") / executions / 1e6,
        "batch_sizes": dict(sorted(((k, v) for k, v in sizes.items() if v), key=lambda kv: -kv[1])[:8]),
    }


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of one process's threads, grouped by OS thread name; the main thread is "main".

    For a Python server the main thread runs the event loop (gRPC ingest, decoding, batching); the
    others are named by whoever started them (gRPC's own threads, ONNX Runtime's, executor threads
    share the process name).
    """
    out: dict[str, float] = {}
    try:
        threads = psutil.Process(pid).threads()
    except psutil.NoSuchProcess:
        return out
    for t in threads:
        if t.id == pid:
            name = "main"
        else:
            try:
                name = Path(f"/proc/{pid}/task/{t.id}/comm").read_text().strip() or "?"
            except OSError:
                continue
        out[name] = out.get(name, 0.0) + t.user_time + t.system_time
    return out


def model_provider(target: str, model: str, timeout_s: float = 5.0) -> str | None:
    """The execution provider a sidecar model runs on (its ModelMetadata parameter "provider")."""
    from sidecar.protocol._generated import grpc_service_pb2 as pb

    resp = _unary(target, "ModelMetadata", pb.ModelMetadataRequest(name=model), pb.ModelMetadataResponse, timeout_s)
    if resp is None:
        return None
    param = resp.parameters.get("provider")
    return param.string_param if param is not None else None
