"""Open Inference Protocol messages <-> domain values, converted once at the edge.

Raw contents decode zero-copy: each numeric tensor is a read-only ``numpy.frombuffer`` view of the
request's bytes. Typed contents (``InferTensorContents``) are accepted too, with range checks for the
narrow integer types. Every structural problem raises ``InvalidTensor`` naming the tensor.
"""

from __future__ import annotations

import functools
import math
import struct
import time
from collections.abc import Mapping

import numpy as np

from sidecar.errors import InvalidParameter, InvalidTensor
from sidecar.protobuf_wire import length_field, string_field, varint
from sidecar.protocol._generated import grpc_service_pb2 as pb
from sidecar.types import DATATYPE_TO_DTYPE, InferenceRequest, InferenceResponse, datatype_of

# datatype -> the InferTensorContents field that carries it (FP16 and BF16 have none: raw only)
TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_CONTENT_FIELDS = tuple(pb.InferTensorContents.DESCRIPTOR.fields_by_name)
RAW_ITEMSIZE = {k: v.itemsize for k, v in DATATYPE_TO_DTYPE.items() if k != "BYTES"}  # bytes per element
_LEN = struct.Struct("<I")


def decode_parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, which) if which else None
    return out


def decode_request(
    msg: pb.ModelInferRequest,
    grpc_deadline_ns: int | None = None,
    routing_key: str | None = None,
    encoded: bytes | None = None,
    *,
    lazy_inputs: bool = False,
) -> InferenceRequest:
    """Decode and structurally check a ModelInferRequest (not yet against a model's signature).

    ``encoded``: the bytes ``msg`` was parsed from, kept on the request for engines that forward them.
    ``lazy_inputs``: the tensors are decoded and checked when first read (``LazyInputs``), so that a
    forwarded request can be on its way to the upstream before they are; a malformed tensor then raises
    ``InvalidTensor`` at that first read (the version's signature check) instead of here."""
    if not msg.model_name:
        raise InvalidParameter("model_name is empty: name the model to run")
    inputs = LazyInputs(msg) if lazy_inputs else decode_inputs(msg)
    params = decode_parameters(msg.parameters) if msg.parameters else {}
    deadline = grpc_deadline_ns
    priority = 0
    key = routing_key
    if params:
        timeout_us = params.get("timeout")
        if timeout_us is not None:
            if not isinstance(timeout_us, int) or isinstance(timeout_us, bool) or timeout_us < 0:
                raise InvalidParameter(
                    f"parameter 'timeout' must be a non-negative int64 (microseconds), not {timeout_us!r}"
                )
            if timeout_us > 0:
                own = time.monotonic_ns() + timeout_us * 1000
                deadline = own if deadline is None else min(deadline, own)
        prio = params.get("priority")
        if prio is not None:
            if not isinstance(prio, int) or isinstance(prio, bool) or prio < 0:
                raise InvalidParameter(f"parameter 'priority' must be a non-negative int64, not {prio!r}")
            priority = prio
        rk = params.get("routing_key")
        if rk is not None:
            key = str(rk)
    requested = tuple([o.name for o in msg.outputs]) if msg.outputs else None
    return InferenceRequest(
        model_name=msg.model_name,
        model_version=msg.model_version,
        id=msg.id,
        inputs=inputs,
        requested_outputs=requested,
        parameters=params,
        deadline_ns=deadline,
        priority=priority,
        routing_key=key,
        encoded=encoded,
    )


