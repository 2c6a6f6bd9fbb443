"""The real server driven by real clients: tritonclient.grpc and the grpcio health/reflection stubs."""

from __future__ import annotations

import queue
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from sidecar.protocol._generated import grpc_service_pb2 as pb
from sidecar.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from sidecar.protocol.codec import encode_tensor_bytes
from tests.conftest import DATATYPES

NP = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": object,
}


@pytest.fixture(scope="module", params=["native", "grpc.aio"])
def server(request, model_repository):
    """The sidecar serving the shared repository on each front end (``server.front``): every test here
    runs against gRPC's C++ server and against grpc.aio."""
    from sidecar.testing.server import ServerThread, config_for_tests

    with ServerThread(config_for_tests(str(model_repository), server={"front": request.param})) as srv:
        assert srv.app.front == request.param
        yield srv


@pytest.fixture(scope="module")
def client(server):
    c = tc.InferenceServerClient(server.url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.url)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _mlp_input(rows: int = 2, seed: int = 0) -> tuple[tc.InferInput, np.ndarray]:
    x = np.random.default_rng(seed).random((rows, 64), dtype=np.float32)
    inp = tc.InferInput("input", [rows, 64], "FP32")
    inp.set_data_from_numpy(x)
    return inp, x


def _reference_mlp(server, version: str, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    path = server.app.repository.get("mlp", version).path / "model.onnx"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs, label = sess.run(["probabilities", "label"], {"input": x})
    return {"probabilities": probs, "label": label}


def _assert_serving(client: tc.InferenceServerClient) -> None:
    inp, _ = _mlp_input(1)
    assert client.infer("mlp", [inp]).as_numpy("probabilities").shape == (1, 10)


# -- liveness, metadata ----------------------------------------------------------------------------


def test_live_ready_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "sidecar" and "model_repository" in meta.extensions


def test_model_metadata_from_graph_and_metadata_file(client, stub):
    meta = client.get_model_metadata("mlp")
    assert list(meta.versions) == ["1.0.0", "1.9.0", "1.10.0"]  # semantic-version order
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input", "FP32", [-1, 64])]
    assert [(t.name, t.datatype) for t in meta.outputs] == [("probabilities", "FP32"), ("label", "INT64")]
    own = stub.ModelMetadata(pb.ModelMetadataRequest(name="mlp", version="1.0.0"))
    params = {
        k: v.WhichOneof("parameter_choice") and getattr(v, v.WhichOneof("parameter_choice"))
        for k, v in own.parameters.items()
    }
    assert params["training_data_version"] == "td-3"
    assert params["training_date"] == "2024-01-15"
    assert params["offline_metrics"] == '{"accuracy": 0.942}'
    assert params["provider"] == "CPUExecutionProvider"
    assert params["version"] == "1.0.0" and params["warmup_ms"] > 0
    config = client.get_model_config("mlp", "1.0.0", as_json=True)["config"]
    assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == ["64"]
    assert config["parameters"]["training_date"]["string_value"] == "2024-01-15"


# -- inference ---------------------------------------------------------------------------------------


def test_default_is_newest_semver_and_pinning(client, server):
    inp, x = _mlp_input(3)
    default = client.infer("mlp", [inp])
    assert default.get_response().model_version == "1.10.0"
    np.testing.assert_allclose(
        default.as_numpy("probabilities"), _reference_mlp(server, "1.10.0", x)["probabilities"], rtol=1e-5, atol=1e-6
    )
    pinned = client.infer("mlp", [inp], model_version="1.9.0")
    assert pinned.get_response().model_version == "1.9.0"
    np.testing.assert_allclose(
        pinned.as_numpy("probabilities"), _reference_mlp(server, "1.9.0", x)["probabilities"], rtol=1e-5, atol=1e-6
    )


def test_requested_output_subset(client):
    inp, _ = _mlp_input(2)
    result = client.infer("mlp", [inp], outputs=[tc.InferRequestedOutput("label")])
    assert result.as_numpy("label").shape == (2,)
    assert result.as_numpy("probabilities") is None
    assert [o.name for o in result.get_response().outputs] == ["label"]


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_raw_round_trip(client, datatype):
    if datatype == "BYTES":
        x = np.array([[b"a", b"", b"ccc", "é".encode()], [b"x", b"y", b"z", b"w"]], dtype=object)
    elif datatype == "BOOL":
        x = np.array([[True, False, True, True], [False, False, True, False]])
    else:
        info = np.finfo(NP[datatype]) if datatype.startswith("FP") else np.iinfo(NP[datatype])
        x = np.array([[info.min, 0, 1, info.max], [2, 3, 4, 5]], dtype=NP[datatype])
    inp = tc.InferInput("INPUT0", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    result = client.infer(f"identity_{datatype.lower()}", [inp])
    for name in ("OUTPUT0", "OUTPUT1"):
        out = result.as_numpy(name)
        assert out.shape == x.shape
        np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize(
    ("datatype", "field", "values"),
    [
        ("FP32", "fp32_contents", [0.5, -1.0, 2.0, 3.0]),
        ("INT8", "int_contents", [-128, 0, 1, 127]),
        ("UINT16", "uint_contents", [0, 1, 2, 65535]),
        ("INT64", "int64_contents", [-(2**62), 0, 1, 2**62]),
        ("BOOL", "bool_contents", [True, False, False, True]),
        ("FP64", "fp64_contents", [1e-300, 0, 1, 1e300]),
        ("BYTES", "bytes_contents", [b"p", b"q", b"", b"rs"]),
    ],
)
def test_typed_contents_inputs(stub, datatype, field, values):
    req = pb.ModelInferRequest(model_name=f"identity_{datatype.lower()}", id="typed-1")
    t = req.inputs.add(name="INPUT0", datatype=datatype, shape=[1, 4])
    getattr(t.contents, field).extend(values)
    resp = stub.ModelInfer(req)
    assert resp.id == "typed-1" and resp.model_version == "1.0.0"
    assert len(resp.raw_output_contents) == 2  # answered as raw, as Triton does
    expected = np.array([values], dtype=NP[datatype])
    assert resp.raw_output_contents[0] == encode_tensor_bytes(expected)


def test_streaming_answers_in_order(server, client):
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        for i in range(40):
            inp, _ = _mlp_input(1 + i % 3, seed=i)
            client.async_stream_infer("mlp", [inp], request_id=str(i))
        got = [responses.get(timeout=30) for _ in range(40)]
    finally:
        client.stop_stream()
    assert all(err is None for _, err in got)
    assert [r.get_response().id for r, _ in got] == [str(i) for i in range(40)]
    assert [r.as_numpy("probabilities").shape[0] for r, _ in got] == [1 + i % 3 for i in range(40)]


def test_stream_errors_do_not_end_the_stream(client):
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        inp, _ = _mlp_input(1)
        client.async_stream_infer("no_such_model", [inp], request_id="bad")
        client.async_stream_infer("mlp", [inp], request_id="good")
        first, second = responses.get(timeout=30), responses.get(timeout=30)
    finally:
        client.stop_stream()
    assert first[1] is not None and "no_such_model" in str(first[1])
    assert second[1] is None and second[0].get_response().id == "good"


# -- bad input: a clear status, and the server keeps serving ---------------------------------------


def _code(exc: InferenceServerException) -> str:
    return exc.status()


@pytest.mark.parametrize(
    ("model", "version", "status", "message"),
    [
        ("no_such_model", "", "StatusCode.NOT_FOUND", "model 'no_such_model' is not in the repository"),
        ("mlp", "9.9.9", "StatusCode.NOT_FOUND", "model 'mlp' has no version '9.9.9'"),
    ],
)
def test_unknown_model_or_version(client, model, version, status, message):
    inp, _ = _mlp_input(1)
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, [inp], model_version=version)
    assert _code(err.value) == status and message in err.value.message()
    _assert_serving(client)


def test_wrong_datatype_shape_inputs_outputs(client):
    cases = []
    x64 = tc.InferInput("input", [1, 64], "FP64")
    x64.set_data_from_numpy(np.zeros((1, 64), np.float64))
    cases.append(([x64], None, "input 'input' has datatype FP64, the model expects FP32"))
    bad_shape = tc.InferInput("input", [1, 63], "FP32")
    bad_shape.set_data_from_numpy(np.zeros((1, 63), np.float32))
    cases.append(([bad_shape], None, "dimension 1 must be 64"))
    other = tc.InferInput("nope", [1, 64], "FP32")
    other.set_data_from_numpy(np.zeros((1, 64), np.float32))
    cases.append(([other], None, "missing input tensor(s) 'input'"))
    good, _ = _mlp_input(1)
    cases.append(([good], [tc.InferRequestedOutput("logits")], "unknown requested output(s) 'logits'"))
    too_big = tc.InferInput("input", [65, 64], "FP32")
    too_big.set_data_from_numpy(np.zeros((65, 64), np.float32))
    cases.append(([too_big], None, "batch size 65, above the version's max_batch_size 64"))
    for inputs, outputs, message in cases:
        with pytest.raises(InferenceServerException) as err:
            client.infer("mlp", inputs, outputs=outputs)
        assert _code(err.value) == "StatusCode.INVALID_ARGUMENT", message
        assert message in err.value.message()
    _assert_serving(client)


def test_raw_byte_length_and_raw_plus_typed(stub, client):
    req = pb.ModelInferRequest(model_name="mlp")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    req.raw_input_contents.append(b"\x00" * 255)
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'input': raw contents hold 255 bytes" in err.value.details()
    req.raw_input_contents[0] = b"\x00" * 256
    req.inputs[0].contents.fp32_contents.extend([0.0] * 64)
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "use one or the other" in err.value.details()
    _assert_serving(client)


def test_repeated_request_heads_are_planned_and_still_checked(stub, client, server):
    """Requests that differ only in id and data are read by their head's plan (request_plans); the
    answers, the errors and their messages are those of the full path."""
    from sidecar.protocol import request_plans

    rng = np.random.default_rng(7)
    for i in range(3):
        x = rng.random((2, 64), dtype=np.float32)
        req = pb.ModelInferRequest(model_name="mlp", model_version="1.9.0", id=f"plan-{i}")
        req.inputs.add(name="input", datatype="FP32", shape=[2, 64])
        req.outputs.add(name="probabilities")
        req.raw_input_contents.append(x.tobytes())
        resp = stub.ModelInfer(req)
        assert (resp.id, resp.model_version, [o.name for o in resp.outputs]) == (
            f"plan-{i}",
            "1.9.0",
            ["probabilities"],
        )
        got = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(2, 10)
        np.testing.assert_allclose(got, _reference_mlp(server, "1.9.0", x)["probabilities"], rtol=1e-5, atol=1e-6)
    assert any(p.model_name == "mlp" and p.model_version == "1.9.0" for p in request_plans._PLANS.values())
    req.raw_input_contents[0] = b"\x00" * 255  # the same head, too few bytes
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'input': raw contents hold 255 bytes" in err.value.details()
    wide = pb.ModelInferRequest(model_name="mlp", model_version="1.9.0")
    wide.inputs.add(name="input", datatype="FP32", shape=[1, 65])
    wide.raw_input_contents.append(b"\x00" * 260)
    for i in range(2):  # planned after the first, checked (and refused) every time
        wide.id = f"wide-{i}"
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(wide)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "dimension 1 must be 64" in err.value.details()
    _assert_serving(client)


def test_statistics_per_version(client):
    before = client.get_inference_statistics("mlp", "1.9.0").model_stats[0]
    for _ in range(3):
        inp, _ = _mlp_input(4)
        client.infer("mlp", [inp], model_version="1.9.0")
    bad = tc.InferInput("input", [1, 63], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 63), np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("mlp", [bad], model_version="1.9.0")
    after = client.get_inference_statistics("mlp", "1.9.0").model_stats[0]
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    assert after.inference_count - before.inference_count == 12  # rows, as Triton counts them
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 1
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert after.execution_count > before.execution_count and after.last_inference > 0
    everything = client.get_inference_statistics().model_stats
    assert {(s.name, s.version) for s in everything} >= {("mlp", "1.0.0"), ("mlp", "1.9.0"), ("mlp", "1.10.0")}


# -- health and reflection -------------------------------------------------------------------------


def test_grpc_health_per_server_model_and_version(server):
    with grpc.insecure_channel(server.url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        for service in ("", "inference.GRPCInferenceService", "mlp", "mlp/1.10.0", "identity_fp16"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == serving, service
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="no_such_model"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_server_reflection_lists_services(server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.url) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = list(
            stub.ServerReflectionInfo(
                iter(
                    [
                        reflection_pb2.ServerReflectionRequest(list_services=""),
                        reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
                    ]
                )
            )
        )
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
    assert responses[1].file_descriptor_response.file_descriptor_proto  # the proto itself is served


def test_concurrent_clients(server):
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        c = tc.InferenceServerClient(server.url)
        try:
            for i in range(20):
                inp, x = _mlp_input(1 + (seed + i) % 4, seed=seed * 100 + i)
                out = c.infer("mlp", [inp], model_version="1.0.0")
                assert out.as_numpy("probabilities").shape == (x.shape[0], 10)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
