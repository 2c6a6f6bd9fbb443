"""Start the peer servers under test, MLServer and PyTriton, each from its own virtualenv.

The runtimes they load are in bench/peers/ (``mlserver_onnx.py``, ``pytriton_onnx.py``) and their
virtualenvs come from bench/peers/setup_venvs.sh. Each starter returns a started
``bench.servers.ServerProcess`` (ready once every model answers ModelReady), so peers are measured
and stopped exactly like the sidecar and the echo server.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.servers import REPO_ROOT, ServerProcess, free_port


def start_pytriton(
    models: Mapping[str, str | os.PathLike[str]],
    *,
    venv: str | os.PathLike[str] = REPO_ROOT / "bench" / ".venvs" / "pytriton",
    batching: bool = True,
    max_batch_size: int = 64,
    max_queue_delay_us: int = 1000,
    intra_op_threads: int = 1,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    name: str = "pytriton",
    log_dir: str | os.PathLike[str] | None = None,
    startup_timeout_s: float = 180.0,
) -> ServerProcess:
    """Start bench/peers/pytriton_onnx.py in PyTriton's virtualenv; returns once every model is ready."""
    venv = Path(venv)
    python = venv / "bin" / "python"
    if not python.exists():
        raise FileNotFoundError(f"no PyTriton virtualenv at {venv}: run bench/peers/setup_venvs.sh")
    port = free_port()
    argv = [
        str(python),
        str(REPO_ROOT / "bench" / "peers" / "pytriton_onnx.py"),
        "--grpc-port",
        str(port),
        "--http-port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
        "--max-batch-size",
        str(max_batch_size),
        "--max-queue-delay-us",
        str(max_queue_delay_us),
        "--intra-op-threads",
        str(intra_op_threads),
        "--providers",
        ",".join(providers),
    ]
    if not batching:
        argv.append("--no-batching")
    for model, path in models.items():
        argv += ["--model", f"{model}={Path(path).resolve()}"]
    env = dict(os.environ)
    # Triton's Python backend links libpython: the virtualenv's own interpreter library must come first.
    libdir = _libpython_dir(python)
    if libdir:
        env["LD_LIBRARY_PATH"] = libdir + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    server = ServerProcess(
        name, argv, port=port, models=list(models), env=env, startup_timeout_s=startup_timeout_s, log_dir=log_dir
    )
    return server.start()


def start_mlserver(
    models: Mapping[str, str | os.PathLike[str]],
    workdir: str | os.PathLike[str],
    *,
    venv: str | os.PathLike[str] = REPO_ROOT / "bench" / ".venvs" / "mlserver",
    parallel_workers: int = 0,
    max_batch_size: int = 0,
    max_batch_time_s: float = 0.001,
    intra_op_threads: int = 1,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    name: str = "mlserver",
    log_dir: str | os.PathLike[str] | None = None,
    startup_timeout_s: float = 180.0,
    declare_signature: bool = False,
) -> ServerProcess:
    """Start MLServer (its own virtualenv) with bench/peers/mlserver_onnx.py as the runtime of ``models``.

    ``max_batch_size`` > 1 turns on MLServer's adaptive batching (``max_batch_time_s`` its wait);
    ``declare_signature`` lists the models' inputs and outputs in their settings (for a proxy in front).
    """
    from bench.peers.mlserver_onnx import write_repository

    venv = Path(venv)
    exe = venv / "bin" / "mlserver"
    if not exe.exists():
        raise FileNotFoundError(f"no MLServer virtualenv at {venv}: run bench/peers/setup_venvs.sh")
    port = free_port()
    root = write_repository(
        Path(workdir),
        {m: Path(p) for m, p in models.items()},
        grpc_port=port,
        http_port=free_port(),
        parallel_workers=parallel_workers,
        max_batch_size=max_batch_size,
        max_batch_time_s=max_batch_time_s,
        intra_op_threads=intra_op_threads,
        providers=tuple(providers),
        declare_signature=declare_signature,
    )
    env = dict(os.environ)
    peers = str(REPO_ROOT / "bench" / "peers")
    env["PYTHONPATH"] = peers + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    server = ServerProcess(
        name,
        [str(exe), "start", str(root)],
        port=port,
        models=list(models),
        env=env,
        cwd=root,
        startup_timeout_s=startup_timeout_s,
        log_dir=log_dir,
    )
    return server.start()


def _libpython_dir(python: Path) -> str | None:
    """The directory holding the libpython of the interpreter behind ``python`` (a virtualenv's base)."""
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"],
        capture_output=True,
        text=True,
        check=False,
    )
    libdir = out.stdout.strip()
    return libdir if libdir and Path(libdir).is_dir() else None
