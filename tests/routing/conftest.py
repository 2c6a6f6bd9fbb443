"""Fixtures for the routing tests: private model repositories (never the shared session one, because
routing changes write a state file into the repository) and a control-API stub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

from sidecar.protocol._generated import routing_pb2 as rpb
from sidecar.protocol._generated import routing_pb2_grpc as rpb_grpc
from sidecar.testing.models import mlp_model, write_version


def write_upstream_version(repo: Path, name: str, version: str, **settings: Any) -> Path:
    vdir = repo / name / version
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
