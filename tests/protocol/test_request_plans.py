"""Requests read by their head's plan decode exactly as the full path does; anything unusual takes it."""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.engine import validation
from sidecar.engine.validation import check_request
from sidecar.errors import InvalidTensor
from sidecar.protobuf_wire import length_field, string_field
from sidecar.protocol import request_plans
from sidecar.protocol._generated import grpc_service_pb2 as pb
from sidecar.protocol.codec import decode_request, encode_tensor_bytes
from sidecar.protocol.request_plans import PlannedInputs, inputs_for, learn, planned, read_head
from sidecar.types import TensorSpec, aligned_inputs


@pytest.fixture(autouse=True)
def _no_plans():
    request_plans._PLANS.clear()
    yield
    request_plans._PLANS.clear()


def _request(x: np.ndarray, request_id: str = "", *, datatype: str = "FP32", outputs=(), **fields) -> bytes:
    msg = pb.ModelInferRequest(model_name="m", model_version="1.0.0", id=request_id, **fields)
    msg.inputs.add(name="x", datatype=datatype, shape=x.shape)
    for name in outputs:
        msg.outputs.add(name=name)
    msg.raw_input_contents.append(encode_tensor_bytes(x))
    return msg.SerializeToString()


def _read(encoded: bytes):
    """As the servicer does: the plan's reading, learning the head on the first request."""
    head = read_head(encoded)
    assert head is not None
    found = planned(encoded, head)
    if found is None:
        plan = learn(head, pb.ModelInferRequest.FromString(encoded))
        assert plan is not None
        return plan, pb.ModelInferRequest.FromString(encoded).id, inputs_for(encoded, head, plan)
    return found


def test_requests_with_one_head_share_a_plan_and_decode_as_the_full_path():
    rng = np.random.default_rng(0)
    first = _request(rng.random((2, 4), dtype=np.float32), "a", outputs=("y",))
    assert planned(first, read_head(first)) is None  # nothing learned yet
    _read(first)
    for i in range(3):
        x = rng.random((2, 4), dtype=np.float32)
        encoded = _request(x, f"request-{i}", outputs=("y",))
        plan, request_id, inputs = planned(encoded, read_head(encoded))
        full = decode_request(pb.ModelInferRequest.FromString(encoded))
        assert (plan.model_name, plan.model_version, request_id, plan.requested) == (
            full.model_name,
            full.model_version,
            full.id,
            full.requested_outputs,
        )
        assert list(inputs) == ["x"] and len(inputs) == 1
        np.testing.assert_array_equal(inputs["x"], full.inputs["x"])
        np.testing.assert_array_equal(inputs["x"], x)
        assert inputs["x"].dtype == np.float32 and not inputs["x"].flags.writeable  # a view of the bytes
    assert len(request_plans._PLANS) == 1


def test_a_request_without_an_id_and_another_shape_get_their_own_plans():
    a = _request(np.ones((1, 4), np.float32))
    b = _request(np.ones((3, 4), np.float32), "id")
    _read(a)
    _read(b)
    assert len(request_plans._PLANS) == 2
    _, request_id, inputs = planned(a, read_head(a))
    assert request_id == "" and inputs["x"].shape == (1, 4)
    assert planned(b, read_head(b))[2]["x"].shape == (3, 4)


def test_unaligned_raw_contents_are_views_until_aligned_is_asked_for():
    """Reading never copies (a batch merge copies anyway); ``aligned()`` copies the unaligned ones
    once, and later reads see the copies."""
    x = np.arange(8, dtype=np.float64).reshape(2, 4)
    offsets = set()
    for request_id in ("", "a", "ab", "abc"):  # moves the raw contents' offset in the message
        encoded = _request(x, request_id, datatype="FP64")
        offset = read_head(encoded).raws[0][0]
        offsets.add(offset % 8)
        _, _, inputs = _read(encoded)
        view = inputs["x"]
        np.testing.assert_array_equal(view, x)
        assert view.flags.aligned == (offset % 8 == 0) and not view.flags.writeable
        aligned = aligned_inputs(inputs)
        assert aligned["x"].flags.aligned and inputs["x"] is aligned["x"]
        assert (aligned["x"] is view) == (offset % 8 == 0)  # copied only where it had to be
        np.testing.assert_array_equal(aligned["x"], x)
    assert len(offsets) > 1  # some were not aligned in the message
    plain = {"x": x}
    assert aligned_inputs(plain) is plain


