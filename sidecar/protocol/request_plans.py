"""Requests that share a head are decoded once: a plan per distinct head, read off the caller's bytes.

A client sends the same ``ModelInferRequest`` over and over with only its ``id`` and tensor bytes
changing: the model name and version, the input descriptions (names, datatypes, shapes) and the
requested outputs are the same bytes every time. The first request with a given head is parsed and
decoded as usual (``decode_request``); when it is an ordinary one (raw contents for every input,
numeric datatypes, byte sizes matching the shapes, no request parameters), what it says is kept as a
``RequestPlan`` under its head: the message's bytes without its ``id`` field and its raw contents.
Later requests with that head are read without parsing: their fields are walked once (tags and
lengths, no values), the id and the raw contents' positions taken, each raw entry's size checked
against the plan, and their tensors become read-only views of the caller's bytes when first read
(``PlannedInputs``). Anything else (parameters, typed contents, BYTES tensors, fields out of the
usual order, unknown fields, a size that does not match) takes the full path, which also reports
whatever is wrong with the request, exactly as before.

A plan also remembers the signatures its requests have passed (``PlannedInputs.checks``, read by
``sidecar.engine.validation.check_request``): requests with the same head have the same names,
datatypes and shapes, so a version checks them once.

Used on the event loop only; at most ``PLAN_LIMIT`` plans are kept (all are dropped when it is reached).
"""

from __future__ import annotations

import math

import numpy as np

from sidecar.protobuf_wire import read_varint
from sidecar.protocol._generated import grpc_service_pb2 as pb
from sidecar.protocol.codec import RAW_ITEMSIZE, LazyTensors
from sidecar.types import DATATYPE_TO_DTYPE

PLAN_LIMIT = 1024  # distinct heads kept; a server sees a handful per client kind
_RAW_FIELD = 7  # ModelInferRequest.raw_input_contents
_VERSION_FIELD = 2
_ID_FIELD = 3
_PARAMETERS_FIELD = 4


class RequestPlan:
    """What every request with one head says: model, version, inputs and requested outputs."""

    __slots__ = ("checks", "model_name", "model_version", "requested", "sizes", "tensors")

    def __init__(
        self,
        model_name: str,
        model_version: str,
        tensors: tuple[tuple[str, np.dtype, tuple[int, ...]], ...],
        sizes: tuple[int, ...],
        requested: tuple[str, ...] | None,
    ) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.tensors = tensors  # (name, dtype, shape) per input, in the request's order
        self.sizes = sizes  # the raw contents' byte size per input
        self.requested = requested
        self.checks: dict[int, tuple] = {}  # see sidecar.engine.validation.check_request


class PlannedInputs(LazyTensors):
    """A planned request's input tensors: read-only views of the caller's bytes, made when first read.

    A view may be unaligned (where the request's header puts its raw contents): merging a batch copies
    it anyway, so the copy is left to where an array reaches an engine or monitor alone
    (``LazyTensors.aligned``)."""

    __slots__ = ("_encoded", "_offsets", "checks", "plan")

    def __init__(self, encoded: bytes, plan: RequestPlan, offsets: list[int]) -> None:
        super().__init__()
        self._encoded = encoded
        self._offsets = offsets
        self.plan = plan
        self.checks = plan.checks

    def _decode(self) -> dict[str, np.ndarray]:
        encoded = self._encoded
        out = {}
        for (name, dtype, shape), offset in zip(self.plan.tensors, self._offsets, strict=True):
            out[name] = np.ndarray(shape, dtype, encoded, offset)
        return out

    def __len__(self) -> int:
        return len(self.plan.tensors)


class Head:
    """Where a serialized request's parts are: its plan key, its id, its raw contents, and where its
    model name and version fields end (they come first, each at most once: ``names_end``)."""

    __slots__ = ("id_end", "id_start", "key", "names_end", "raws")

    def __init__(self, key: bytes, id_start: int, id_end: int, raws: list[tuple[int, int]], names_end: int) -> None:
        self.key = key
        self.id_start = id_start  # the id's value (not its tag and length); id_start == id_end: no id
        self.id_end = id_end
        self.raws = raws  # (offset, size) of each raw_input_contents entry, in order
        self.names_end = names_end  # the offset of the first field after model_name and model_version


