"""Repository behaviour through the real server: failures with reasons, hot load/unload, warm-up."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from sidecar.testing.models import identity_model, mlp_model, write_version
from sidecar.testing.server import ServerThread, config_for_tests


@pytest.fixture(scope="module")
def messy_repository(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("messy")
    write_version(repo, "good", "1.0.0", identity_model)
    write_version(repo, "good", "2.0.0", identity_model)
    corrupt = repo / "corrupt" / "1.0.0"
    corrupt.mkdir(parents=True)
    (corrupt / "model.onnx").write_bytes(b"this is not an onnx file")
    write_version(repo, "badmeta", "1.0.0", identity_model)
    (repo / "badmeta" / "1.0.0" / "model.json").write_text(json.dumps({"training_date": "last tuesday"}))
    write_version(repo, "badversion", "1.0.0", identity_model)
    (repo / "badversion" / "latest").mkdir()
    (repo / "badversion" / "latest" / "model.onnx").write_bytes(b"")
    outside = tmp_path_factory.mktemp("outside")
    identity_model(outside / "model.onnx")
    (repo / "escape").mkdir()
    os.symlink(outside, repo / "escape" / "1.0.0")
    (repo / "empty").mkdir()
    return repo


@pytest.fixture(scope="module")
def messy_server(messy_repository):
    with ServerThread(config_for_tests(str(messy_repository))) as srv:
        yield srv


def _fp32(rows: int = 1) -> tc.InferInput:
    inp = tc.InferInput("INPUT0", [rows, 4], "FP32")
    inp.set_data_from_numpy(np.ones((rows, 4), np.float32))
    return inp


def test_failures_are_indexed_with_reasons_and_others_serve(messy_server):
    client = tc.InferenceServerClient(messy_server.url)
    index = {(m["name"], m.get("version", "")): m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index[("good", "1.0.0")]["state"] == "READY" and index[("good", "2.0.0")]["state"] == "READY"
    assert index[("badversion", "1.0.0")]["state"] == "READY"
    reasons = {
        ("corrupt", "1.0.0"): "ONNX Runtime cannot load the model",
        ("badmeta", "1.0.0"): "'training_date' must be an ISO date",
        ("badversion", "latest"): "'latest' is not a semantic version",
        ("escape", "1.0.0"): "outside the model repository",
        ("empty", ""): "holds no version folders",
    }
    for key, reason in reasons.items():
        assert index[key]["state"] == "UNAVAILABLE", key
        assert reason in index[key]["reason"], (key, index[key]["reason"])
    assert client.infer("good", [_fp32()]).get_response().model_version == "2.0.0"
    with pytest.raises(InferenceServerException) as err:
        client.infer("corrupt", [_fp32()])
    assert err.value.status() == "StatusCode.UNAVAILABLE" and "cannot load the model" in err.value.message()
    assert client.is_model_ready("good") and not client.is_model_ready("corrupt")
    ready_only = client.get_model_repository_index(as_json=True)
    assert ready_only["models"]


def test_load_rejects_path_escape_and_unknown(messy_server):
    client = tc.InferenceServerClient(messy_server.url)
    with pytest.raises(InferenceServerException) as err:
        client.load_model("../outside")
    assert (
        err.value.status() == "StatusCode.INVALID_ARGUMENT"
        and "not a valid repository folder name" in err.value.message()
    )
    with pytest.raises(InferenceServerException) as err:
        client.load_model("does_not_exist")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as err:
        client.load_model("corrupt")
    assert err.value.status() == "StatusCode.FAILED_PRECONDITION" and "cannot load the model" in err.value.message()


def test_load_and_unload_under_traffic(messy_server, messy_repository):
    """Versions come and go while another model's traffic flows; that traffic never fails."""
    client = tc.InferenceServerClient(messy_server.url)
    stop = threading.Event()
    failures: list[str] = []
    done = [0]

    def traffic() -> None:
        c = tc.InferenceServerClient(messy_server.url)
        while not stop.is_set():
            try:
                c.infer("good", [_fp32(2)], model_version="1.0.0")
                done[0] += 1
            except InferenceServerException as exc:
                failures.append(str(exc))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(3):
            write_version(messy_repository, "hot", f"1.{i}.0", mlp_model, seed=i)
            client.load_model("hot")
            assert client.is_model_ready("hot", f"1.{i}.0")
            inp = tc.InferInput("input", [1, 64], "FP32")
            inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
            assert client.infer("hot", [inp]).get_response().model_version == f"1.{i}.0"
        client.unload_model("hot")
        assert not client.is_model_ready("hot")
        client.load_model("good")  # reloading a serving model keeps it serving
        client.unload_model("badversion")
        with pytest.raises(InferenceServerException) as err:
            client.infer("badversion", [_fp32()])
        assert err.value.status() in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert done[0] > 0


