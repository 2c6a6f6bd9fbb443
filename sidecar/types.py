"""Values that travel between stages: immutable, transport-free.

A request's tensors are numpy arrays keyed by name. On the raw path they are read-only
``numpy.frombuffer`` views of the gRPC message's bytes (zero-copy); nothing below ``protocol/``
may write into them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# Open Inference Protocol datatype <-> numpy dtype. BYTES tensors are object arrays of ``bytes``.
DATATYPE_TO_DTYPE: Mapping[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
DTYPE_TO_DATATYPE: Mapping[np.dtype, str] = {v: k for k, v in DATATYPE_TO_DTYPE.items()}


def datatype_of(array: np.ndarray) -> str:
    """The protocol datatype of an array (unicode and bytes arrays are BYTES)."""
    dtype = array.dtype
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    datatype = DTYPE_TO_DATATYPE.get(dtype)
    if datatype is None:  # a byte-swapped array of a protocol type (encoded little-endian)
        datatype = DTYPE_TO_DATATYPE[dtype.newbyteorder("=")]
    return datatype


def aligned_inputs(inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """``inputs`` with every array aligned for its type, for an engine or monitor that gets them as they
    are (not merged into a batch): a request's lazily decoded tensors may be unaligned views of its
    bytes, and their ``aligned()`` copies those once; any other mapping is returned as it is."""
    aligned = getattr(inputs, "aligned", None)
    return aligned() if aligned is not None else inputs


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model version. ``shape`` uses -1 for a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def row_bytes(inputs: Sequence[TensorSpec], batched: bool = True) -> int:
    """Bytes of one row of all ``inputs`` (``batched``: their first dimension, the batch, left out; else
    a row is a whole tensor); 0 where that is unknown: a variable dimension, or a BYTES tensor."""
    total = 0
    for spec in inputs:
        dims = spec.shape[1:] if batched else spec.shape
        dtype = DATATYPE_TO_DTYPE.get(spec.datatype)
        if dtype is None or spec.datatype == "BYTES" or any(d < 0 for d in dims):
            return 0
        total += dtype.itemsize * math.prod(dims)
    return total


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """One inference request, decoded and structurally valid (byte lengths match shapes).

    ``model_version`` is "" when the caller named none. ``requested_outputs`` is None for "all".
    ``deadline_ns`` is on the ``time.monotonic_ns`` clock, or None for no deadline. ``encoded``: the
    request exactly as the caller sent it (a serialized Open Inference Protocol ``ModelInferRequest``),
    when the transport has it; an upstream engine forwards these bytes instead of encoding the tensors
    again. ``names_end``: where ``encoded``'s model name and version fields end when they come first and
    nowhere else (the usual field order, ``request_plans.read_head``), else -1.
    """

    model_name: str
    model_version: str
    id: str
    inputs: Mapping[str, np.ndarray]
    requested_outputs: tuple[str, ...] | None = None
    parameters: Mapping[str, object] = field(default_factory=dict)
    deadline_ns: int | None = None
    priority: int = 0
    routing_key: str | None = None
    encoded: bytes | None = None
    names_end: int = -1


@dataclass(frozen=True, slots=True)
class InferenceResponse:
    """The answer: ``model_version`` says which version actually served it."""

    model_name: str
    model_version: str
    id: str
    outputs: Mapping[str, np.ndarray]
    parameters: Mapping[str, object] = field(default_factory=dict)
