"""The upstream's request bytes, written without protobuf objects, parse to the message protobuf would build."""

from __future__ import annotations

import numpy as np

from sidecar.engine.upstream_wire import RequestEncoder
from sidecar.protocol._generated import grpc_service_pb2 as pb
from sidecar.protocol.codec import encode_tensor_bytes
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