_PLANS: dict[bytes, RequestPlan] = {}


def read_head(encoded: bytes) -> Head | None:
    """The head of a serialized ModelInferRequest whose fields are in the usual order (each of model
    name, version and id at most once, then inputs, requested outputs and raw contents, no parameters),
    or None for anything else (which then takes the full path). Reads tags and lengths only."""
    n = len(encoded)
    pos = last = 0
    id_field = id_start = id_end = raw_from = names_end = -1
    raws: list[tuple[int, int]] = []
    try:
        while pos < n:
            tag = encoded[pos]
            field = tag >> 3
            # Every field of the message is length-delimited; one-byte tags cover fields 1..15.
            if tag & 7 != 2 or field < last or field > _RAW_FIELD or field == _PARAMETERS_FIELD:
                return None
            if field == last and field <= _ID_FIELD:  # a scalar field twice: leave it to the parser
                return None
            if names_end < 0 and field > _VERSION_FIELD:
                names_end = pos
            size = encoded[pos + 1]
            start = pos + 2
            if size & 0x80:
                size, start = read_varint(encoded, pos + 1)
            end = start + size
            if end > n:
                return None
            if field == _RAW_FIELD:
                if raw_from < 0:
                    raw_from = pos
                raws.append((start, size))
            elif field == _ID_FIELD:
                id_field, id_start, id_end = pos, start, end
            last = field
            pos = end
    except IndexError:  # a tag or length cut short
        return None
    if raw_from < 0:
        return None
    if id_field < 0:
        return Head(bytes(encoded[:raw_from]), 0, 0, raws, names_end)  # bytes(): a plan key, also from a view
    return Head(bytes(encoded[:id_field]) + bytes(encoded[id_end:raw_from]), id_start, id_end, raws, names_end)


def planned(encoded: bytes, head: Head) -> tuple[RequestPlan, str, PlannedInputs] | None:
    """(plan, request id, inputs) when ``head`` has a plan and the raw contents fit it; else None."""
    plan = _PLANS.get(head.key)
    if plan is None:
        return None
    raws = head.raws
    sizes = plan.sizes
    if len(raws) != len(sizes):
        return None
    offsets = []
    for (offset, size), want in zip(raws, sizes, strict=True):
        if size != want:
            return None
        offsets.append(offset)
    if head.id_end > head.id_start:
        try:
            request_id = str(encoded[head.id_start : head.id_end], "utf-8")
        except UnicodeDecodeError:
            return None
    else:
        request_id = ""
    return plan, request_id, PlannedInputs(encoded, plan, offsets)


def learn(head: Head, msg: pb.ModelInferRequest) -> RequestPlan | None:
    """The plan for ``head``, made from its request ``msg`` (parsed from the same bytes) when the request
    is an ordinary one (see the module); None otherwise. Kept for the requests that follow."""
    if not msg.model_name or msg.parameters or len(msg.inputs) != len(head.raws):
        return None
    tensors = []
    sizes = []
    names = set()
    for tensor, (_, size) in zip(msg.inputs, head.raws, strict=True):
        name = tensor.name
        itemsize = RAW_ITEMSIZE.get(tensor.datatype)
        if not name or name in names or itemsize is None or tensor.HasField("contents"):
            return None
        shape = tuple(tensor.shape)
        if (shape and min(shape) < 0) or math.prod(shape) * itemsize != size:
            return None
        names.add(name)
        tensors.append((name, DATATYPE_TO_DTYPE[tensor.datatype], shape))
        sizes.append(size)
    requested = tuple([o.name for o in msg.outputs]) if msg.outputs else None
    plan = RequestPlan(msg.model_name, msg.model_version, tuple(tensors), tuple(sizes), requested)
    if len(_PLANS) >= PLAN_LIMIT:
        _PLANS.clear()
    _PLANS[head.key] = plan
    return plan


def inputs_for(encoded: bytes, head: Head, plan: RequestPlan) -> PlannedInputs:
    """The inputs of the request ``learn`` just made ``plan`` from."""
    return PlannedInputs(encoded, plan, [offset for offset, _ in head.raws])
