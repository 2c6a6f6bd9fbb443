"""Per-feature histograms of a batch against fixed, per-feature edges: the native kernel and its numpy twin.

API
---
``update_counts(counts, values, edges) -> None`` accumulates one batch into ``counts`` in place:

* ``values``: ``(N, F)`` float32 or float64, one row per observation (``N`` may be 0). A
  non-contiguous array (a column slice, a transpose) or one in non-native byte order is first copied to
  a C-ordered native array; nothing else is converted (cast integers or float16 yourself).
* ``edges``: ``(K, F)`` float64, C-contiguous and EDGE-MAJOR: row ``k`` holds edge ``k`` of every
  feature. Each column is finite and sorted non-decreasing (repeated edges are allowed); ``K >= 2``.
* ``counts``: ``(F, K + 3)`` int64, C-contiguous, writeable. Per feature ``f``:

  ======================  ====================================================================
  ``counts[f, 0]``        finite values ``< edges[0, f]``
  ``counts[f, 1:K]``      ``numpy.histogram(values[:, f], bins=edges[:, f])[0]``: ``[e[i-1], e[i])``,
                          the last bin closed ``[e[K-2], e[K-1]]``
  ``counts[f, K]``        finite values ``> edges[K-1, f]``
  ``counts[f, K + 1]``    NaN
  ``counts[f, K + 2]``    ``+inf`` or ``-inf``
  ======================  ====================================================================

  Every one of the ``N * F`` values is counted exactly once. Comparisons are exact (a float32 value
  compares with a float64 edge as numpy does, in float64). An update is not atomic: callers serialize
  updates of the same ``counts`` array (the kernel itself keeps no state, so distinct arrays may be
  updated from several threads at once).

Arguments are validated here, in Python, and a ``ValueError`` names what is wrong (shape, dtype,
contiguity, ``K < 2``, the first non-finite or unsorted edge). The native code trusts what it gets and
runs with the GIL released for batches of 16384 values or more (below that it takes under a few
microseconds and keeping the GIL is cheaper).

Which implementation
--------------------
``KERNEL`` is ``"native"`` (the C kernel in ``native/``, built by ``pip install``) or ``"numpy"`` (the
twin: same results, slower). ``NATIVE_VARIANT`` names the instruction set the C kernel chose at run
time (``"avx512"``, ``"avx2"`` or ``"generic"``; ``None`` under the twin). The choice is logged once at
import: INFO ``histogram kernel: native (C, vectorized)`` or a WARNING saying why the twin is used;
``kernel_attributes()`` gives the same facts as metric attributes. The environment variable
``SIDECAR_HISTOGRAM_KERNEL`` (read once, at import) selects: ``auto`` (default: native when built),
``numpy`` (force the twin) or ``native`` (fail at import if the kernel is not built).

``implementations()`` maps each available implementation's name to its ``update_counts`` (same
validation, same results); the test suite runs against every one of them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "KERNEL",
    "KERNEL_ENV",
    "NATIVE_VARIANT",
    "UpdateCounts",
    "bound_update",
    "implementations",
    "kernel_attributes",
    "update_counts",
]

log = logging.getLogger(__name__)

UpdateCounts = Callable[[np.ndarray, np.ndarray, np.ndarray], None]

KERNEL_ENV = "SIDECAR_HISTOGRAM_KERNEL"

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_I64 = np.dtype(np.int64)
_LOWEST = float(np.finfo(np.float64).min)
# Rows per step of the twin, so its (rows, K + 2, F) comparison block stays near 4 MB.
_TWIN_BLOCK_VALUES = 1 << 22


# ----------------------------------------------------------------------------------------------------
# Validation (shared by both implementations; only the edge scan differs)


def _first_invalid_edge_numpy(edges: np.ndarray, k: int, f: int) -> int:
    ok = np.isfinite(edges)
    ok[1:] &= edges[1:] >= edges[:-1]
    if ok.all():
        return -1
    return int(np.flatnonzero(~ok)[0])


def _edge_error(edges: np.ndarray, flat_index: int) -> ValueError:
    i, j = divmod(flat_index, edges.shape[1])
    value = edges[i, j]
    if not np.isfinite(value):
        return ValueError(f"edges[{i}, {j}] is {float(value)}: every edge must be finite")
    return ValueError(
        f"edges[{i}, {j}] = {float(value)!r} is below edges[{i - 1}, {j}] = {float(edges[i - 1, j])!r}: "
        "each column of the edge-major (K, F) edges must be sorted non-decreasing"
    )


def _describe(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"array of shape {a.shape} and dtype {a.dtype}"
    return type(a).__name__


def _prepare(
    counts: np.ndarray, values: np.ndarray, edges: np.ndarray, first_invalid_edge: Callable[[np.ndarray, int, int], int]
) -> tuple[np.ndarray, int, int, int]:
    """Check the arguments; return values (C-ordered, native float32/float64) and N, F, K."""
    # Fast path, for arguments already exactly as the kernel takes them (a 1-row update costs about a
    # microsecond, so every attribute read here counts); anything else goes through _prepare_slowly,
    # which converts values where the contract allows and otherwise says precisely what is wrong.
    if (
        type(values) is np.ndarray
        and type(edges) is np.ndarray
        and type(counts) is np.ndarray
        and (values.dtype is _F32 or values.dtype is _F64)
        and edges.dtype is _F64
        and counts.dtype is _I64
        and values.ndim == 2
        and edges.ndim == 2
        and counts.ndim == 2
        and values.flags.c_contiguous
        and edges.flags.c_contiguous
    ):
        n, f = values.shape
        k, edge_columns = edges.shape
        rows, columns = counts.shape
        flags = counts.flags
        if edge_columns == f and k >= 2 and rows == f and columns == k + 3 and flags.c_contiguous and flags.writeable:
            bad = first_invalid_edge(edges, k, f)
            if bad >= 0:
                raise _edge_error(edges, bad)
            return values, n, f, k
    return _prepare_slowly(counts, values, edges, first_invalid_edge)


def _prepare_slowly(
    counts: np.ndarray, values: np.ndarray, edges: np.ndarray, first_invalid_edge: Callable[[np.ndarray, int, int], int]
) -> tuple[np.ndarray, int, int, int]:
    if not isinstance(values, np.ndarray) or values.ndim != 2:
        raise ValueError(f"values must be a 2-D (N, F) numpy array, got {_describe(values)}")
    dtype = values.dtype
    if dtype is not _F32 and dtype is not _F64 and dtype != _F32 and dtype != _F64:
        if dtype.kind != "f" or dtype.itemsize not in (4, 8):
            raise ValueError(
                f"values must be float32 or float64, got {dtype}; cast them first (e.g. astype(np.float64))"
            )
        values = values.astype(dtype.newbyteorder("="))  # non-native byte order: copied
    if not values.flags.c_contiguous:
        values = np.ascontiguousarray(values)  # documented: non-contiguous input is copied
    n, f = values.shape
    if not isinstance(edges, np.ndarray) or edges.ndim != 2 or edges.dtype != _F64:
        raise ValueError(f"edges must be a 2-D (K, F) float64 numpy array, got {_describe(edges)}")
    k = edges.shape[0]
    if edges.shape[1] != f:
        raise ValueError(
            f"edges has {edges.shape[1]} columns but values has {f} features (edges are (K, F), edge-major)"
        )
    if k < 2:
        raise ValueError(f"edges needs at least 2 rows (K >= 2 edges per feature), got {k}")
    if not edges.flags.c_contiguous or not edges.dtype.isnative:
        raise ValueError("edges must be C-contiguous native float64 (np.ascontiguousarray(edges, dtype=np.float64))")
    if not isinstance(counts, np.ndarray) or counts.dtype != _I64 or counts.shape != (f, k + 3):
        raise ValueError(f"counts must be an int64 array of shape ({f}, {k + 3}) (F, K + 3), got {_describe(counts)}")
    if not counts.flags.c_contiguous or not counts.flags.writeable or not counts.dtype.isnative:
        raise ValueError("counts must be a writeable C-contiguous native int64 array (it is updated in place)")
    bad = first_invalid_edge(edges, k, f)
    if bad >= 0:
        raise _edge_error(edges, bad)
    return values, n, f, k


# ----------------------------------------------------------------------------------------------------
# The numpy twin: the same threshold counts as the C kernel's count path, by broadcasting


def _numpy_kernel(counts: np.ndarray, values: np.ndarray, edges: np.ndarray, n: int, f: int, k: int) -> None:
    if n == 0 or f == 0:
        return
    # A value passing exactly c of these k + 2 thresholds (>=) lies in bin c - 1 for c = 1 .. k + 1;
    # c = k + 2 is +inf, c = 0 is NaN or -inf. ">= nextafter(e, inf)" is "> e" exactly, in float64,
    # where numpy compares float32 values with float64 thresholds.
    thresholds = np.empty((k + 2, f))
    thresholds[0] = _LOWEST
    thresholds[1:k] = edges[: k - 1]
    thresholds[k] = np.nextafter(edges[k - 1], np.inf)
    thresholds[k + 1] = np.inf
    step = max(1, _TWIN_BLOCK_VALUES // ((k + 2) * f))
    for start in range(0, n, step):
        block = values[start : start + step]
        passed = (block[:, None, :] >= thresholds).sum(axis=0)
        nan = np.isnan(block).sum(axis=0)
        counts[:, : k + 1] += (passed[:-1] - passed[1:]).T
        counts[:, k + 1] += nan
        counts[:, k + 2] += passed[k + 1] + (len(block) - passed[0] - nan)


def _update_numpy(counts: np.ndarray, values: np.ndarray, edges: np.ndarray) -> None:
    """``update_counts`` by the numpy twin."""
    values, n, f, k = _prepare(counts, values, edges, _first_invalid_edge_numpy)
    _numpy_kernel(counts, values, edges, n, f, k)


# ----------------------------------------------------------------------------------------------------
# The native kernel


def _load_native() -> tuple[Any, str]:
    """The binding module, or None and why it is unavailable."""
    try:
        from sidecar.monitoring import _histogram_native
    except ImportError as exc:
        return None, f"the C extension sidecar.monitoring._histogram_native is not built ({exc})"
    return _histogram_native, ""


_native, _native_missing = _load_native()
_IMPLEMENTATIONS: dict[str, UpdateCounts] = {"numpy": _update_numpy}

if _native is not None:
    _native_f32 = _native.update_f32
    _native_f64 = _native.update_f64
    _native_first_invalid_edge = _native.first_invalid_edge

    def _update_native(counts: np.ndarray, values: np.ndarray, edges: np.ndarray) -> None:
        """``update_counts`` by the C kernel."""
        values, n, f, k = _prepare(counts, values, edges, _native_first_invalid_edge)
        if values.itemsize == 4:
            _native_f32(counts, values, edges, n, f, k)
        else:
            _native_f64(counts, values, edges, n, f, k)

    _IMPLEMENTATIONS = {"native": _update_native, "numpy": _update_numpy}


def _choose() -> tuple[str, str]:
    """The implementation to use and, for the twin, why."""
    wanted = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
    if wanted not in ("auto", "native", "numpy"):
        raise ValueError(f"{KERNEL_ENV}={wanted!r}: expected auto, native or numpy")
    if wanted == "numpy":
        return "numpy", f"{KERNEL_ENV}=numpy"
    if _native is None:
        if wanted == "native":
            raise RuntimeError(f"{KERNEL_ENV}=native but {_native_missing}")
        return "numpy", _native_missing
    return "native", ""


KERNEL, _reason = _choose()
NATIVE_VARIANT: str | None = _native.VARIANT if KERNEL == "native" else None
update_counts: UpdateCounts = _IMPLEMENTATIONS[KERNEL]

if KERNEL == "native":
    log.info("histogram kernel: native (C, vectorized), %s instructions", NATIVE_VARIANT)
else:
    log.warning("histogram kernel: numpy twin (slower, same results) because %s", _reason)


def bound_update(edges: np.ndarray, implementation: str = "") -> Callable[[np.ndarray, np.ndarray], None]:
    """``update_counts`` with ``edges`` checked once, for the serving path: ``update(counts, values)``.

    The caller promises ``counts`` is the ``(F, K + 3)`` int64 C-contiguous writeable array for these
    edges (a view it made once). ``values`` that are not a C-contiguous ``(N, F)`` float32/float64
    array take the full ``update_counts`` path (converted or refused there), so nothing unchecked
    reaches the kernel. Saves the per-call argument and edge checks (about half of a 1-row update).
    ``implementation``: ``"native"`` or ``"numpy"`` (default: ``KERNEL``)."""
    name = implementation or KERNEL
    full = _IMPLEMENTATIONS[name]
    edges = np.ascontiguousarray(edges, dtype=np.float64)
    k, f = edges.shape if edges.ndim == 2 else (0, 0)
    full(np.zeros((f, k + 3), np.int64), np.zeros((0, f)), edges)  # the full check of the edges, once
    f32, f64 = (_native_f32, _native_f64) if name == "native" else (None, None)

    def update(counts: np.ndarray, values: np.ndarray) -> None:
        if type(values) is not np.ndarray or values.ndim != 2 or values.shape[1] != f or not values.flags.c_contiguous:
            full(counts, values, edges)
        elif values.dtype is _F32 and f32 is not None:
            f32(counts, values, edges, values.shape[0], f, k)
        elif values.dtype is _F64 and f64 is not None:
            f64(counts, values, edges, values.shape[0], f, k)
        elif f32 is None and (values.dtype is _F32 or values.dtype is _F64):
            _numpy_kernel(counts, values, edges, values.shape[0], f, k)
        else:
            full(counts, values, edges)

    return update


def implementations() -> dict[str, UpdateCounts]:
    """Every available implementation by name (``"native"`` when built, always ``"numpy"``)."""
    return dict(_IMPLEMENTATIONS)


def kernel_attributes() -> dict[str, str]:
    """The active kernel as metric attributes: ``{"kernel": "native", "variant": "avx512"}``."""
    return {"kernel": KERNEL, "variant": NATIVE_VARIANT or "numpy"}
