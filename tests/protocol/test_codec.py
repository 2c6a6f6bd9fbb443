import struct

import numpy as np
import pytest

from sidecar.errors import InvalidParameter, InvalidTensor
from sidecar.protocol._generated import grpc_service_pb2 as pb
from sidecar.protocol.codec import (
    decode_request,
    encode_response,
    encode_stream_response,
    encode_tensor_bytes,
    set_parameter,
)
from sidecar.types import InferenceResponse, datatype_of


def _raw_request(array: np.ndarray, datatype: str, name: str = "x") -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name=name, datatype=datatype, shape=array.shape)
    msg.raw_input_contents.append(encode_tensor_bytes(array))
    return msg


def test_raw_decode_is_a_zero_copy_view():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    req = decode_request(_raw_request(x, "FP32"))
    arr = req.inputs["x"]
    np.testing.assert_array_equal(arr, x)
    assert not arr.flags.owndata and not arr.flags.writeable  # a view of the message's bytes


@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [
        ("BOOL", np.bool_),
        ("UINT8", np.uint8),
        ("UINT16", np.uint16),
        ("UINT32", np.uint32),
        ("UINT64", np.uint64),
        ("INT8", np.int8),
        ("INT16", np.int16),
        ("INT32", np.int32),
        ("INT64", np.int64),
        ("FP32", np.float32),
        ("FP64", np.float64),
    ],
)
def test_typed_contents_every_type(datatype, dtype):
    field = {
        "BOOL": "bool_contents",
        "INT64": "int64_contents",
        "UINT64": "uint64_contents",
        "FP32": "fp32_contents",
        "FP64": "fp64_contents",
    }.get(datatype, "int_contents" if datatype.startswith("INT") else "uint_contents")
    values = [1, 0, 1, 1] if datatype == "BOOL" else [0, 1, 2, 3]
    msg = pb.ModelInferRequest(model_name="m")
    t = msg.inputs.add(name="x", datatype=datatype, shape=[2, 2])
    getattr(t.contents, field).extend(values)
    arr = decode_request(msg).inputs["x"]
    assert arr.dtype == np.dtype(dtype) and arr.shape == (2, 2)
    np.testing.assert_array_equal(arr.ravel(), np.array(values, dtype=dtype))


def test_bytes_raw_and_typed():
    items = np.array([b"a", b"", "é".encode()], dtype=object)
    raw = b"".join(struct.pack("<I", len(b)) + b for b in items)
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="s", datatype="BYTES", shape=[3])
    msg.raw_input_contents.append(raw)
    assert list(decode_request(msg).inputs["s"]) == list(items)
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="s", datatype="BYTES", shape=[3]).contents.bytes_contents.extend(list(items))
    assert list(decode_request(typed).inputs["s"]) == list(items)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.raw_input_contents.__setitem__(0, b"\x00" * 7), "raw contents hold 7 bytes.*needs 48 bytes"),
        (lambda m: m.inputs[0].contents.fp32_contents.append(1.0), "sets typed 'contents' while the request uses raw"),
        (lambda m: m.raw_input_contents.append(b""), "1 input tensor\\(s\\) but 2 raw_input_contents"),
        (lambda m: setattr(m.inputs[0], "datatype", "FP8"), "unknown datatype 'FP8'"),
        (lambda m: setattr(m.inputs[0], "datatype", "BF16"), "BF16 is not supported"),
        (lambda m: m.inputs[0].shape.__setitem__(0, -1), "negative dimension"),
        (lambda m: setattr(m, "model_name", ""), "model_name is empty"),
    ],
)
def test_structural_errors_name_the_problem(mutate, message):
    msg = _raw_request(np.zeros((3, 4), np.float32), "FP32")
    mutate(msg)
    with pytest.raises((InvalidTensor, InvalidParameter), match=message):
        decode_request(msg)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.raw_input_contents.__setitem__(0, b"\x00" * 5), "raw contents hold 5 bytes"),
        (lambda m: setattr(m.inputs[0], "datatype", "BF16"), "BF16 is not supported"),
        (lambda m: m.inputs.add(name="x", datatype="FP32", shape=[1]), "2 input tensor\\(s\\) but 1 raw"),
    ],
)
def test_lazy_inputs_raise_the_same_errors_when_first_read(mutate, message):
    msg = _raw_request(np.zeros((3, 4), np.float32), "FP32")
    mutate(msg)
    with pytest.raises(InvalidTensor, match=message):
        decode_request(msg)
    req = decode_request(msg, lazy_inputs=True)  # the header is decoded, the tensors are not yet
    assert len(req.inputs) == len(msg.inputs) and req.model_name == "m"
    with pytest.raises(InvalidTensor, match=message):
        req.inputs.get("x")


