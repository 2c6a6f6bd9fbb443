"""Building a reference profile from training data (``sidecar profile``).

1. Read the data (``datafile.read_training_data``) and run the model version on it with the serving
   engine (``sidecar.engine.onnx_session.OnnxEngine``), so the reference outputs are exactly what the
   server would answer.
2. Decide each feature: float columns are numeric; integer columns with at most
   ``categorical_max_distinct`` distinct values, booleans and strings are categorical. Numeric
   features get quantile edges at 0, 1/B, ..., 1 of their finite values; categorical features keep
   their ``max_categories`` most frequent values (the rest fall into "other").
3. Outputs: a float output with several values per row gives the confidence (the row's max, i.e.
   the max probability) and, when the model has no integer label output, the predicted class (the
   row's argmax); a float output with one value per row is a score histogram; an integer or string
   output with one value per row gives the class frequencies.
4. Count the data with ``ProfileCounter`` - the same code the server counts requests with.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sidecar.errors import InvalidArgument
from sidecar.monitoring.binning import ProfileCounter
from sidecar.monitoring.datafile import read_training_data
from sidecar.monitoring.profile import (
    FLOAT_DATATYPES,
    PROFILE_FILE,
    CategoricalFeature,
    Feature,
    NumericFeature,
    ReferenceProfile,
    Source,
    row_width,
    save_profile,
)
from sidecar.types import TensorSpec

DEFAULT_BINS = 10
DEFAULT_MAX_CATEGORIES = 32
DEFAULT_CATEGORICAL_MAX_DISTINCT = 20


def quantile_edges(column: np.ndarray, bins: int) -> tuple[float, ...]:
    """Edges at the 0, 1/B, ..., 1 quantiles of the finite values (all zeros if there are none)."""
    values = np.asarray(column, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return tuple(0.0 for _ in range(bins + 1))
    edges = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1))
    edges = np.maximum.accumulate(edges)  # guard against rounding making neighbours decrease
    edges[0], edges[-1] = finite.min(), finite.max()
    return tuple(float(e) for e in edges)


def top_categories(column: np.ndarray, max_categories: int, as_text: bool) -> tuple[int | str, ...]:
    """The most frequent values (ties by value), empty strings excluded (they count as missing)."""
    if as_text:
        text = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in column.tolist()]
        counts = Counter(t for t in text if t)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return tuple(k for k, _ in ranked[:max_categories])
    values, counts = np.unique(np.asarray(column).astype(np.int64), return_counts=True)
    order = np.lexsort((values, -counts))
    return tuple(int(v) for v in values[order][:max_categories])


def _feature(
    name: str, column: np.ndarray, kind_hint: str, bins: int, max_categories: int, max_distinct: int
) -> Feature:
    if kind_hint == "float":
        return NumericFeature(name, quantile_edges(column, bins), (0,) * (bins + 4))
    if kind_hint == "bytes":
        cats = top_categories(column, max_categories, as_text=True)
        return CategoricalFeature(name, cats, (0,) * (len(cats) + 2))
    distinct = len(np.unique(column))
    if column.dtype == np.bool_ or distinct <= max_distinct:
        cats = top_categories(column, max_categories, as_text=False)
        return CategoricalFeature(name, cats, (0,) * (len(cats) + 2))
    return NumericFeature(name, quantile_edges(column, bins), (0,) * (bins + 4))


def _kind_of(datatype: str) -> str:
    if datatype in FLOAT_DATATYPES:
        return "float"
    return "bytes" if datatype == "BYTES" else "int"


def output_sources(outputs: Sequence[TensorSpec], arrays: Mapping[str, np.ndarray], batched: bool) -> list[Source]:
    """Which outputs (and derived values) are monitored; features still have zero counts and no edges."""
    has_label = any(
        s.datatype not in FLOAT_DATATYPES and row_width(s, batched) == 1 and s.name in arrays for s in outputs
    )
    sources = []
    for spec in outputs:
        if spec.name not in arrays:
            continue
        array = arrays[spec.name]
        width = row_width(spec, batched)
        if width is None:
            width = int(np.prod(array.shape[1:])) if array.ndim > 1 else 1
        if width == 0:
            continue
        if spec.datatype in FLOAT_DATATYPES and width >= 2:
            sources.append(Source("output", spec.name, "confidence", spec.datatype, width, ()))
            if not has_label:
                sources.append(Source("output", spec.name, "class", spec.datatype, width, ()))
        elif width == 1:
            sources.append(Source("output", spec.name, "columns", spec.datatype, 1, ()))
    return sources


def build_profile(
    model: str,
    version: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    data: Mapping[str, np.ndarray],
    feature_names: Mapping[str, Sequence[str]],
    output_data: Mapping[str, np.ndarray],
    *,
    batched: bool = True,
    bins: int = DEFAULT_BINS,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    categorical_max_distinct: int = DEFAULT_CATEGORICAL_MAX_DISTINCT,
    data_label: str = "",
) -> ReferenceProfile:
    """Profile inputs ``data`` ({input: (rows, width)}) and the model's answers ``output_data`` on them."""
    if bins < 1:
        raise InvalidArgument(f"bins must be at least 1, not {bins}")
    rows = {len(a) for a in data.values()}
    if len(rows) != 1 or 0 in rows:
        raise InvalidArgument("training data must hold the same, non-zero number of rows for every input")
    n = rows.pop()
    sources: list[Source] = []
    for spec in inputs:
        matrix = np.asarray(data[spec.name]).reshape(n, -1)
        width = matrix.shape[1]
        default = [spec.name] if width == 1 else [f"{spec.name}[{j}]" for j in range(width)]
        names = list(feature_names.get(spec.name) or default)
        if len(names) != width:
            raise InvalidArgument(f"input '{spec.name}' has {width} columns but {len(names)} feature names")
        kind = _kind_of(spec.datatype)
        feats = tuple(
            _feature(names[j], matrix[:, j], kind, bins, max_categories, categorical_max_distinct)
            for j in range(matrix.shape[1])
        )
        sources.append(Source("input", spec.name, "columns", spec.datatype, matrix.shape[1], feats))
    used = {f.name for s in sources for f in s.features}
    for source in output_sources(outputs, output_data, batched):
        matrix = np.asarray(output_data[source.tensor]).reshape(len(output_data[source.tensor]), source.width)
        if source.derive == "confidence":
            name, column, kind = f"{source.tensor}.confidence", matrix.max(axis=1), "float"
        elif source.derive == "class":
            name, column, kind = f"{source.tensor}.class", matrix.argmax(axis=1), "class"
        else:
            name, column, kind = source.tensor, matrix[:, 0], _kind_of(source.datatype)
        while name in used:
            name = f"output:{name}"
        used.add(name)
        if kind == "class":
            cats = top_categories(column, max_categories, as_text=False)
            feature: Feature = CategoricalFeature(name, cats, (0,) * (len(cats) + 2))
        else:
            feature = _feature(name, column, kind, bins, max_categories, categorical_max_distinct)
        sources.append(dataclasses.replace(source, features=(feature,)))
    draft = ReferenceProfile(model, version, n, bins, tuple(sources), time.time(), data_label)
    counter = ProfileCounter(draft)
    flat = counter.zeros()
    counter.count([dict(data)], [dict(output_data)], flat)
    by_name = {slot.name: tuple(int(c) for c in flat[slot.start : slot.stop]) for slot in counter.slots}
    final_sources = tuple(
        dataclasses.replace(s, features=tuple(dataclasses.replace(f, counts=by_name[f.name]) for f in s.features))
        for s in sources
    )
    return dataclasses.replace(draft, sources=final_sources)


