"""Reference profiles: what a model version's inputs and outputs looked like on its training data.

A profile is a JSON file beside the model (``<repository>/<model>/<version>/reference_profile.json``),
written by ``sidecar profile`` and loaded, validated and compiled when the version loads: a malformed
profile is a ``ModelLoadError`` naming the file and the field, never a request-time failure.

Layout (format ``sidecar.reference_profile/1``)::

    {"format": "sidecar.reference_profile/1", "model": "m", "version": "1.0.0", "rows": 398,
     "bins": 10, "created_unix": 1700000000.0, "data": "train.csv",
     "sources": [
       {"side": "input", "tensor": "input", "derive": "columns", "datatype": "FP32", "width": 30,
        "features": [
          {"name": "mean radius", "kind": "numeric", "edges": [6.98, ..., 28.1],     # bins + 1 values
           "counts": [0, 40, ..., 39, 0, 0, 0]},                                      # bins + 4 values
          {"name": "colour", "kind": "categorical", "categories": ["red", "blue"],
           "counts": [120, 80, 3, 0]}, ...]},                                        # C + 2 values
       {"side": "output", "tensor": "probabilities", "derive": "confidence", ...},
       {"side": "output", "tensor": "label", "derive": "columns", ...}]}

Numeric ``counts`` follow the histogram kernel's layout, ``[below edges[0], the bins ..., above
edges[-1], NaN, +-inf]``; ``edges`` are the reference quantiles at 0, 1/B, ..., 1 (so the first and
last are the reference min and max, and "below"/"above" are the out-of-range counts). Categorical
``counts`` are ``[category counts ..., other, missing]``.

A *source* is one tensor read column by column (``derive: "columns"``) or a value derived from each
row of an output: ``"confidence"`` (the row's max, i.e. the max class probability) and ``"class"``
(the row's argmax, the predicted class).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.errors import ModelLoadError
from sidecar.types import TensorSpec

PROFILE_FILE = "reference_profile.json"
FORMAT = "sidecar.reference_profile/1"
NUMERIC = "numeric"
CATEGORICAL = "categorical"
DERIVATIONS = ("columns", "confidence", "class")
SIDES = ("input", "output")
CATEGORICAL_DATATYPES = frozenset({"BOOL", "BYTES"})
INTEGER_DATATYPES = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"})
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})


@dataclass(frozen=True, slots=True)
class NumericFeature:
    name: str
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    kind: str = NUMERIC

    @property
    def bins(self) -> int:
        return len(self.edges) - 1

    @property
    def rows(self) -> int:
        return sum(self.counts)

    @property
    def minimum(self) -> float:
        return self.edges[0]

    @property
    def maximum(self) -> float:
        return self.edges[-1]

    @property
    def missing_rate(self) -> float:
        """Share of NaN and +-inf values in the reference data."""
        return (self.counts[-2] + self.counts[-1]) / self.rows if self.rows else 0.0


@dataclass(frozen=True, slots=True)
class CategoricalFeature:
    name: str
    categories: tuple[int | str, ...]
    counts: tuple[int, ...]
    kind: str = CATEGORICAL

    @property
    def rows(self) -> int:
        return sum(self.counts)

    @property
    def missing_rate(self) -> float:
        return self.counts[-1] / self.rows if self.rows else 0.0


Feature = NumericFeature | CategoricalFeature


@dataclass(frozen=True, slots=True)
class Source:
    side: str
    tensor: str
    derive: str
    datatype: str
    width: int
    features: tuple[Feature, ...]

    @property
    def value_kind(self) -> str:
        """What the derived values are: "float" (numeric work), "int" or "bytes"."""
        if self.derive == "confidence":
            return "float"
        if self.derive == "class":
            return "int"
        if self.datatype == "BYTES":
            return "bytes"
        if self.datatype in FLOAT_DATATYPES:
            return "float"
        return "int"


@dataclass(frozen=True, slots=True)
class ReferenceProfile:
    model: str
    version: str
    rows: int
    bins: int
    sources: tuple[Source, ...]
    created_unix: float = field(default_factory=time.time)
    data: str = ""

    @property
    def features(self) -> list[tuple[Source, Feature]]:
        return [(s, f) for s in self.sources for f in s.features]


# -- serialisation --------------------------------------------------------------------------------
def profile_to_dict(profile: ReferenceProfile) -> dict[str, Any]:
    def feature(f: Feature) -> dict[str, Any]:
        if isinstance(f, NumericFeature):
            return {"name": f.name, "kind": NUMERIC, "edges": list(f.edges), "counts": list(f.counts)}
        return {"name": f.name, "kind": CATEGORICAL, "categories": list(f.categories), "counts": list(f.counts)}

    return {
        "format": FORMAT,
        "model": profile.model,
        "version": profile.version,
        "rows": profile.rows,
        "bins": profile.bins,
        "created_unix": profile.created_unix,
        "data": profile.data,
        "sources": [
            {
                "side": s.side,
                "tensor": s.tensor,
                "derive": s.derive,
                "datatype": s.datatype,
                "width": s.width,
                "features": [feature(f) for f in s.features],
            }
            for s in profile.sources
        ],
    }


def save_profile(profile: ReferenceProfile, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(profile_to_dict(profile), indent=1, allow_nan=False))
    tmp.replace(path)
    return path


def load_profile(path: Path) -> ReferenceProfile:
    """Read and validate a profile file; any problem is a ModelLoadError naming the file and field."""
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read the reference profile: {exc.strerror}") from exc
    except ValueError as exc:
        raise ModelLoadError(f"{path}: the reference profile is not valid JSON: {exc}") from exc
    return parse_profile(raw, str(path))


def parse_profile(raw: Any, where: str) -> ReferenceProfile:
    def fail(msg: str) -> ModelLoadError:
        return ModelLoadError(f"{where}: malformed reference profile: {msg}")

    def need(obj: Mapping[str, Any], key: str, tp: type | tuple[type, ...], ctx: str) -> Any:
        if key not in obj:
            raise fail(f"{ctx}'{key}' is missing")
        value = obj[key]
        if not isinstance(value, tp) or (isinstance(value, bool) and tp in (int, float, (int, float))):
            raise fail(f"{ctx}'{key}' must be {_tname(tp)}, not {type(value).__name__}")
        return value

    if not isinstance(raw, dict):
        raise fail("the top level must be an object")
    fmt = need(raw, "format", str, "")
    if fmt != FORMAT:
        raise fail(f"'format' is {fmt!r}; this sidecar reads {FORMAT!r} (re-run `sidecar profile`)")
    bins = need(raw, "bins", int, "")
    if bins < 1:
        raise fail("'bins' must be at least 1")
    rows = need(raw, "rows", int, "")
    raw_sources = need(raw, "sources", list, "")
    sources = []
    names: set[str] = set()
    for i, rs in enumerate(raw_sources):
        ctx = f"sources[{i}]."
        if not isinstance(rs, dict):
            raise fail(f"sources[{i}] must be an object")
        side = need(rs, "side", str, ctx)
        if side not in SIDES:
            raise fail(f"{ctx}'side' must be one of {list(SIDES)}, not {side!r}")
        derive = need(rs, "derive", str, ctx)
        if derive not in DERIVATIONS:
            raise fail(f"{ctx}'derive' must be one of {list(DERIVATIONS)}, not {derive!r}")
        datatype = need(rs, "datatype", str, ctx)
        if datatype not in CATEGORICAL_DATATYPES | INTEGER_DATATYPES | FLOAT_DATATYPES:
            raise fail(f"{ctx}'datatype' {datatype!r} is not an Open Inference Protocol datatype")
        if derive != "columns" and (side != "output" or datatype not in FLOAT_DATATYPES):
            raise fail(f"{ctx}'derive' {derive!r} applies to floating-point outputs only")
        width = need(rs, "width", int, ctx)
        if width < 1:
            raise fail(f"{ctx}'width' must be at least 1")
        raw_features = need(rs, "features", list, ctx)
        expected = width if derive == "columns" else 1
        if len(raw_features) != expected:
            raise fail(f"{ctx}'features' has {len(raw_features)} entries, expected {expected}")
        features = []
        for j, rf in enumerate(raw_features):
            fctx = f"{ctx}features[{j}]."
            if not isinstance(rf, dict):
                raise fail(f"{ctx}features[{j}] must be an object")
            name = need(rf, "name", str, fctx)
            if name in names:
                raise fail(f"{fctx}'name' {name!r} is used twice")
            names.add(name)
            kind = need(rf, "kind", str, fctx)
            counts = need(rf, "counts", list, fctx)
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
                raise fail(f"{fctx}'counts' must hold non-negative integers")
            if kind == NUMERIC:
                if derive == "class" or (derive == "columns" and datatype in CATEGORICAL_DATATYPES):
                    raise fail(f"{fctx}a {datatype} {derive!r} source cannot have numeric features")
                edges = need(rf, "edges", list, fctx)
                if len(edges) != bins + 1:
                    raise fail(f"{fctx}'edges' has {len(edges)} values, expected bins + 1 = {bins + 1}")
                if not all(isinstance(e, int | float) and not isinstance(e, bool) and math.isfinite(e) for e in edges):
                    raise fail(f"{fctx}'edges' must be finite numbers")
                if any(b < a for a, b in itertools.pairwise(edges)):
                    raise fail(f"{fctx}'edges' must be sorted in non-decreasing order")
                if len(counts) != bins + 4:
                    raise fail(f"{fctx}'counts' has {len(counts)} values, expected bins + 4 = {bins + 4}")
                features.append(NumericFeature(name, tuple(float(e) for e in edges), tuple(counts)))
            elif kind == CATEGORICAL:
                if derive == "confidence" or (derive == "columns" and datatype in FLOAT_DATATYPES):
                    raise fail(f"{fctx}a {datatype} {derive!r} source cannot have categorical features")
                cats = need(rf, "categories", list, fctx)
                want = str if datatype == "BYTES" and derive == "columns" else int
                if not all(isinstance(c, want) and not isinstance(c, bool) for c in cats):
                    raise fail(f"{fctx}'categories' must all be {_tname(want)}s")
                if len(set(cats)) != len(cats):
                    raise fail(f"{fctx}'categories' has duplicates")
                if len(counts) != len(cats) + 2:
                    raise fail(f"{fctx}'counts' has {len(counts)} values, expected categories + 2 = {len(cats) + 2}")
                features.append(CategoricalFeature(name, tuple(cats), tuple(counts)))
            else:
                raise fail(f"{fctx}'kind' must be 'numeric' or 'categorical', not {kind!r}")
        sources.append(Source(side, need(rs, "tensor", str, ctx), derive, datatype, width, tuple(features)))
    created = raw.get("created_unix", 0.0)
    return ReferenceProfile(
        model=str(raw.get("model", "")),
        version=str(raw.get("version", "")),
        rows=rows,
        bins=bins,
        sources=tuple(sources),
        created_unix=float(created) if isinstance(created, int | float) else 0.0,
        data=str(raw.get("data", "")),
    )


def check_against_signature(
    profile: ReferenceProfile,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    batched: bool,
    where: str,
) -> None:
    """The profile must describe this version's tensors: names, datatypes and row widths."""
    specs = {("input", s.name): s for s in inputs} | {("output", s.name): s for s in outputs}
    for i, source in enumerate(profile.sources):
        spec = specs.get((source.side, source.tensor))
        ctx = f"{where}: reference profile sources[{i}]"
        if spec is None:
            names = sorted(n for side, n in specs if side == source.side)
            raise ModelLoadError(f"{ctx} names {source.side} '{source.tensor}', which the model lacks (it has {names})")
        if spec.datatype != source.datatype:
            raise ModelLoadError(
                f"{ctx}: {source.side} '{source.tensor}' is {spec.datatype} in the model, "
                f"{source.datatype} in the profile"
            )
        width = row_width(spec, batched)
        if width is not None and width != source.width:
            raise ModelLoadError(
                f"{ctx}: {source.side} '{source.tensor}' rows have {width} values in the model, "
                f"{source.width} in the profile"
            )


def row_width(spec: TensorSpec, batched: bool = True) -> int | None:
    """Values per row of a tensor whose first dimension is the batch; None if a dimension is variable.

    Tensors with more than one dimension after the batch are not monitored (width 0)."""
    rest = spec.shape[1:] if batched else spec.shape
    if len(rest) > 1:
        return 0
    if not rest:
        return 1
    return rest[0] if rest[0] >= 0 else None


def _tname(tp: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object"}
    if isinstance(tp, tuple):
        return " or ".join(names.get(t, t.__name__) for t in tp)
    return names.get(tp, tp.__name__)
