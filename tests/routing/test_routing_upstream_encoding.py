"""The upstream's request bytes, written without protobuf objects, parse to the message protobuf would build."""

from __future__ import annotations

import numpy as np

from sidecar.engine.upstream_wire import RequestEncoder, Retarget
from sidecar.protocol._generated import grpc_service_pb2 as pb
from sidecar.protocol.codec import encode_tensor_bytes
from sidecar.protocol.request_plans import read_head
from sidecar.types import datatype_of


def built_by_protobuf(model: str, version: str, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> bytes:
    msg = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, array in inputs.items():
        msg.inputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        msg.raw_input_contents.append(encode_tensor_bytes(array))
    for name in outputs:
        msg.outputs.add(name=name)
    return msg.SerializeToString()


def test_request_bytes_match_protobuf_for_every_kind_of_tensor():
    rng = np.random.default_rng(0)
    wide = rng.random((4, 6), dtype=np.float32)
    inputs = {
        "fp32": rng.random((2, 64), dtype=np.float32),
        "int64": np.arange(-3, 3, dtype=np.int64).reshape(2, 3),
        "bool": np.array([[True, False, True]]),
        "fp16": np.ones((1, 5), np.float16),
        "uint8": np.arange(7, dtype=np.uint8),
        "strided": wide[:, ::2],  # not contiguous
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
        "bytes": np.array([b"ab", b"", "\u00e9".encode()], dtype=object),
        "empty": np.zeros((0, 3), np.float32),
        "scalar": np.array(2.5, np.float64),
    }
    for version in ("", "7"):
        encoder = RequestEncoder("model-\u00e9", version)
        for outputs in ((), ("probabilities", "label")):
            for _ in range(2):  # the second time from the caches
                ours = pb.ModelInferRequest.FromString(encoder.encode(inputs, outputs))
                theirs = pb.ModelInferRequest.FromString(built_by_protobuf("model-\u00e9", version, inputs, outputs))
                assert ours == theirs
    ours = pb.ModelInferRequest.FromString(RequestEncoder("m").encode(inputs, ()))
    for i, (name, array) in enumerate(inputs.items()):
        assert ours.inputs[i].name == name and tuple(ours.inputs[i].shape) == array.shape
        if array.dtype.kind != "O":
            restored = np.frombuffer(ours.raw_input_contents[i], dtype=array.dtype)
            np.testing.assert_array_equal(restored.reshape(array.shape), array)


def _plain(model: str, version: str, request_id: str = "r-1") -> bytes:
    msg = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    msg.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    msg.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    return msg.SerializeToString()


def test_a_forwarded_request_names_the_upstream_and_keeps_the_usual_field_order():
    """Retarget: as it is when it already names the upstream's model and version; its leading name and
    version replaced where the head was read (so an upstream sidecar plans it without parsing); the
    upstream's names appended to anything else (the last value of a field wins)."""
    to_fake = Retarget("fake", "")
    same = _plain("fake", "")
    assert to_fake(same, read_head(same).names_end) is same  # no copy
    explicit_empty = same[:6] + b"\x12\x00" + same[6:]  # version "" written out
    assert pb.ModelInferRequest.FromString(explicit_empty).model_name == "fake"
    assert to_fake(explicit_empty, read_head(explicit_empty).names_end) is explicit_empty
    for caller in (_plain("m", "2.0.0"), _plain("m", ""), _plain("a-much-longer-model-name", "10.20.30")):
        head = read_head(caller)
        for encoded in (caller, memoryview(caller)):  # a request relayed by an ingest worker is a view
            out = to_fake(encoded, head.names_end)
            assert out.__class__ is bytes
            sent = pb.ModelInferRequest.FromString(out)
            assert (sent.model_name, sent.model_version, sent.id) == ("fake", "", "r-1")
            assert sent.raw_input_contents[0] == np.arange(4, dtype=np.float32).tobytes()
            assert read_head(out) is not None  # still in the usual order: the upstream's plan reads it
            assert out.endswith(caller[head.names_end :])
    pinned = Retarget("fake", "3.1.0")(_plain("m", "2.0.0"), read_head(_plain("m", "2.0.0")).names_end)
    assert pb.ModelInferRequest.FromString(pinned).model_version == "3.1.0" and read_head(pinned) is not None
    # A request read by no head (its fields out of the usual order): the upstream's names go last.
    odd = pb.ModelInferRequest(id="r-2").SerializeToString() + _plain("m", "2.0.0", "")
    assert read_head(odd) is None
    sent = pb.ModelInferRequest.FromString(to_fake(odd, -1))
    assert (sent.model_name, sent.model_version, sent.id) == ("fake", "", "r-2")
    # No name or version field at all: names_end is 0, and the upstream's are put in front.
    nameless = _plain("", "")
    assert read_head(nameless).names_end == 0
    sent = pb.ModelInferRequest.FromString(to_fake(nameless, 0))
    assert (sent.model_name, sent.model_version) == ("fake", "")