def test_a_raw_size_that_does_not_fit_the_plan_takes_the_full_path():
    _read(_request(np.ones((1, 4), np.float32), "a"))
    msg = pb.ModelInferRequest.FromString(_request(np.ones((1, 4), np.float32), "b"))
    msg.raw_input_contents[0] = b"\x00" * 15
    encoded = msg.SerializeToString()
    head = read_head(encoded)
    assert head is not None and planned(encoded, head) is None
    with pytest.raises(InvalidTensor, match="raw contents hold 15 bytes"):
        decode_request(msg)


def test_an_id_that_is_not_utf8_takes_the_full_path():
    good = _request(np.ones((1, 4), np.float32), "ab")
    _read(good)
    bad = good.replace(b"\x1a\x02ab", b"\x1a\x02\xff\xfe")
    assert planned(bad, read_head(bad)) is None


def test_unusual_requests_have_no_head_or_no_plan():
    x = np.ones((1, 4), np.float32)
    msg = pb.ModelInferRequest.FromString(_request(x, "a"))
    with_parameters = pb.ModelInferRequest()
    with_parameters.CopyFrom(msg)
    with_parameters.parameters["timeout"].int64_param = 1000
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1.0] * 4)
    encoded = msg.SerializeToString()
    raw = length_field(7, encode_tensor_bytes(x))
    no_head = {
        "parameters": with_parameters.SerializeToString(),
        "typed contents": typed.SerializeToString(),
        "raw contents before the inputs": string_field(1, "m") + raw + encoded[len(string_field(1, "m")) :],
        "a field this server does not know": encoded + length_field(9, b"x"),
        "the id twice": encoded.replace(b"\x1a\x01a", b"\x1a\x01a\x1a\x01b"),
        "cut short": encoded[:-3],
        "a varint field": encoded + b"\x08\x01",
        "not a message": b"\xff\xff\xff",
    }
    for what, data in no_head.items():
        assert read_head(data) is None, what
    strings = pb.ModelInferRequest(model_name="m")
    strings.inputs.add(name="s", datatype="BYTES", shape=[1])
    strings.raw_input_contents.append(b"\x01\x00\x00\x00a")
    unnamed = pb.ModelInferRequest(model_name="")
    unnamed.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    unnamed.raw_input_contents.append(encode_tensor_bytes(x))
    for what, m in {"BYTES": strings, "no model name": unnamed}.items():
        data = m.SerializeToString()
        assert learn(read_head(data), m) is None, what
    assert not request_plans._PLANS


def test_plans_are_bounded(monkeypatch):
    monkeypatch.setattr(request_plans, "PLAN_LIMIT", 3)
    for rows in range(1, 6):
        _read(_request(np.ones((rows, 4), np.float32)))
        assert len(request_plans._PLANS) <= 3


class _Engine:
    def __init__(self, width: int = 4) -> None:
        self.inputs = (TensorSpec("x", "FP32", (-1, width)),)
        self.outputs = (TensorSpec("y", "FP32", (-1, 2)),)
        self.max_batch_size = 8


def test_a_plan_is_checked_once_per_signature(monkeypatch):
    calls = []
    original = validation.validate_inputs

    def counting(*args, **kwargs):
        calls.append(args[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(validation, "validate_inputs", counting)
    engine = _Engine()
    for i in range(3):
        _, _, inputs = _read(_request(np.ones((2, 4), np.float32), str(i), outputs=("y",)))
        assert isinstance(inputs, PlannedInputs)
        assert check_request("v", inputs, ("y",), engine) == (2, ("y",))
    assert len(calls) == 1
    engine.inputs = (TensorSpec("x", "FP32", (-1, 4)),)  # a new signature (a reloaded version)
    assert check_request("v", inputs, ("y",), engine) == (2, ("y",))
    assert len(calls) == 2


def test_a_request_that_fails_its_check_fails_every_time():
    engine = _Engine(width=5)
    rejected = []
    for i in range(2):
        _, _, inputs = _read(_request(np.ones((1, 4), np.float32), str(i)))
        with pytest.raises(InvalidTensor, match="dimension 1 must be 5"):
            check_request("v", inputs, None, engine, lambda: rejected.append(1))
    assert len(rejected) == 2 and not inputs.checks
    _, _, inputs = _read(_request(np.ones((1, 4), np.float32), "x", outputs=("nope",)))
    for _ in range(2):
        with pytest.raises(InvalidTensor, match="unknown requested output"):
            check_request("v", inputs, ("nope",), _Engine(), lambda: rejected.append(1))
    assert len(rejected) == 2  # an unknown output is not a schema violation of the inputs
