"""Turning tensors into bin counts: the one code path for training-time and serving-time histograms.

``ProfileCounter`` compiles a reference profile once (principle 5: decide once, run lean) into

* per source, the quantile edges of its numeric features as one ``(K, F)`` float64 edge-major array
  for the histogram kernel (``sidecar.monitoring.histogram.update_counts``: native C or its numpy
  twin), and a lookup table per categorical feature;
* a flat ``int64`` vector layout holding every feature's counts, so a window, the cumulative totals
  or a whole fleet's sum is one vector and adding a chunk's counts to three accumulators is three
  vector additions.

``sidecar profile`` uses the very same ``ProfileCounter.count`` on the training data to fill the
reference counts that the server later compares serving counts with, so there is no skew between the
two histograms.

Counts of a numeric feature (slice of the flat vector): ``[below min, bin_1 .. bin_B, above max,
NaN, +-inf]``. Of a categorical feature: ``[category_1 .. category_C, other, missing]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sidecar.monitoring.profile import CATEGORICAL, NUMERIC, CategoricalFeature, Feature, ReferenceProfile, Source

UpdateCounts = Callable[[np.ndarray, np.ndarray, np.ndarray], None]

_FEW = 64  # categorical values up to which a dict lookup per value beats the vectorized path
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_ROWS = np.arange(4096)  # row indices for the confidence gather (bigger batches make their own)


def _bind(update_counts: UpdateCounts | None, edges: np.ndarray) -> Callable[[np.ndarray, np.ndarray], None]:
    """``update(counts, values)`` with ``edges`` checked once when ``update_counts`` is one of the
    histogram module's implementations; any other function (a test's) is simply called with the edges."""
    from sidecar.monitoring import histogram

    for name, implementation in histogram.implementations().items():
        if implementation is update_counts:
            return histogram.bound_update(edges, name)
    if update_counts is None:
        raise ValueError("numeric features need a histogram update function")
    return lambda counts, values: update_counts(counts, values, edges)


@dataclass(frozen=True, slots=True)
class FeatureSlot:
    """Where one feature's counts live in the flat vector, and how to read them."""

    source: Source
    feature: Feature
    start: int
    stop: int

    @property
    def name(self) -> str:
        return self.feature.name

    @property
    def kind(self) -> str:
        return self.feature.kind

    def distribution(self, flat: np.ndarray) -> np.ndarray:
        """The counts that drift statistics compare (numeric: below, bins, above; categorical: categories, other)."""
        return flat[self.start : self.stop - (2 if self.kind == NUMERIC else 1)]

    def missing(self, flat: np.ndarray) -> int:
        """NaN (numeric) or missing/empty (categorical) values."""
        return int(flat[self.stop - 2] if self.kind == NUMERIC else flat[self.stop - 1])

    def infinite(self, flat: np.ndarray) -> int:
        return int(flat[self.stop - 1]) if self.kind == NUMERIC else 0

    def out_of_range(self, flat: np.ndarray) -> int:
        """Finite values below the reference min or above its max (numeric features)."""
        if self.kind != NUMERIC:
            return 0
        return int(flat[self.start] + flat[self.stop - 3])

    def total(self, flat: np.ndarray) -> int:
        return int(flat[self.start : self.stop].sum())


class CategoryLookup:
    """Maps values to category codes: 0..C-1 known categories, C other, C+1 missing."""

    def __init__(self, feature: CategoricalFeature, value_kind: str) -> None:
        self.size = len(feature.categories) + 2
        self._other = len(feature.categories)
        self._missing = len(feature.categories) + 1
        self._bytes = value_kind == "bytes"
        if self._bytes:
            table: dict[object, int] = {}
            for code, cat in enumerate(feature.categories):
                table[str(cat).encode()] = code
                table[str(cat)] = code
            table[b""] = table[""] = self._missing
            table[None] = self._missing
            self._table = table
        else:
            values = np.array([int(c) for c in feature.categories], dtype=np.int64)
            order = np.argsort(values, kind="stable")
            self._sorted = values[order]
            self._codes = order.astype(np.int64)
            self._table = {int(v): int(c) for v, c in zip(self._sorted, self._codes, strict=True)}

    def add(self, column: np.ndarray, flat: np.ndarray, start: int) -> None:
        """Add the counts of ``column``'s values to ``flat[start : start + size]``."""
        self.add_codes(self.codes_of(column), flat, start)

    def codes_of(self, column: np.ndarray) -> list[int] | np.ndarray:
        """The codes of ``column``'s values: a few (a serving batch) are looked up one by one in a dict,
        as a list (a handful of numpy calls would cost more); many, vectorized, as an array."""
        if len(column) > _FEW:
            return self.codes(column)
        get, other = self._table.get, self._other
        values = column.tolist() if self._bytes else column.astype(np.int64, copy=False).tolist()
        return [get(v, other) for v in values]

    def add_codes(self, codes: list[int] | np.ndarray, flat: np.ndarray, start: int) -> None:
        if type(codes) is not list:
            flat[start : start + self.size] += np.bincount(codes, minlength=self.size)
        elif len(codes) == 1:
            flat[start + codes[0]] += 1
        elif codes:
            counts = [0] * self.size
            for c in codes:
                counts[c] += 1
            flat[start : start + self.size] += counts

    def codes(self, column: np.ndarray) -> np.ndarray:
        if self._bytes:
            get, other = self._table.get, self._other
            return np.fromiter((get(v, other) for v in column.tolist()), dtype=np.int64, count=len(column))
        col = column.astype(np.int64, copy=False)
        if len(self._sorted) == 0:
            return np.full(len(col), self._other, dtype=np.int64)
        pos = np.searchsorted(self._sorted, col)
        np.clip(pos, 0, len(self._sorted) - 1, out=pos)
        return np.where(self._sorted[pos] == col, self._codes[pos], self._other)


