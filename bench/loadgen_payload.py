"""Open Inference Protocol payloads for the benchmarks, serialised once before a run (part of ``bench.loadgen``).

``make_infer_request`` builds the ModelInferRequest every benchmark sends; ``make_infer_response``
the ModelInferResponse a server answers with (the echo server replays it); ``as_bytes`` accepts
either bytes or a protobuf message wherever a request is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def make_infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] = (),
    version: str = "",
    request_id: str = "",
) -> bytes:
    """A serialised ModelInferRequest carrying ``inputs`` as raw_input_contents (binary tensor data)."""
    from sidecar.protocol._generated import grpc_service_pb2 as pb
    from sidecar.types import datatype_of

    msg = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, array in inputs.items():
        array = np.ascontiguousarray(array)
        msg.inputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        msg.raw_input_contents.append(array.tobytes())
    for name in outputs:
        msg.outputs.add(name=name)
    return msg.SerializeToString()


def as_bytes(request: bytes | Any) -> bytes:
    if isinstance(request, bytes | bytearray | memoryview):
        return bytes(request)
    serialize = getattr(request, "SerializeToString", None)
    if serialize is None:
        raise TypeError(f"request must be bytes or a protobuf message, not {type(request).__name__}")
    return serialize()


def make_infer_response(model: str, outputs: Mapping[str, np.ndarray], version: str = "1.0.0") -> bytes:
    """A serialised ModelInferResponse carrying ``outputs`` as raw_output_contents (what a server answers)."""
    from sidecar.protocol._generated import grpc_service_pb2 as pb
    from sidecar.types import datatype_of

    resp = pb.ModelInferResponse(model_name=model, model_version=version)
    for name, array in outputs.items():
        resp.outputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        resp.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    return resp.SerializeToString()