def decode_inputs(msg: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """A request's input tensors by name; ``InvalidTensor`` naming the first one at fault."""
    raws = msg.raw_input_contents
    inputs: dict[str, np.ndarray] = {}
    if raws and len(raws) != len(msg.inputs):
        raise InvalidTensor(
            f"request has {len(msg.inputs)} input tensor(s) but {len(raws)} raw_input_contents entries; "
            "send one raw entry per input, in the order of 'inputs'"
        )
    for i, tensor in enumerate(msg.inputs):
        name = tensor.name
        if not name:
            raise InvalidTensor(f"input #{i} has no name")
        if name in inputs:
            raise InvalidTensor(f"input '{name}' appears more than once")
        datatype = tensor.datatype
        dtype = DATATYPE_TO_DTYPE.get(datatype)
        if dtype is None:
            if datatype == "BF16":
                raise InvalidTensor(f"input '{name}': datatype BF16 is not supported by this server")
            raise InvalidTensor(f"input '{name}' has unknown datatype '{datatype}'")
        shape = tuple(tensor.shape)
        if shape and min(shape) < 0:
            raise InvalidTensor(f"input '{name}' has a negative dimension in shape {list(shape)}")
        count = math.prod(shape)
        if raws:
            if tensor.HasField("contents"):
                raise InvalidTensor(
                    f"input '{name}' sets typed 'contents' while the request uses raw_input_contents; "
                    "use one or the other"
                )
            raw = raws[i]
            itemsize = RAW_ITEMSIZE.get(datatype)
            if itemsize is not None and len(raw) == count * itemsize:  # the common case, zero-copy, read-only
                inputs[name] = np.ndarray(shape, dtype, raw)
            else:
                inputs[name] = _decode_raw(name, datatype, dtype, shape, count, raw)
        elif tensor.HasField("contents"):
            inputs[name] = _decode_typed(name, datatype, dtype, shape, count, tensor.contents)
        else:
            raise InvalidTensor(f"input '{name}' has no data: set its 'contents' or raw_input_contents")
    return inputs


class LazyTensors(Mapping[str, np.ndarray]):
    """Tensors by name, decoded by the subclass's ``_decode`` when first read and then kept; ``len``
    (the subclass's) counts them without decoding where it can."""

    __slots__ = ("_decoded",)

    def __init__(self) -> None:
        self._decoded: dict[str, np.ndarray] | None = None

    def _decode(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _tensors(self) -> dict[str, np.ndarray]:
        decoded = self._decoded
        if decoded is None:
            decoded = self._decoded = self._decode()
        return decoded

    def __getitem__(self, name: str) -> np.ndarray:
        return self._tensors()[name]

    def get(self, name: str, default: object = None) -> object:
        return self._tensors().get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors()

    def __iter__(self):
        return iter(self._tensors())

    def items(self):
        return self._tensors().items()

    def values(self):
        return self._tensors().values()

    def aligned(self) -> dict[str, np.ndarray]:
        """The tensors, each aligned for its type: unaligned views (see ``PlannedInputs``) are copied
        once, and the copies replace them for every later read."""
        tensors = self._tensors()
        for array in tensors.values():
            if not array.flags.aligned:
                tensors = self._decoded = {n: a if a.flags.aligned else a.copy() for n, a in tensors.items()}
                break
        return tensors


class LazyInputs(LazyTensors):
    """A request's input tensors, decoded by ``decode_inputs`` when first read: a malformed tensor raises
    ``InvalidTensor`` from that read. ``len`` counts the tensors the request declares."""

    __slots__ = ("_msg",)

    def __init__(self, msg: pb.ModelInferRequest) -> None:
        super().__init__()
        self._msg = msg

    def _decode(self) -> dict[str, np.ndarray]:
        return decode_inputs(self._msg)

    def __len__(self) -> int:
        return len(self._msg.inputs)


def _decode_raw(
    name: str, datatype: str, dtype: np.dtype, shape: tuple[int, ...], count: int, raw: bytes
) -> np.ndarray:
    if datatype == "BYTES":
        items = []
        offset, end = 0, len(raw)
        while offset < end:
            if offset + 4 > end:
                raise InvalidTensor(f"input '{name}': BYTES raw contents end inside a 4-byte length prefix")
            (n,) = _LEN.unpack_from(raw, offset)
            offset += 4
            if offset + n > end:
                raise InvalidTensor(f"input '{name}': BYTES element {len(items)} claims {n} bytes, past the end")
            items.append(raw[offset : offset + n])
            offset += n
        if len(items) != count:
            raise InvalidTensor(f"input '{name}' has {len(items)} BYTES elements, shape {list(shape)} needs {count}")
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    expected = count * RAW_ITEMSIZE[datatype]
    if len(raw) != expected:
        raise InvalidTensor(
            f"input '{name}': raw contents hold {len(raw)} bytes, but {datatype} with shape {list(shape)} "
            f"needs {expected} bytes"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _decode_typed(
    name: str, datatype: str, dtype: np.dtype, shape: tuple[int, ...], count: int, contents: pb.InferTensorContents
) -> np.ndarray:
    field = TYPED_FIELD.get(datatype)
    if field is None:
        raise InvalidTensor(f"input '{name}': {datatype} has no typed contents field; send it as raw_input_contents")
    for other in _CONTENT_FIELDS:
        if other != field and len(getattr(contents, other)):
            raise InvalidTensor(f"input '{name}' is {datatype} but its contents are in '{other}'; use '{field}'")
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidTensor(f"input '{name}' has {len(values)} values in '{field}', shape {list(shape)} needs {count}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    if dtype.kind in "iu" and dtype.itemsize < 4:
        wide = np.asarray(values, dtype=np.int64)
        info = np.iinfo(dtype)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise InvalidTensor(f"input '{name}': a value is outside the {datatype} range [{info.min}, {info.max}]")
        return wide.astype(dtype).reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)


def encode_tensor_bytes(array: np.ndarray) -> bytes:
    """Row-major, little-endian bytes of a tensor; BYTES elements are length-prefixed."""
    if array.dtype.kind in ("O", "U", "S"):
        parts = []
        for v in array.ravel():
            b = v if isinstance(v, bytes) else str(v).encode("utf-8")
            parts.append(_LEN.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()  # C order whatever the array's strides


def encode_response(resp: InferenceResponse) -> bytes:
    """The serialized ``ModelInferResponse``, written directly (no message object is built per request).

    An upstream's answer passed through as it came (outputs with an ``encoded`` attribute holding its
    serialized ``ModelInferResponse``) is returned as those bytes with this server's model name, version
    and request id written after the upstream's (the last value of a field wins)."""
    outputs = resp.outputs
    encoded = None if outputs.__class__ is dict else getattr(outputs, "encoded", None)
    if encoded is not None:
        return (
            encoded
            + _answer_fields(resp.model_name, resp.model_version)
            + (string_field(3, resp.id) if resp.id else b"")
        )
    parts = [_answer_fields(resp.model_name, resp.model_version)]
    if resp.id:
        parts.append(string_field(3, resp.id))
    if resp.parameters:
        for key, value in resp.parameters.items():
            param = pb.InferParameter()
            set_parameter(param, value)
            parts.append(length_field(4, string_field(1, key) + length_field(2, param.SerializeToString())))
    descriptions, raws = tensor_fields(outputs, _OUTPUT_HEADERS, RAW_OUTPUT_TAG)
    return b"".join([*parts, *descriptions, *raws])


def encode_stream_response(resp: InferenceResponse) -> bytes:
    """A ``ModelStreamInferResponse`` carrying ``encode_response(resp)`` (its ``infer_response``, field 2)."""
    return length_field(2, encode_response(resp))


def set_parameter(p: pb.InferParameter, value: object) -> None:
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = str(value)


@functools.lru_cache(maxsize=256)
def _answer_fields(model_name: str, model_version: str) -> bytes:
    return string_field(1, model_name) + string_field(2, model_version)


# -- tensors ------------------------------------------------------------------------------------------------
# (name, dtype, shape) -> an ``outputs`` entry of ModelInferResponse (field 5), written once; used on the
# event loop only.
_OUTPUT_HEADERS: dict[tuple[str, np.dtype, tuple[int, ...]], bytes] = {}
RAW_OUTPUT_TAG = bytes([6 << 3 | 2])  # ModelInferResponse.raw_output_contents
_HEADER_CACHE_LIMIT = 256  # tensor descriptions kept per cache: shapes vary with the batch size


def tensor_fields(
    tensors: Mapping[str, np.ndarray], headers: dict[tuple[str, np.dtype, tuple[int, ...]], bytes], raw_tag: bytes
) -> tuple[list[bytes], list[bytes | memoryview]]:
    """The fields that carry ``tensors`` in a ModelInferRequest or ModelInferResponse (both put the tensor
    descriptions in field 5): (the descriptions, each written once per name, dtype and shape and kept in
    ``headers``; each tensor's raw contents under ``raw_tag``, in the same order)."""
    descriptions: list[bytes] = []
    raws: list[bytes | memoryview] = []
    for name, array in tensors.items():
        key = (name, array.dtype, array.shape)
        header = headers.get(key)
        if header is None:
            if len(headers) >= _HEADER_CACHE_LIMIT:
                headers.clear()
            header = headers[key] = length_field(5, tensor_message(name, datatype_of(array), array.shape))
        descriptions.append(header)
        data = tensor_buffer(array)
        raws.append(raw_tag + varint(data.nbytes if data.__class__ is memoryview else len(data)))
        raws.append(data)
    return descriptions, raws


def tensor_message(name: str, datatype: str, shape: tuple[int, ...]) -> bytes:
    """An ``InferInputTensor`` or ``InferOutputTensor`` (same field numbers) with name, datatype and
    (packed) shape."""
    dims = b"".join(varint(int(d)) for d in shape)
    return string_field(1, name) + string_field(2, datatype) + (length_field(3, dims) if shape else b"")


def tensor_buffer(array: np.ndarray) -> bytes | memoryview:
    """The tensor's raw contents: a view of its memory when it already is row-major little-endian numbers."""
    if array.dtype.kind in "biuf" and array.flags.c_contiguous and array.dtype.byteorder != ">" and array.size:
        return memoryview(array).cast("B")
    return encode_tensor_bytes(array)
