"""Check a decoded request against a version's signature before it is queued or batched.

One malformed request must never fail its neighbours in a batch, so everything that can be checked
per request is checked here: missing/unknown inputs, datatype, rank, fixed dimensions, batch size,
unknown requested outputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NoReturn

import numpy as np

from sidecar.errors import InvalidTensor
from sidecar.types import DATATYPE_TO_DTYPE, TensorSpec, datatype_of

if TYPE_CHECKING:
    from sidecar.engine.base import Engine

_DTYPES = DATATYPE_TO_DTYPE
CHECKS_LIMIT = 16  # signatures remembered per request head (one per version its requests reach)


def validate_inputs(
    label: str,
    inputs: Mapping[str, np.ndarray],
    specs: Sequence[TensorSpec],
    max_batch_size: int,
) -> int:
    """Raise InvalidTensor naming the tensor at fault; return the request's rows (0 if unbatched)."""
    if len(inputs) != len(specs):
        _missing_or_unknown(label, inputs, specs)
    rows = -1
    for spec in specs:
        array = inputs.get(spec.name)
        if array is None:
            _missing_or_unknown(label, inputs, specs)
        if array.dtype != _DTYPES[spec.datatype]:
            got = datatype_of(array)
            if got != spec.datatype:
                raise InvalidTensor(
                    f"{label}: input '{spec.name}' has datatype {got}, the model expects {spec.datatype}"
                )
        shape = array.shape
        want_shape = spec.shape
        if len(shape) != len(want_shape):
            raise InvalidTensor(
                f"{label}: input '{spec.name}' has shape {list(shape)}, the model expects "
                f"{len(want_shape)} dimensions {list(want_shape)}"
            )
        for axis, want in _fixed_dims(want_shape):
            if shape[axis] != want:
                raise InvalidTensor(
                    f"{label}: input '{spec.name}' has shape {list(shape)}, the model expects "
                    f"{list(want_shape)} (dimension {axis} must be {want})"
                )
        if max_batch_size:
            batch = shape[0]
            if batch < 1:
                raise InvalidTensor(f"{label}: input '{spec.name}' has an empty batch dimension")
            if batch > max_batch_size:
                raise InvalidTensor(
                    f"{label}: input '{spec.name}' has batch size {batch}, above the "
                    f"version's max_batch_size {max_batch_size}"
                )
            if rows not in (-1, batch):
                raise InvalidTensor(f"{label}: inputs disagree on the batch size ({rows} vs {batch} for '{spec.name}')")
            rows = batch
    return max(rows, 0) if max_batch_size else 1


def check_request(
    label: str,
    inputs: Mapping[str, np.ndarray],
    requested: Sequence[str] | None,
    engine: Engine,
    rejected: Callable[[], None] | None = None,
) -> tuple[int, tuple[str, ...]]:
    """``validate_inputs`` and ``validate_outputs`` against ``engine``'s signature: (rows, output names);
    ``rejected`` is called when the inputs fail (the monitor counts schema violations).

    Inputs that carry ``checks`` (``sidecar.protocol.request_plans.PlannedInputs``: requests with the
    same head, hence the same names, datatypes, shapes and requested outputs) are checked once per
    signature; the answer is kept there, with the signature it is for. A request that fails is checked
    (and fails) every time."""
    checks = getattr(inputs, "checks", None)
    specs = engine.inputs
    if checks is not None:
        hit = checks.get(id(specs))
        if hit is not None and hit[0] is specs and hit[1] is engine.outputs and hit[2] == engine.max_batch_size:
            return hit[3], hit[4]
    try:
        rows = validate_inputs(label, inputs, specs, engine.max_batch_size)
    except InvalidTensor:
        if rejected is not None:
            rejected()
        raise
    outputs = validate_outputs(label, requested, engine.outputs)
    if checks is not None:
        if len(checks) >= CHECKS_LIMIT:
            checks.clear()
        # The specs are held in the entry, so their id is not reused while it is there.
        checks[id(specs)] = (specs, engine.outputs, engine.max_batch_size, rows, outputs)
    return rows, outputs


def _missing_or_unknown(label: str, inputs: Mapping[str, np.ndarray], specs: Sequence[TensorSpec]) -> NoReturn:
    expected = {s.name for s in specs}
    missing = [s.name for s in specs if s.name not in inputs]
    if missing:
        raise InvalidTensor(
            f"{label}: missing input tensor(s) {', '.join(repr(m) for m in missing)}; "
            f"the model expects {sorted(expected)}"
        )
    unknown = [n for n in inputs if n not in expected]
    raise InvalidTensor(
        f"{label}: unknown input tensor(s) {', '.join(repr(u) for u in unknown)}; the model expects {sorted(expected)}"
    )


@functools.lru_cache(maxsize=1024)
def _fixed_dims(shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """(axis, size) of a signature's fixed dimensions (the -1 ones take any size)."""
    return tuple((axis, want) for axis, want in enumerate(shape) if want >= 0)


def validate_outputs(label: str, requested: Sequence[str] | None, specs: Sequence[TensorSpec]) -> tuple[str, ...]:
    names = tuple(s.name for s in specs)
    if not requested:
        return names
    unknown = [r for r in requested if r not in names]
    if unknown:
        raise InvalidTensor(
            f"{label}: unknown requested output(s) {', '.join(repr(u) for u in unknown)}; "
            f"the model produces {list(names)}"
        )
    return tuple(dict.fromkeys(requested))
