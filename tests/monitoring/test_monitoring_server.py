"""End to end: `sidecar profile`, then a real sidecar watched through its control API, driven by tritonclient."""

from __future__ import annotations

import io
import json
import math
from argparse import Namespace
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

from sidecar.cli import main as cli_main
from sidecar.monitoring.commands import run_status
from sidecar.protocol._generated import monitoring_pb2 as mpb
from sidecar.protocol._generated import monitoring_pb2_grpc as mpb_grpc
from sidecar.testing.models import mlp_model, write_version
from sidecar.testing.server import ServerThread, config_for_tests

FEATURES = 8
ROWS = 8  # rows per request
SHIFTED = ("input[2]", "input[5]")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("monitoring-repo")
    write_version(root, "drifty", "1.0.0", mlp_model, features=FEATURES, hidden=16, classes=3)
    write_version(root, "broken", "1.0.0", mlp_model, features=FEATURES, hidden=16, classes=3)
    train = np.random.default_rng(0).normal(0.0, 1.0, (4000, FEATURES)).astype(np.float32)
    np.save(root / "train.npy", train)
    for model in ("drifty", "broken"):
        rc = cli_main(
            ["profile", "--model-repository", str(root), "--model", model, "--version", "1.0.0",
             "--data", str(root / "train.npy")]
        )  # fmt: skip
        assert rc == 0
    broken = root / "broken" / "1.0.0" / "reference_profile.json"
    raw = json.loads(broken.read_text())
    raw["sources"][0]["features"][3]["edges"][4] = 99.0  # no longer sorted
    broken.write_text(json.dumps(raw))
    return root


@pytest.fixture(scope="module")
def server(repo: Path):
    monitoring = {
        "window_requests": 100,
        "window_s": 3600,
        "alert_after_windows": 2,
        "clear_after_windows": 2,
    }
    with ServerThread(config_for_tests(str(repo), monitoring=monitoring)) as srv:
        yield srv


def send(client: tc.InferenceServerClient, requests: int, shift: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(requests):
        x = rng.normal(0.0, 1.0, (ROWS, FEATURES)).astype(np.float32)
        x[:, 2] += shift
        x[:, 5] -= shift
        inp = tc.InferInput("input", [ROWS, FEATURES], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("drifty", [inp])
        assert result.as_numpy("probabilities").shape == (ROWS, 3)


def report(server) -> mpb.VersionReport:
    with grpc.insecure_channel(server.control_url) as channel:
        stub = mpb_grpc.MonitoringControlStub(channel)
        (version,) = stub.GetDriftReport(mpb.GetDriftReportRequest(model="drifty"), timeout=10).versions
    return version


def alerts(r: mpb.VersionReport) -> dict[tuple[str, str], mpb.Alert]:
    return {(a.feature, a.statistic): a for a in r.alerts}


def input_alert_features(r: mpb.VersionReport) -> set[str]:
    return {a.feature for a in r.alerts if a.feature.startswith("input[")}


def test_drift_alerts_fire_on_exactly_the_shifted_features_then_clear(server):
    client = tc.InferenceServerClient(server.url)

    send(client, 300, 0.0, seed=1)
    r = report(server)
    assert r.has_reference and r.kernel in ("native", "numpy")
    assert r.requests_total == 300 and r.rows_total == 300 * ROWS
    assert list(r.alerts) == []
    count = next(w for w in r.windows if w.kind == "count")
    assert count.requests == 100 and count.rows == 100 * ROWS and count.reference_rows == 4000
    assert count.status in ("ok", "warn")
    psi = {f.feature: next(s for s in f.statistics if s.name == "psi") for f in count.features}
    assert set(psi) >= {f"input[{j}]" for j in range(FEATURES)} | {"label", "probabilities.confidence"}
    assert all(s.value < 0.1 and s.alert_threshold >= 0.25 and s.status == "ok" for s in psi.values())

    send(client, 300, 3.0, seed=2)
    r = report(server)
    assert input_alert_features(r) == set(SHIFTED)
    for feature in SHIFTED:
        alert = alerts(r)[(feature, "psi")]
        assert alert.value > 0.25 and alert.threshold == pytest.approx(0.25)
        assert alert.model == "drifty" and alert.version == "1.0.0" and alert.window == "count"
        assert alert.windows >= 2
    count = next(w for w in r.windows if w.kind == "count")
    shifted = {f.feature: f for f in count.features}
    assert shifted["input[2]"].status == "alert" and shifted["input[0]"].status in ("ok", "warn")
    ks = next(s for s in shifted["input[5]"].statistics if s.name == "ks")
    assert ks.status == "alert" and ks.p_value < 0.05 and not math.isnan(ks.value)

    out = io.StringIO()
    assert run_status(Namespace(control=server.control_url, token="", model="", version="", all=False), out) == 0
    text = out.getvalue()
    assert "drifty 1.0.0: ALERT" in text and "ALERT input[2] psi" in text and "ALERT input[5] psi" in text

    send(client, 300, 0.0, seed=3)
    r = report(server)
    assert list(r.alerts) == []
    assert r.requests_total == 900


def test_schema_violations_are_counted_and_answered_with_invalid_argument(server):
    client = tc.InferenceServerClient(server.url)
    before = report(server).schema_violations_total
    bad = tc.InferInput("input", [2, FEATURES + 1], "FP32")
    bad.set_data_from_numpy(np.zeros((2, FEATURES + 1), np.float32))
    for _ in range(3):
        with pytest.raises(tc.InferenceServerException) as info:
            client.infer("drifty", [bad])
        assert "StatusCode.INVALID_ARGUMENT" in str(info.value.status()) and "dimension 1" in info.value.message()
    assert report(server).schema_violations_total == before + 3


def test_malformed_profile_fails_the_version_at_load_with_a_clear_reason(server):
    client = tc.InferenceServerClient(server.url)
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["broken"].state == "UNAVAILABLE"
    assert "reference_profile.json" in index["broken"].reason and "sorted" in index["broken"].reason
    with grpc.insecure_channel(server.control_url) as channel:
        stub = mpb_grpc.MonitoringControlStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetDriftReport(mpb.GetDriftReportRequest(model="broken"), timeout=10)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND and "not monitored" in info.value.details()
