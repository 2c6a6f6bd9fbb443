"""The upstream's wire format: ``ModelInferRequest`` bytes written without building the message, and
the upstream's ``ModelInferResponse`` read back as tensors (``sidecar.engine.upstream``'s codec).

* ``RequestEncoder``: a merged batch written directly from the input tensors (a header cached per
  upstream model, each tensor description cached per (name, datatype, shape), the tensors' buffers
  joined once), never built as a protobuf object and serialised again.
* ``Retarget``: a caller's own request bytes, passed through, made to name the upstream's model and
  version: as they are when they already do, with their leading name and version fields replaced (the
  usual field order, which an upstream sidecar's request plans read without parsing), else with the
  upstream's appended (``target_fields``: the last value of a protobuf field wins).
* ``decode_outputs``: an upstream's response (raw or typed contents) as arrays;
  ``ForwardedOutputs``: a passed-through answer kept as the upstream's bytes, its tensors decoded on
  first read.

Field numbers are proto/grpc_service.proto's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from google.protobuf.message import DecodeError

from sidecar.errors import EngineError
from sidecar.protobuf_wire import length_field, string_field, varint
from sidecar.protocol._generated import grpc_service_pb2 as pb
from sidecar.protocol.codec import RAW_OUTPUT_TAG, TYPED_FIELD, LazyTensors, tensor_fields
from sidecar.types import DATATYPE_TO_DTYPE


def target_fields(model: str, version: str) -> bytes:
    """The ``model_name`` and ``model_version`` fields written after a forwarded request's own: the last
    value of a field wins, so the upstream sees its own names (an empty version too)."""
    return string_field(1, model) + string_field(2, version)


class Retarget:
    """``retarget(encoded, names_end)``: the request ``encoded`` naming the upstream's ``model`` and
    ``version`` (see the module). ``names_end``: where ``encoded``'s model name and version fields end
    when they come first and nowhere else (``InferenceRequest.names_end``), else -1."""

    __slots__ = ("_as_is", "_prefix", "_suffix")

    def __init__(self, model: str, version: str) -> None:
        name = string_field(1, model)
        self._prefix = name + string_field(2, version) if version else name  # as protobuf writes them
        self._as_is = frozenset((self._prefix, name + string_field(2, version)))  # (an empty version too)
        self._suffix = target_fields(model, version)

    def __call__(self, encoded: bytes, names_end: int) -> bytes:
        if names_end < 0:
            return b"".join((encoded, self._suffix))  # (a relayed request's may be a memoryview)
        if bytes(encoded[:names_end]) in self._as_is:
            return encoded if encoded.__class__ is bytes else bytes(encoded)
        return b"".join((self._prefix, memoryview(encoded)[names_end:]))


class ForwardedOutputs(LazyTensors):
    """An upstream's answer to one forwarded request: ``encoded`` is the serialized response as it came;
    it is parsed (``response``) and its output tensors decoded when first read (monitoring and shadow
    comparison read them after the caller has had its answer)."""

    __slots__ = ("_label", "_response", "encoded")

    def __init__(self, encoded: bytes, label: str, response: pb.ModelInferResponse | None = None) -> None:
        super().__init__()
        self.encoded = encoded
        self._response = response
        self._label = label

    @property
    def response(self) -> pb.ModelInferResponse:
        """The parsed answer; ``EngineError`` if the upstream's bytes are not a ModelInferResponse."""
        response = self._response
        if response is None:
            response = self._response = parse_response(self.encoded, self._label)
        return response

    def _decode(self) -> dict[str, np.ndarray]:
        return decode_outputs(self.response, self._label)

    def __len__(self) -> int:
        return len(self.response.outputs)


def parse_response(raw: bytes, label: str, where: str = "the upstream") -> pb.ModelInferResponse:
    """An upstream's answer parsed; ``EngineError`` naming ``label`` and ``where`` if it is malformed."""
    try:
        return pb.ModelInferResponse.FromString(raw)
    except DecodeError as exc:
        raise EngineError(f"{label}: {where} answered a malformed response: {exc}") from None