def test_unload_single_version_keeps_others(messy_server):
    client = tc.InferenceServerClient(messy_server.url)
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    channel = grpc.insecure_channel(messy_server.url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    req = service_pb2.RepositoryModelUnloadRequest(model_name="good")
    req.parameters["version"].string_param = "2.0.0"
    stub.RepositoryModelUnload(req)
    assert not client.is_model_ready("good", "2.0.0")
    assert client.infer("good", [_fp32()]).get_response().model_version == "1.0.0"
    load = service_pb2.RepositoryModelLoadRequest(model_name="good")
    load.parameters["version"].string_param = "2.0.0"
    stub.RepositoryModelLoad(load)
    assert client.infer("good", [_fp32()]).get_response().model_version == "2.0.0"
    channel.close()


def test_ready_only_after_warm_up(tmp_path):
    """A version reports ready only once its warm-up inferences have run."""
    write_version(tmp_path, "slow", "1.0.0", mlp_model, {"warmup": {"batch_sizes": [1, 64], "runs": 150}}, hidden=1024)
    cfg = config_for_tests(str(tmp_path), repository={"load_on_start": False})
    with ServerThread(cfg) as srv:
        client = tc.InferenceServerClient(srv.url)
        result: dict[str, float] = {}

        def load() -> None:
            start = time.monotonic()
            client.load_model("slow")
            result["load_s"] = time.monotonic() - start

        t = threading.Thread(target=load)
        t.start()
        seen_loading = False
        while t.is_alive():
            ready = client.is_model_ready("slow")
            state = next((e.state for e in srv.app.repository.index() if e.name == "slow"), "")
            if state == "LOADING":
                seen_loading = True
                assert not ready
            time.sleep(0.005)
        t.join()
        mv = srv.app.repository.get("slow", "1.0.0")
        assert seen_loading
        assert mv.ready and client.is_model_ready("slow")
        assert mv.warmup_s > 0 and result["load_s"] >= mv.warmup_s
        config = client.get_model_config("slow", as_json=True)["config"]
        assert float(config["parameters"]["warmup_ms"]["string_value"]) > 0


def test_message_above_limit_is_resource_exhausted(tmp_path):
    write_version(tmp_path, "mlp", "1.0.0", mlp_model)
    cfg = config_for_tests(str(tmp_path), server={"max_message_bytes": 64 * 1024})
    with ServerThread(cfg) as srv:
        client = tc.InferenceServerClient(srv.url)
        inp = tc.InferInput("input", [64, 64], "FP32")
        inp.set_data_from_numpy(np.zeros((64, 64), np.float32))
        assert client.infer("mlp", [inp]).as_numpy("label").shape == (64,)  # 16 KiB fits
        big = tc.InferInput("input", [512, 64], "FP32")
        big.set_data_from_numpy(np.zeros((512, 64), np.float32))
        with pytest.raises(InferenceServerException) as err:
            client.infer("mlp", [big])
        assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "larger than max" in err.value.message()
        assert client.infer("mlp", [inp]).as_numpy("label").shape == (64,)
