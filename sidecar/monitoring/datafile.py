"""Reading training data for ``sidecar profile``: ``.npy``, ``.npz``, ``.csv`` and ``.parquet``.

The data's columns are the model's inputs, in the order the model declares them, each taking as
many columns as its rows have values (an input ``[batch, 30]`` takes 30 columns, ``[batch]`` one):

* ``.npy``: one 2-D array (rows x columns); one input of width 1 also accepts a 1-D array.
* ``.npz``: one array per input, keyed by input name (no column splitting needed).
* ``.csv``: a header row (its names become the feature names), then one row per example. Empty
  cells and ``nan`` are missing values of float inputs; BYTES inputs take the text as UTF-8.
* ``.parquet`` (needs the optional ``pyarrow``: ``pip install 'sidecar[parquet]'``): one scalar
  column per feature, like a CSV file; the column names become the feature names. Nulls are missing
  values (NaN for float inputs, empty for BYTES inputs; an error for integer and boolean inputs).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sidecar.errors import InvalidArgument
from sidecar.monitoring.profile import row_width
from sidecar.types import DATATYPE_TO_DTYPE, TensorSpec

TrainingData = tuple[dict[str, np.ndarray], dict[str, list[str]]]


def read_training_data(path: Path, inputs: Sequence[TensorSpec], batched: bool) -> TrainingData:
    """Returns ({input name: (rows, width) array of the input's dtype}, {input name: feature names})."""
    if not path.is_file():
        raise InvalidArgument(f"training data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path, inputs, batched)
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"{path}: cannot read the .npy file: {exc}") from exc
        if array.ndim == 1:
            array = array.reshape(-1, 1)
        if array.ndim != 2:
            raise InvalidArgument(f"{path}: expected a 2-D array (rows x columns), got shape {list(array.shape)}")
        return _split_columns(path, [array[:, j] for j in range(array.shape[1])], None, inputs, batched)
    if suffix == ".csv":
        return _read_csv(path, inputs, batched)
    if suffix == ".parquet":
        return _read_parquet(path, inputs, batched)
    raise InvalidArgument(
        f"{path}: unsupported training data format {suffix or '(none)'!r}; use .npy, .npz, .csv or .parquet"
    )


def _widths(inputs: Sequence[TensorSpec], batched: bool, total: int, where: Path) -> list[int]:
    widths = [row_width(s, batched) for s in inputs]
    for spec, w in zip(inputs, widths, strict=True):
        if w == 0:
            raise InvalidArgument(
                f"{where}: input '{spec.name}' has shape {list(spec.shape)}; only inputs with "
                "one value or one vector per row can be profiled from a table"
            )
    unknown = [i for i, w in enumerate(widths) if w is None]
    known = sum(w for w in widths if w is not None)
    if len(unknown) > 1:
        raise InvalidArgument(f"{where}: several inputs have a variable width; use a .npz file keyed by input name")
    if unknown:
        widths[unknown[0]] = total - known
        known = total
    if known != total or any(w is not None and w < 1 for w in widths):
        layout = ", ".join(f"'{s.name}' {w}" for s, w in zip(inputs, widths, strict=True))
        raise InvalidArgument(f"{where}: has {total} columns, but the model's inputs take {known} ({layout})")
    return widths  # type: ignore[return-value]


def _convert(column: Sequence[object] | np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    if spec.datatype == "BYTES":
        return np.array([v if isinstance(v, bytes) else str(v).encode() for v in column], dtype=object)
    dtype = DATATYPE_TO_DTYPE[spec.datatype]
    try:
        if isinstance(column, np.ndarray):
            if dtype.kind in "iub" and column.dtype.kind == "f" and np.isnan(column).any():
                raise ValueError("missing values (NaN or null) in an integer or boolean column")
            return column.astype(dtype)
        if dtype.kind == "f":
            return np.array([float(v) if str(v).strip() else np.nan for v in column], dtype=dtype)
        if dtype.kind == "b":
            return np.array([str(v).strip().lower() in ("1", "true", "yes") for v in column], dtype=dtype)
        return np.array([int(float(v)) for v in column], dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{where}: cannot read as {spec.datatype} for input '{spec.name}': {exc}") from exc


def _split_columns(
    path: Path,
    columns: list[Sequence[object] | np.ndarray],
    header: list[str] | None,
    inputs: Sequence[TensorSpec],
    batched: bool,
) -> TrainingData:
    widths = _widths(inputs, batched, len(columns), path)
    arrays: dict[str, np.ndarray] = {}
    names: dict[str, list[str]] = {}
    at = 0
    for spec, width in zip(inputs, widths, strict=True):
        cols = [_convert(columns[at + j], spec, f"{path} column {at + j + 1}") for j in range(width)]
        arrays[spec.name] = np.stack(cols, axis=1) if cols else np.empty((0, 0))
        if header is not None:
            names[spec.name] = header[at : at + width]
        else:
            names[spec.name] = [spec.name] if width == 1 else [f"{spec.name}[{j}]" for j in range(width)]
        at += width
    return arrays, names


def _read_csv(path: Path, inputs: Sequence[TensorSpec], batched: bool) -> TrainingData:
    try:
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidArgument(f"{path}: cannot read the CSV file: {exc}") from exc
    if len(rows) < 2:
        raise InvalidArgument(f"{path}: a CSV file needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InvalidArgument(f"{path} line {i}: {len(row)} fields, the header has {len(header)}")
    columns = [list(col) for col in zip(*rows[1:], strict=True)]
    return _split_columns(path, columns, header, inputs, batched)


def _read_parquet(path: Path, inputs: Sequence[TensorSpec], batched: bool) -> TrainingData:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InvalidArgument(
            f"{path}: reading Parquet needs pyarrow: pip install 'sidecar[parquet]' "
            "(or convert the file to .npz or .csv)"
        ) from exc
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InvalidArgument(f"{path}: cannot read the Parquet file: {exc}") from exc
    if table.num_rows == 0:
        raise InvalidArgument(f"{path}: the Parquet file has no rows")
    header = [str(n) for n in table.column_names]
    columns: list[Sequence[object] | np.ndarray] = []
    for name, column in zip(header, table.columns, strict=True):
        kind = column.type
        if pa.types.is_dictionary(kind):
            column, kind = column.cast(kind.value_type), kind.value_type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            columns.append(["" if v is None else v for v in column.to_pylist()])
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            columns.append([b"" if v is None else v for v in column.to_pylist()])
        elif pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind):
            if column.null_count:  # nulls become NaN (missing values of float inputs)
                column = column.cast(pa.float64())
            columns.append(column.to_numpy())
        else:
            raise InvalidArgument(
                f"{path}: column '{name}' has type {kind}; profiles read scalar number, boolean and string "
                "columns (one column per feature)"
            )
    return _split_columns(path, columns, header, inputs, batched)


def _read_npz(path: Path, inputs: Sequence[TensorSpec], batched: bool) -> TrainingData:
    try:
        with np.load(path, allow_pickle=False) as data:
            found = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"{path}: cannot read the .npz file: {exc}") from exc
    want = [s.name for s in inputs]
    if sorted(found) != sorted(want):
        raise InvalidArgument(f"{path}: holds arrays {sorted(found)}; the model's inputs are {sorted(want)}")
    arrays: dict[str, np.ndarray] = {}
    names: dict[str, list[str]] = {}
    rows = None
    for spec in inputs:
        array = found[spec.name]
        width = row_width(spec, batched)
        if width == 0:
            raise InvalidArgument(f"{path}: input '{spec.name}' with shape {list(spec.shape)} cannot be profiled")
        array = array.reshape(len(array), -1) if array.ndim else array.reshape(1, 1)
        if width is not None and array.shape[1] != width:
            raise InvalidArgument(f"{path}: '{spec.name}' rows have {array.shape[1]} values, the model wants {width}")
        if rows is not None and len(array) != rows:
            raise InvalidArgument(f"{path}: arrays disagree on the number of rows ({rows} vs {len(array)})")
        rows = len(array)
        arrays[spec.name] = _convert(array.ravel(), spec, f"{path} '{spec.name}'").reshape(array.shape)
        w = array.shape[1]
        names[spec.name] = [spec.name] if w == 1 else [f"{spec.name}[{j}]" for j in range(w)]
    return arrays, names
