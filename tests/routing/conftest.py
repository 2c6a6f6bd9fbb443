"""Fixtures for the routing tests: private model repositories (never the shared session one, because
routing changes write a state file into the repository) and a control-API stub."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

from sidecar.protocol._generated import routing_pb2 as rpb
from sidecar.protocol._generated import routing_pb2_grpc as rpb_grpc
from sidecar.testing.models import mlp_model, write_version


async def until(condition, limit_s: float = 10.0) -> None:
    """Poll ``condition`` every 5 ms on the running loop; fail the test after ``limit_s``."""
    for _ in range(int(limit_s / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def write_upstream_version(repo: Path, name: str, folder_version: str, **settings: Any) -> Path:
    """``repo/name/folder_version/upstream.json`` holding ``settings``."""
    vdir = repo / name / folder_version
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "upstream.json").write_text(json.dumps(settings))
    return vdir


def mlp_input(rows: int = 1, seed: int = 0) -> tuple[list[tc.InferInput], np.ndarray]:
    x = np.random.default_rng(seed).random((rows, 64), dtype=np.float32)
    inp = tc.InferInput("input", [rows, 64], "FP32")
    inp.set_data_from_numpy(x)
    return [inp], x


def shares(spec: dict[str, float]) -> list[rpb.Share]:
    return [rpb.Share(version=v, percent=p) for v, p in spec.items()]


class Control:
    """A routing control-API client for tests."""

    def __init__(self, target: str, token: str = "") -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = rpb_grpc.RoutingControlStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None

    def set(self, model: str, weights: dict[str, float], shadows: dict[str, float] | None = None, **kw: Any):
        req = rpb.SetPolicyRequest(model=model, weights=shares(weights), shadows=shares(shadows or {}), **kw)
        return self.stub.SetPolicy(req, metadata=self.metadata, timeout=10).policy

    def get(self, model: str):
        return self.stub.GetPolicy(rpb.GetPolicyRequest(model=model), metadata=self.metadata, timeout=10).policy

    def report(self, model: str = ""):
        req = rpb.GetShadowReportRequest(model=model)
        return self.stub.GetShadowReport(req, metadata=self.metadata, timeout=10).reports

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def mlp_repo(tmp_path: Path) -> Path:
    """mlp 1.0.0, 1.1.0, 1.2.0 (different weights)."""
    repo = tmp_path / "repo"
    for i, version in enumerate(("1.0.0", "1.1.0", "1.2.0")):
        write_version(repo, "mlp", version, mlp_model, seed=i, hidden=32)
    return repo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A server in its own process group; ``stop()`` ends the whole group."""

    def __init__(self, argv: list[str], port: int, model: str, env: dict[str, str] | None = None, **kw: Any) -> None:
        self.port = port
        self.log = tempfile.NamedTemporaryFile(prefix="routing-peer-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=env, **kw
        )
        self.target = f"127.0.0.1:{port}"
        try:
            self._wait(model)
        except BaseException:
            self.stop()
            raise

    def _wait(self, model: str, timeout_s: float = 120.0) -> None:
        client = tc.InferenceServerClient(self.target)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"peer exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if client.is_model_ready(model):
                    return
            except Exception:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"peer not ready after {timeout_s} s:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


def start_sidecar_process(repo: Path, model: str) -> Process:
    port = free_port()
    argv = [sys.executable, "-m", "sidecar", "serve", "--model-repository", str(repo), "--grpc-port", str(port)]
    argv += ["--grpc-address", "127.0.0.1", "--control-port", "0", "--log-level", "WARNING"]
    env = dict(os.environ, SIDECAR_ENGINE__PROVIDERS="CPUExecutionProvider", SIDECAR_ROUTING__STATE_FILE="none")
    return Process(argv, port, model, env=env)
