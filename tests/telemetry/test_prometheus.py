"""A real Prometheus server (Debian's prometheus, started here on loopback) scrapes a real sidecar."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as tc

from sidecar.testing.server import ServerThread, config_for_tests


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout_s: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return resp.read()


@pytest.fixture(scope="module")
def sidecar(model_repository):
    cfg = config_for_tests(str(model_repository), telemetry={"metrics_port": 0, "metrics_host": "127.0.0.1"})
    with ServerThread(cfg) as srv:
        yield srv


@pytest.fixture(scope="module")
def prometheus(sidecar, tmp_path_factory):
    binary = shutil.which("prometheus")
    assert binary, "the prometheus binary is missing: run scripts/system-deps"
    work = tmp_path_factory.mktemp("prometheus")
    port = _free_port()
    (work / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: sidecar\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{sidecar.app.telemetry.prometheus_port}']\n"
    )
    log = open(work / "prometheus.log", "wb")  # noqa: SIM115 - closed after the process
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _get(f"{base}/-/ready", 1.0):
                    break
            except OSError:
                pass
            assert proc.poll() is None, (work / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)  # an external process: nothing to wait on but its HTTP API
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _query(base: str, promql: str) -> list[dict]:
    body = json.loads(_get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"))
    assert body["status"] == "success", body
    return body["data"]["result"]


def _wait_query(base: str, promql: str, ok, timeout_s: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        result = _query(base, promql)
        if ok(result):
            return result
        assert time.monotonic() < deadline, f"{promql}: {result}"
        time.sleep(0.5)  # the next scrape is at most 1 s away


def test_prometheus_scrapes_the_request_counter_with_its_labels(sidecar, prometheus):
    client = tc.InferenceServerClient(sidecar.url)
    x = np.ones((4, 64), np.float32)
    inp = tc.InferInput("input", [4, 64], "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(7):
        client.infer("mlp", [inp], model_version="1.9.0")
    result = _wait_query(
        prometheus,
        'sidecar_inference_requests_total{model_name="mlp",model_version="1.9.0",outcome="success"}',
        lambda r: r and float(r[0]["value"][1]) >= 7,
    )
    labels = result[0]["metric"]
    assert labels["job"] == "sidecar"
    assert labels["model_name"] == "mlp" and labels["model_version"] == "1.9.0" and labels["outcome"] == "success"
    rows = _wait_query(
        prometheus, 'sidecar_inference_rows_total{model_version="1.9.0"}', lambda r: r and float(r[0]["value"][1]) >= 28
    )
    assert float(rows[0]["value"][1]) == 28.0
    # Explicit buckets: Prometheus aggregates the histogram (here across versions) and estimates quantiles.
    p50 = _wait_query(
        prometheus,
        "histogram_quantile(0.5, sum by (le) (sidecar_inference_queue_duration_seconds_bucket))",
        lambda r: r and r[0]["value"][1] not in ("NaN", "+Inf"),
    )
    assert 0.0 <= float(p50[0]["value"][1]) < 10.0
    rpc = _wait_query(
        prometheus,
        'rpc_server_call_duration_seconds_count{rpc_method="inference.GRPCInferenceService/ModelInfer",'
        'rpc_status_code="OK",rpc_system_name="grpc"}',
        lambda r: r and float(r[0]["value"][1]) >= 7,
    )
    assert rpc
    target = _wait_query(prometheus, 'target_info{job="sidecar"}', lambda r: bool(r))
    assert target[0]["metric"]["service_name"] == "sidecar"
