"""The upstream proxy in front of MLServer 1.7.1 (from PyPI) serving an ONNX model.

MLServer needs protobuf < 7 (the sidecar needs >= 7.35), so it runs from its own virtualenv: the
benchmarks' ``bench/.venvs/mlserver`` when it exists, else ``tests/.venvs/mlserver`` (git-ignored),
created here on first use with only what the test needs (mlserver 1.7.1, uvloop 0.21 and onnxruntime).
The MLServer runtime is the benchmarks' ``bench/peers/mlserver_onnx.py``; the model's inputs and
outputs are declared in its model-settings.json, which is where MLServer's ModelMetadata comes from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from conftest import Control, Process, free_port, mlp_input, write_upstream_version

from sidecar.testing.models import mlp_model, write_version
from sidecar.testing.server import ServerThread, config_for_tests

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mlserver==1.7.1", "uvloop==0.21.0", "onnxruntime")


def _usable(venv: Path) -> bool:
    python = venv / "bin" / "python"
    if not (venv / "bin" / "mlserver").exists() or not python.exists():
        return False
    probe = subprocess.run([str(python), "-c", "import mlserver, onnxruntime"], capture_output=True, timeout=120)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def mlserver_venv() -> Path:
    for venv in (ROOT / "bench" / ".venvs" / "mlserver", ROOT / "tests" / ".venvs" / "mlserver"):
        if _usable(venv):
            return venv
    venv = ROOT / "tests" / ".venvs" / "mlserver"
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", *PACKAGES], capture_output=True, text=True, timeout=900
    )
    assert pip.returncode == 0, f"cannot install MLServer into {venv}:\n{pip.stdout[-2000:]}\n{pip.stderr[-3000:]}"
    return venv


def write_mlserver_repository(root: Path, model: str, onnx: Path, grpc_port: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "grpc_port": grpc_port,
        "http_port": free_port(),
        "parallel_workers": 0,
        "metrics_endpoint": None,
        "metrics_dir": str(root / ".metrics"),
        "environments_dir": str(root / ".envs"),
    }
    (root / "settings.json").write_text(json.dumps(settings))
    folder = root / model
    folder.mkdir()
    model_settings = {
        "name": model,
        "implementation": "mlserver_onnx.OnnxRuntimeModel",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ],
        "parameters": {"uri": str(onnx), "extra": {"intra_op_threads": 1}},
    }
    (folder / "model-settings.json").write_text(json.dumps(model_settings))
    return root


def test_proxy_in_front_of_mlserver(tmp_path, mlserver_venv):
    repo = tmp_path / "repo"
    local = write_version(repo, "mlp", "1.0.0", mlp_model, hidden=32, seed=3)
    port = free_port()
    root = write_mlserver_repository(tmp_path / "mlserver", "mlp", local / "model.onnx", port)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "bench" / "peers"), PYTHONUNBUFFERED="1")
    peer = Process([str(mlserver_venv / "bin" / "mlserver"), "start", str(root)], port, "mlp", env=env, cwd=root)
    try:
        write_upstream_version(repo, "mlp", "2.0.0", target=peer.target, model="mlp")
        with ServerThread(config_for_tests(str(repo))) as srv:
            client = tc.InferenceServerClient(srv.url)
            assert client.is_model_ready("mlp", "2.0.0")
            meta = client.get_model_metadata("mlp", "2.0.0")
            assert [(t.name, t.datatype) for t in meta.outputs] == [("probabilities", "FP32"), ("label", "INT64")]
            inputs, _ = mlp_input(rows=4, seed=9)
            # The same ONNX file, run by MLServer through the proxy and locally by the sidecar.
            proxied = client.infer("mlp", inputs, model_version="2.0.0")
            local_result = client.infer("mlp", inputs, model_version="1.0.0")
            assert proxied.get_response().model_version == "2.0.0"
            np.testing.assert_allclose(
                proxied.as_numpy("probabilities"), local_result.as_numpy("probabilities"), rtol=1e-5, atol=1e-6
            )
            np.testing.assert_array_equal(proxied.as_numpy("label"), local_result.as_numpy("label"))
            # MLServer as a shadow of the local version: full agreement, tiny differences.
            control = Control(srv.control_url)
            control.set("mlp", {"1.0.0": 100}, {"2.0.0": 100})
            for _ in range(10):
                assert client.infer("mlp", inputs).get_response().model_version == "1.0.0"
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                reports = control.report("mlp")
                if reports and reports[0].total.completed + reports[0].total.errors == 10:
                    break
                time.sleep(0.05)
            total = control.report("mlp")[0].total
            assert total.completed == 10 and total.errors == 0
            assert total.agreement == 1.0 and total.max_abs_diff < 1e-5
    finally:
        peer.stop()
