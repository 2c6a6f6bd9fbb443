"""Drift, data-quality and alert metrics of a real monitored sidecar, read from its Prometheus endpoint."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from prometheus_client.parser import text_string_to_metric_families

from sidecar.cli import main as cli_main
from sidecar.testing.models import mlp_model, write_version
from sidecar.testing.server import ServerThread, config_for_tests

FEATURES = 8
ROWS = 8


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("drift-repo")
    write_version(root, "drifty", "1.0.0", mlp_model, features=FEATURES, hidden=16, classes=3)
    np.save(root / "train.npy", np.random.default_rng(0).normal(0.0, 1.0, (4000, FEATURES)).astype(np.float32))
    argv = ["profile", "--model-repository", str(root), "--model", "drifty", "--version", "1.0.0"]
    assert cli_main([*argv, "--data", str(root / "train.npy")]) == 0
    return root


def _scrape(port: int) -> dict[str, list]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def _value(samples: dict[str, list], name: str, **labels: str) -> float | None:
    for s in samples.get(name, ()):
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def test_drift_quality_and_alert_metrics(repo):
    monitoring = {"window_requests": 50, "alert_after_windows": 2}
    telemetry = {"metrics_port": 0, "metrics_host": "127.0.0.1"}
    with ServerThread(config_for_tests(str(repo), monitoring=monitoring, telemetry=telemetry)) as srv:
        client = tc.InferenceServerClient(srv.url)
        rng = np.random.default_rng(1)
        requests = 150
        for i in range(requests):
            x = rng.normal(0.0, 1.0, (ROWS, FEATURES)).astype(np.float32)
            x[:, 2] += 3.0  # strong drift on one feature
            if i == 0:
                x[0, 4] = np.nan  # one missing value
            inp = tc.InferInput("input", [ROWS, FEATURES], "FP32")
            inp.set_data_from_numpy(x)
            client.infer("drifty", [inp])
        port = srv.app.telemetry.prometheus_port
        deadline = time.monotonic() + 15
        while True:
            samples = _scrape(port)
            bins = [s for s in samples.get("sidecar_feature_bin_count_total", ()) if s.labels["feature"] == "input[2]"]
            folded = sum(s.value for s in bins) == requests * ROWS  # every request folded in by the monitor
            if folded and (_value(samples, "sidecar_alerts_active", model_name="drifty") or 0) >= 1:
                break
            assert time.monotonic() < deadline, "no alert became active"
            time.sleep(0.1)  # monitoring folds on its own thread

    version = {"model_name": "drifty", "model_version": "1.0.0"}
    psi = _value(samples, "sidecar_drift_psi", **version, feature="input[2]")
    calm = _value(samples, "sidecar_drift_psi", **version, feature="input[3]")
    assert psi is not None and psi > 0.25
    assert calm is not None and calm < psi
    assert _value(samples, "sidecar_drift_statistic", **version, feature="input[2]", statistic="psi") == psi
    assert _value(samples, "sidecar_drift_alert", **version, feature="input[2]", statistic="psi") == 1
    # Cumulative bin counters: every observed value of the feature is in exactly one bin.
    assert len(bins) >= 10 and len({s.labels["bin"] for s in bins}) == len(bins)
    assert sum(s.value for s in bins) == requests * ROWS
    shares = [s.value for s in samples["sidecar_feature_bin_reference"] if s.labels.get("feature") == "input[2]"]
    assert abs(sum(shares) - 1.0) < 1e-9
    assert _value(samples, "sidecar_data_quality_issues_total", **version, feature="input[4]", check="missing") == 1
    assert _value(samples, "sidecar_data_quality_issues_total", **version, feature="input[2]", check="out_of_range")
    assert _value(samples, "sidecar_data_quality_issues_total", **version, feature="*", check="schema_violation") == 0
