"""What ``bench.run_batching`` measures: the benchmark models and the servers under test.

``build_models`` writes the models into a sidecar model repository; ``SERVERS`` names every server
variant (key, table title, whether it batches, how to start it from a ``Context``); a starter returns
one ``ServerProcess`` for all models, or one per model (the echo servers replay one model's response).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import peer_servers, servers
from bench.loadgen_payload import make_infer_response

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

    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, {model.input_name: x})
    return make_infer_response(model.name, dict(zip(names, outputs, strict=True)))


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


def _start_sidecar(
    batching: bool, extra: dict[str, Any] | None = None, suffix: str = ""
) -> Callable[[Context], servers.ServerProcess]:
    def start(ctx: Context) -> servers.ServerProcess:
        return servers.start_sidecar(
            ctx.repository,
            models=list(ctx.models),
            settings={**_sidecar_settings(ctx, batching), **(extra or {})},
            name=f"sidecar-{'batching' if batching else 'direct'}{suffix}",
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


def _start_native_echo(ctx: Context) -> dict[str, servers.ServerProcess]:
    """One C++ echo server per model (bench/native_echo), replaying that model's real response."""
    return _per_model(
        ctx,
        lambda name: servers.start_native_echo(
            response_file=ctx.response_files[name], name=f"echo-native-{name}", log_dir=ctx.log_dir
        ),
    )


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
        return peer_servers.start_mlserver(
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
        return peer_servers.start_pytriton(
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
        ServerSpec("echo-native", "C++ gRPC echo (libgrpc++ callback API)", False, _start_native_echo),
        ServerSpec("echo-batching", "grpc.aio + minimal batcher + ONNX Runtime (floor)", True, _start_echo_batching),
        ServerSpec("sidecar", "sidecar, batching off", False, _start_sidecar(False)),
        ServerSpec("sidecar-batching", "sidecar, batching on", True, _start_sidecar(True)),
        ServerSpec(
            "sidecar-batching-bare",
            "sidecar, batching on, telemetry and monitoring off",
            True,
            _start_sidecar(True, {"telemetry.enabled": False, "monitoring.enabled": False}, "-bare"),
        ),
        ServerSpec(
            "sidecar-batching-aio",
            "sidecar, batching on, on grpc.aio (server.front = grpc.aio)",
            True,
            _start_sidecar(True, {"server.front": "grpc.aio"}, "-aio"),
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