def run_model(model_path: Path, inputs: Mapping[str, np.ndarray], chunk_rows: int = 1024):
    """Run the ONNX model on the training inputs with the serving engine; returns (engine, outputs)."""
    from concurrent.futures import ThreadPoolExecutor

    from sidecar.engine.onnx_session import OnnxEngine

    with ThreadPoolExecutor(1) as executor:
        engine = OnnxEngine(
            model_path,
            providers=("CPUExecutionProvider",),
            executor=executor,
            max_batch_size=chunk_rows,
            label=str(model_path),
        )
        names = [s.name for s in engine.outputs]
        n = len(next(iter(inputs.values())))
        parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
        if engine.max_batch_size:
            for start in range(0, n, chunk_rows):
                feed = {}
                for spec in engine.inputs:
                    chunk = inputs[spec.name][start : start + chunk_rows]
                    feed[spec.name] = chunk.reshape(len(chunk), *[d if d >= 0 else -1 for d in spec.shape[1:]])
                for k, v in engine.run_sync(feed, names).items():
                    parts[k].append(v)
        else:
            for i in range(n):
                feed = {
                    s.name: inputs[s.name][i].reshape([d if d >= 0 else -1 for d in s.shape]) for s in engine.inputs
                }
                for k, v in engine.run_sync(feed, names).items():
                    parts[k].append(v[None, ...])
        outputs = {k: np.concatenate(v, axis=0) for k, v in parts.items() if v}
        engine.close()
    return engine, outputs


def profile_version(
    version_dir: Path,
    data_path: Path,
    *,
    bins: int = DEFAULT_BINS,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    categorical_max_distinct: int = DEFAULT_CATEGORICAL_MAX_DISTINCT,
    output: Path | None = None,
) -> tuple[ReferenceProfile, Path]:
    """``sidecar profile``: read the data, run the model, build and write the profile beside the model."""
    from concurrent.futures import ThreadPoolExecutor

    from sidecar.engine.onnx_session import OnnxEngine

    model_path = version_dir / "model.onnx"
    if not model_path.is_file():
        raise InvalidArgument(f"{version_dir} has no model.onnx")
    with ThreadPoolExecutor(1) as executor:
        probe = OnnxEngine(model_path, providers=("CPUExecutionProvider",), executor=executor, max_batch_size=1)
        specs_in, specs_out, batched = probe.inputs, probe.outputs, probe.max_batch_size > 0
        probe.close()
    data, names = read_training_data(data_path, specs_in, batched)
    _, outputs = run_model(model_path, data)
    profile = build_profile(
        version_dir.parent.name,
        version_dir.name,
        specs_in,
        specs_out,
        data,
        names,
        outputs,
        batched=batched,
        bins=bins,
        max_categories=max_categories,
        categorical_max_distinct=categorical_max_distinct,
        data_label=data_path.name,
    )
    path = output or version_dir / PROFILE_FILE
    save_profile(profile, path)
    return profile, path