def test_lazy_inputs_decode_once_as_the_eager_decoder_does():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    msg = _raw_request(x, "FP32")
    lazy = decode_request(msg, lazy_inputs=True).inputs
    assert lazy._decoded is None
    assert list(lazy) == ["x"] and "x" in lazy and lazy.get("y") is None
    first = lazy["x"]
    assert lazy["x"] is first and dict(lazy.items()).keys() == {"x"}  # decoded once
    np.testing.assert_array_equal(first, decode_request(msg).inputs["x"])


def test_typed_errors():
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="INT8", shape=[2]).contents.int_contents.extend([1, 300])
    with pytest.raises(InvalidTensor, match="outside the INT8 range"):
        decode_request(msg)
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="FP32", shape=[3]).contents.fp32_contents.extend([1, 2])
    with pytest.raises(InvalidTensor, match="2 values in 'fp32_contents', shape \\[3\\] needs 3"):
        decode_request(msg)
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="FP32", shape=[2]).contents.int_contents.extend([1, 2])
    with pytest.raises(InvalidTensor, match="contents are in 'int_contents'; use 'fp32_contents'"):
        decode_request(msg)
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="FP16", shape=[1]).contents.fp32_contents.append(1)
    with pytest.raises(InvalidTensor, match="FP16 has no typed contents field"):
        decode_request(msg)
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="FP32", shape=[1])
    with pytest.raises(InvalidTensor, match="input 'x' has no data"):
        decode_request(msg)


def test_parameters():
    msg = _raw_request(np.zeros((1, 4), np.float32), "FP32")
    msg.parameters["timeout"].int64_param = 5_000
    msg.parameters["priority"].int64_param = 2
    msg.parameters["routing_key"].string_param = "user-1"
    req = decode_request(msg, grpc_deadline_ns=None)
    assert req.priority == 2 and req.routing_key == "user-1" and req.deadline_ns is not None
    msg.parameters["timeout"].string_param = "soon"
    with pytest.raises(InvalidParameter, match="'timeout' must be a non-negative int64"):
        decode_request(msg)


def test_encode_response_raw_outputs_in_order():
    out = {"b": np.array([[1.5, 2.5]], np.float32), "a": np.array(["x", "yz"], dtype=object)}
    msg = pb.ModelInferResponse.FromString(encode_response(InferenceResponse("m", "1.0.0", "id1", out)))
    assert [o.name for o in msg.outputs] == ["b", "a"]
    assert msg.outputs[1].datatype == "BYTES" and list(msg.outputs[0].shape) == [1, 2]
    assert msg.raw_output_contents[0] == out["b"].tobytes()
    assert msg.raw_output_contents[1] == struct.pack("<I", 1) + b"x" + struct.pack("<I", 2) + b"yz"


def _reference(resp: InferenceResponse) -> pb.ModelInferResponse:
    """The response as protobuf itself would build it (what the direct writer must match)."""
    msg = pb.ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version, id=resp.id)
    for name, array in resp.outputs.items():
        msg.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        msg.raw_output_contents.append(encode_tensor_bytes(array))
    for key, value in (resp.parameters or {}).items():
        set_parameter(msg.parameters[key], value)
    return msg


@pytest.mark.parametrize(
    "outputs",
    [
        {"p": np.arange(20, dtype=np.float32).reshape(2, 10), "label": np.array([3, 1], np.int64)},
        {"flag": np.array([True, False, True]), "half": np.ones((1, 3), np.float16)},
        {"scalar": np.array(2.5, np.float64), "empty": np.zeros((0, 4), np.int32)},
        {"strided": np.arange(12, dtype=np.int16).reshape(3, 4)[:, ::2], "big": np.arange(3, dtype=">i4")},
        {"text": np.array([["a", "bc"]]), "u8": np.array([[255, 0]], np.uint8)},
    ],
)
def test_encoded_response_parses_to_what_protobuf_builds(outputs):
    resp = InferenceResponse("model", "1.2.3", "req-7", outputs)
    encoded = encode_response(resp)
    assert pb.ModelInferResponse.FromString(encoded) == _reference(resp)
    assert encode_response(resp) == encoded  # the cached tensor descriptions write the same bytes again


def test_encoded_response_with_parameters_and_no_id():
    resp = InferenceResponse("m", "", "", {"y": np.array([1.0], np.float32)}, {"n": 3, "ok": True, "s": "x"})
    assert pb.ModelInferResponse.FromString(encode_response(resp)) == _reference(resp)


def test_stream_response_carries_the_encoded_answer():
    resp = InferenceResponse("m", "1", "s1", {"y": np.array([[1.0, 2.0]], np.float32)})
    stream = pb.ModelStreamInferResponse.FromString(encode_stream_response(resp))
    assert stream.error_message == "" and stream.infer_response == _reference(resp)