def answer_head(raw: bytes, response: pb.ModelInferResponse) -> bytes:
    """The bytes of ``raw`` before its raw output contents (names, version, id, parameters and output
    descriptions), where it was written in field order with those contents last; b"" otherwise. An
    answer that starts with the same head followed by raw contents describes the same outputs."""
    contents = response.raw_output_contents
    if not contents:
        return b""
    n = len(raw) - sum(1 + len(varint(len(c))) + len(c) for c in contents)
    if n <= 0 or raw[n : n + 1] != RAW_OUTPUT_TAG:
        return b""
    return raw[:n]


def has_head(raw: bytes, head: bytes) -> bool:
    """Whether ``raw`` is ``head`` (an ``answer_head``) followed by raw output contents."""
    return bool(head) and raw.startswith(head) and raw[len(head) : len(head) + 1] == RAW_OUTPUT_TAG


class RequestEncoder:
    """Writes an upstream's ``ModelInferRequest`` bytes directly: the model name and version once, each
    tensor description once per (name, datatype, shape), the tensors' memory joined in one copy."""

    def __init__(self, model: str, version: str = "") -> None:
        self._header = string_field(1, model) + (string_field(2, version) if version else b"")
        self._tensor_headers: dict[tuple[str, np.dtype, tuple[int, ...]], bytes] = {}
        self._output_fields: dict[tuple[str, ...], bytes] = {}

    def encode(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> bytes:
        """The serialized ``ModelInferRequest`` for ``inputs`` asking for ``output_names``."""
        descriptions, raws = tensor_fields(inputs, self._tensor_headers, _RAW_TAG)
        outputs = self._output_fields.get(tuple(output_names))
        if outputs is None:
            if len(self._output_fields) >= 64:
                self._output_fields.clear()
            outputs = b"".join(length_field(6, string_field(1, n)) for n in output_names)
            self._output_fields[tuple(output_names)] = outputs
        return b"".join([self._header, *descriptions, outputs, *raws])


# -- writing a ModelInferRequest without building one (field numbers from proto/grpc_service.proto; the
# tensor descriptions and buffers are sidecar.protocol.codec's, shared with the response encoder) ------------
_RAW_TAG = bytes([7 << 3 | 2])  # raw_input_contents


def decode_outputs(msg: pb.ModelInferResponse, label: str) -> dict[str, np.ndarray]:
    """The output tensors of an upstream's response (raw or typed contents)."""
    raws = msg.raw_output_contents
    if raws and len(raws) != len(msg.outputs):
        raise EngineError(f"{label}: upstream answered {len(msg.outputs)} outputs with {len(raws)} raw contents")
    out: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(msg.outputs):
        dtype = DATATYPE_TO_DTYPE.get(tensor.datatype)
        if dtype is None:
            raise EngineError(f"{label}: upstream output '{tensor.name}' has datatype {tensor.datatype}")
        shape = tuple(int(d) for d in tensor.shape)
        count = math.prod(shape)
        if raws:
            out[tensor.name] = _from_raw(tensor.name, tensor.datatype, dtype, shape, count, raws[i], label)
        else:
            out[tensor.name] = _from_typed(tensor, dtype, shape, count, label)
    return out


def _from_raw(name: str, datatype: str, dtype: np.dtype, shape: tuple[int, ...], count: int, raw: bytes, label: str):
    if datatype == "BYTES":
        items, offset = [], 0
        while offset < len(raw):
            n = int.from_bytes(raw[offset : offset + 4], "little")
            items.append(raw[offset + 4 : offset + 4 + n])
            offset += 4 + n
        if len(items) != count:
            raise EngineError(f"{label}: upstream output '{name}' has {len(items)} elements, shape {list(shape)}")
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    if len(raw) != count * dtype.itemsize:
        raise EngineError(f"{label}: upstream output '{name}' has {len(raw)} bytes for shape {list(shape)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _from_typed(tensor, dtype: np.dtype, shape: tuple[int, ...], count: int, label: str) -> np.ndarray:
    field_name = TYPED_FIELD.get(tensor.datatype)
    values = getattr(tensor.contents, field_name) if field_name else ()
    if len(values) != count:
        raise EngineError(f"{label}: upstream output '{tensor.name}' has {len(values)} values for shape {list(shape)}")
    if tensor.datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)