class SourceCounter:
    """Counts one source (a tensor's columns, or a value derived from an output's rows)."""

    def __init__(self, source: Source, slots: Sequence[FeatureSlot], update_counts: UpdateCounts | None) -> None:
        self.source = source
        self._update = update_counts
        self._bound: Callable[[np.ndarray, np.ndarray], None] | None = None
        self._derive = source.derive
        self._width = source.width
        numeric = [(j, s) for j, s in enumerate(slots) if s.kind == NUMERIC]
        self._numeric_cols = np.array([j for j, _ in numeric], dtype=np.intp)
        self._all_numeric = len(numeric) == len(slots) and list(self._numeric_cols) == list(range(len(slots)))
        self._numeric_block: tuple[int, int, int] | None = None
        if numeric:
            k = len(numeric[0][1].feature.edges)  # type: ignore[union-attr]
            self._edges = np.ascontiguousarray(
                np.array([s.feature.edges for _, s in numeric], dtype=np.float64).T  # type: ignore[union-attr]
            )
            start = numeric[0][1].start
            self._numeric_block = (start, start + len(numeric) * (k + 3), k + 3)
            self._bound = _bind(update_counts, self._edges)
        self._categorical = [
            (j, CategoryLookup(s.feature, source.value_kind), s.start)  # type: ignore[arg-type]
            for j, s in enumerate(slots)
            if s.kind == CATEGORICAL
        ]
        self._float_values = source.value_kind == "float"

    def values(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Stack the tensors of many requests into the ``(rows, width)`` matrix of this source's values."""
        stacked = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        matrix = stacked.reshape(-1, self._width)
        if self._derive == "confidence":
            return matrix.max(axis=1, keepdims=True) if len(matrix) else matrix[:, :1]
        if self._derive == "class":
            return matrix.argmax(axis=1).reshape(-1, 1) if len(matrix) else matrix[:, :1].astype(np.int64)
        return matrix

    def _kernel_values(self, values: np.ndarray) -> np.ndarray:
        """The numeric columns of ``values`` as the kernel takes them (float32 or float64)."""
        numeric = values if self._all_numeric else values[:, self._numeric_cols]
        dtype = numeric.dtype
        if self._float_values and (dtype is _F32 or dtype is _F64):
            return numeric
        if dtype == np.float16 or not self._float_values:
            return numeric.astype(np.float32 if dtype == np.float16 else np.float64)
        return numeric if dtype in (np.float32, np.float64) else numeric.astype(np.float64)

    def count(self, values: np.ndarray, flat: np.ndarray) -> None:
        """Add the counts of ``values`` (``(rows, width)``) into ``flat``."""
        if len(values) == 0:
            return
        if self._numeric_block is not None:
            start, stop, stride = self._numeric_block
            block = flat[start:stop].reshape(-1, stride)
            self._update(block, self._kernel_values(values), self._edges)  # type: ignore[misc]  # set with numeric
        for col, lookup, start in self._categorical:
            lookup.add(values[:, col], flat, start)

    # -- one serving batch, in two phases ----------------------------------------------------------
    def block(self, flat: np.ndarray) -> np.ndarray | None:
        """The ``(F, K + 3)`` view of ``flat`` holding this source's numeric counts (None: none)."""
        if self._numeric_block is None:
            return None
        start, stop, stride = self._numeric_block
        return flat[start:stop].reshape(-1, stride)

    def read_batch(self, array: np.ndarray) -> tuple[np.ndarray | None, list]:
        """Phase 1, which may raise: one batch's tensor as the kernel's values and each categorical
        feature's codes. Nothing is counted yet."""
        matrix = array.reshape(-1, self._width)
        n = len(matrix)
        if n == 0:
            return None, []
        derive = self._derive
        if derive == "confidence":
            if n <= 8:
                values = matrix.max(axis=1, keepdims=True)
            else:  # the max along short rows: argmax and a gather beat max() past a few rows
                rows = _ROWS[:n] if n <= len(_ROWS) else np.arange(n)
                values = matrix[rows, matrix.argmax(axis=1)].reshape(-1, 1)
        elif derive == "class":
            values = matrix.argmax(axis=1).reshape(-1, 1)
        else:
            values = matrix
        numeric = self._kernel_values(values) if self._numeric_block is not None else None
        return numeric, [(lookup, lookup.codes_of(values[:, col]), start) for col, lookup, start in self._categorical]

    def add_batch(self, numeric: np.ndarray | None, codes: list, block: np.ndarray | None, flat: np.ndarray) -> None:
        """Phase 2: add what ``read_batch`` returned into ``flat`` (``block``: ``self.block(flat)``)."""
        if numeric is not None:
            self._bound(block, numeric)  # type: ignore[misc]  # bound whenever there are numeric features
        for lookup, c, start in codes:
            lookup.add_codes(c, flat, start)


class ProfileCounter:
    """A compiled profile: the flat layout, the reference counts in it and a counter per source."""

    def __init__(self, profile: ReferenceProfile, update_counts: UpdateCounts | None = None) -> None:
        if update_counts is None and any(f.kind == NUMERIC for s in profile.sources for f in s.features):
            from sidecar.monitoring.histogram import update_counts as kernel

            update_counts = kernel
        self.profile = profile
        slots: list[FeatureSlot] = []
        per_source: list[list[FeatureSlot]] = []
        offset = 0
        for source in profile.sources:
            mine: list[FeatureSlot | None] = [None] * len(source.features)
            # Numeric features first, adjacent, so the kernel updates them as one (F, K + 3) block.
            for kind in (NUMERIC, CATEGORICAL):
                for j, f in enumerate(source.features):
                    if f.kind != kind:
                        continue
                    size = len(f.counts)
                    mine[j] = FeatureSlot(source, f, offset, offset + size)
                    offset += size
            per_source.append([s for s in mine if s is not None])
            slots.extend(s for s in mine if s is not None)
        self.slots: tuple[FeatureSlot, ...] = tuple(slots)
        self.size = offset
        self.reference = np.zeros(offset, dtype=np.int64)
        for slot in slots:
            self.reference[slot.start : slot.stop] = slot.feature.counts
        self.sources = tuple(
            SourceCounter(s, sl, update_counts) for s, sl in zip(profile.sources, per_source, strict=True)
        )
        # Per source, its numeric features as one block: (slots, start, stop, counts per feature).
        blocks = []
        for sl in per_source:
            numeric = tuple(x for x in sl if x.kind == NUMERIC)
            if numeric:
                blocks.append((numeric, numeric[0].start, numeric[-1].stop, numeric[0].stop - numeric[0].start))
        self.numeric_blocks: tuple[tuple[tuple[FeatureSlot, ...], int, int, int], ...] = tuple(blocks)

    def zeros(self) -> np.ndarray:
        return np.zeros(self.size, dtype=np.int64)

    def count(
        self, inputs: Sequence[dict[str, np.ndarray]], outputs: Sequence[dict[str, np.ndarray]], flat: np.ndarray
    ) -> None:
        """Add the counts of many requests' inputs and outputs (dicts name -> array) into ``flat``.

        An output a request did not ask for is simply absent from its dict and not counted."""
        for counter in self.sources:
            tensor = counter.source.tensor
            side = inputs if counter.source.side == "input" else outputs
            arrays = [d[tensor] for d in side if tensor in d]
            if arrays:
                counter.count(counter.values(arrays), flat)

    def batch_counter(self, flat: np.ndarray) -> BatchCounter:
        """A counter of one batch at a time into ``flat`` (kept; zero it in place, never replace it)."""
        return BatchCounter(self, flat)


def _join(arrays: list[np.ndarray]) -> np.ndarray:
    """The values of several batches' tensors, in order (each source reads them as rows of its width)."""
    try:
        return np.concatenate(arrays)
    except ValueError:  # unbatched tensors (no batch dimension, scalars) or differing shapes: flat values
        return np.concatenate([a.reshape(-1) for a in arrays])


class BatchCounter:
    """Counts serving batches into one fixed flat vector: the vector's views and the kernels with their
    edges are bound once, so a call costs a few calls per source. A call is counted whole or not at
    all: every tensor is read (concatenated, shapes, derived values, category codes) before anything
    is added, and a tensor that cannot be read raises with nothing counted."""

    def __init__(self, counter: ProfileCounter, flat: np.ndarray) -> None:
        self._flat = flat
        self._plans = tuple((s.source.side == "input", s.source.tensor, s, s.block(flat)) for s in counter.sources)

    def __call__(self, inputs: Sequence[Mapping[str, np.ndarray]], outputs: Sequence[Mapping[str, np.ndarray]]) -> None:
        """Count the tensors of one or more batches (dicts name -> array, batch dimension first)."""
        read = []
        for is_input, tensor, source, block in self._plans:
            side = inputs if is_input else outputs
            if len(side) == 1:
                array = side[0].get(tensor)
            else:
                arrays = [d[tensor] for d in side if tensor in d]
                array = (arrays[0] if len(arrays) == 1 else _join(arrays)) if arrays else None
            if array is not None:
                read.append((source, block, *source.read_batch(array)))
        flat = self._flat
        for source, block, numeric, codes in read:
            source.add_batch(numeric, codes, block, flat)
