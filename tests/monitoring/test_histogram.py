"""The histogram kernel's contract, run against every implementation (native C and the numpy twin).

``numpy.histogram`` is the oracle for the interior bins; the outer bins are checked from their
definitions; every value must be counted exactly once.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.monitoring import histogram
from sidecar.monitoring.histogram import implementations

IMPLEMENTATIONS = implementations()


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def update(request: pytest.FixtureRequest):
    return IMPLEMENTATIONS[request.param]


def expected_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The contract, feature by feature, with numpy.histogram for the interior bins."""
    k, f = edges.shape
    out = np.zeros((f, k + 3), dtype=np.int64)
    for j in range(f):
        col = values[:, j].astype(np.float64)
        finite = col[np.isfinite(col)]
        out[j, 0] = np.count_nonzero(finite < edges[0, j])
        out[j, 1:k] = np.histogram(values[:, j], bins=edges[:, j])[0]
        out[j, k] = np.count_nonzero(finite > edges[k - 1, j])
        out[j, k + 1] = np.count_nonzero(np.isnan(col))
        out[j, k + 2] = np.count_nonzero(np.isinf(col))
    return out


def check(update, values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Accumulate onto non-zero counts and compare with the oracle; return the batch's counts."""
    k, f = edges.shape
    start = np.arange(f * (k + 3), dtype=np.int64).reshape(f, k + 3)
    counts = start.copy()
    update(counts, values, edges)
    got = counts - start
    np.testing.assert_array_equal(got, expected_counts(values, edges))
    assert got.sum() == values.size
    return got


# --------------------------------------------------------------------------------------------------
# Property tests against numpy.histogram

_POOL = [-1e300, -2.5, -1.0, -0.1, 0.0, 1 / 3, 0.1, 0.5, 1.0, 1.0 + 2**-40, 3.4e38, 3.5e38, 1e300]


@st.composite
def batches(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    k = draw(st.integers(2, 12))
    f = draw(st.integers(1, 9))
    n = draw(st.integers(0, 40))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)
    # Edges from a small pool (so columns repeat edges and share them with values) plus arbitrary floats.
    edge = st.one_of(st.sampled_from(_POOL), finite)
    edges = np.sort(np.array(draw(st.lists(edge, min_size=k * f, max_size=k * f))).reshape(k, f), axis=0)
    edges = np.ascontiguousarray(edges)
    values = np.empty((n, f), dtype=dtype)
    with np.errstate(over="ignore"):  # float32 copies of edges beyond its range become +-inf
        fill_values(draw, values, edges, finite)
    return values, edges


def fill_values(draw: st.DrawFn, values: np.ndarray, edges: np.ndarray, finite: st.SearchStrategy[float]) -> None:
    """Values on, next to and between the edges, and NaN / +-inf."""
    dtype = values.dtype.type
    (n, f), k = values.shape, edges.shape[0]
    for i in range(n):
        for j in range(f):
            e = float(edges[draw(st.integers(0, k - 1)), j])
            kind = draw(st.integers(0, 7))
            if kind == 0:
                v = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
            elif kind == 1:
                v = e  # exactly on an edge (after rounding to float32 for float32 values)
            elif kind == 2:  # the representable neighbours of an edge
                v = float(np.nextafter(dtype(e), dtype(draw(st.sampled_from([-np.inf, np.inf])))))
            else:
                v = draw(finite)
            values[i, j] = v


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches())
@pytest.mark.parametrize("name", sorted(IMPLEMENTATIONS))
def test_matches_numpy_histogram(name: str, batch: tuple[np.ndarray, np.ndarray]) -> None:
    values, edges = batch
    check(IMPLEMENTATIONS[name], values, edges)


# --------------------------------------------------------------------------------------------------
# Edge cases, named


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_batch_leaves_counts_unchanged(update, dtype) -> None:
    edges = np.array([[0.0, 1.0], [1.0, 2.0]])
    counts = np.full((2, 5), 7, dtype=np.int64)
    update(counts, np.empty((0, 2), dtype=dtype), edges)
    assert (counts == 7).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_row_every_category(update, dtype) -> None:
    # K = 3 edges per feature: 0, 1, 2 -> bins [0, 1), [1, 2]
    edges = np.tile(np.array([[0.0], [1.0], [2.0]]), (1, 8))
    row = np.array([[-5.0, 0.0, 1.0, 2.0, 2.5, np.nan, np.inf, -np.inf]], dtype=dtype)
    counts = np.zeros((8, 6), dtype=np.int64)
    update(counts, row, edges)
    #                 below  [0,1) [1,2]  above  nan  inf
    expected = [
        [1, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],  # the last edge belongs to the last bin (closed)
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0, 1],
    ]
    np.testing.assert_array_equal(counts, expected)


def test_repeated_edges(update) -> None:
    edges = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    values = np.array([[0.5, 0.0], [1.0, 1.0], [1.5, 0.5], [2.0, 2.0]])
    got = check(update, values, edges)
    # Feature 0: bins [1,1) and [1,1) are empty, [1,2] holds 1.0, 1.5 and 2.0.
    np.testing.assert_array_equal(got[0], [1, 0, 0, 3, 0, 0, 0])
    # Feature 1: [0,1) holds 0.0 and 0.5; [1,1) is empty; the closed last bin [1,1] holds 1.0.
    np.testing.assert_array_equal(got[1], [0, 2, 0, 1, 1, 0, 0])


def test_float32_values_compare_exactly_with_float64_edges(update) -> None:
    # 0.1 is not a float32: float32(0.1) > 0.1, and its lower neighbour < 0.1.
    e = 0.1
    below = np.nextafter(np.float32(e), np.float32(-np.inf))
    values = np.array([[below], [np.float32(e)]], dtype=np.float32)
    edges = np.array([[e], [float(np.float32(e))], [1.0]])
    got = check(update, values, edges)
    np.testing.assert_array_equal(got[0], [1, 0, 1, 0, 0, 0])


def test_extreme_edges_beyond_float32_range(update) -> None:
    edges = np.array([[-1e300], [3.4e38], [3.5e38]])
    f32max = np.finfo(np.float32).max
    values = np.array([[-f32max], [f32max], [np.inf], [-np.inf], [0.0]], dtype=np.float32)
    got = check(update, values, edges)
    np.testing.assert_array_equal(got[0], [0, 2, 1, 0, 0, 2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, f", [(1, 64), (11, 3), (12, 3), (17, 64), (300, 17), (5000, 70)])
def test_random_batches_both_paths(update, dtype, n: int, f: int) -> None:
    # Row counts on both sides of the kernel's small-batch path, widths that are and are not a multiple
    # of the vector width, NaN and inf sprinkled in.
    rng = np.random.default_rng(n * 1000 + f)
    edges = np.ascontiguousarray(np.sort(rng.normal(size=(11, f)), axis=0))
    values = rng.normal(scale=1.5, size=(n, f)).astype(dtype)
    values[rng.random(size=values.shape) < 0.02] = np.nan
    values[rng.random(size=values.shape) < 0.01] = np.inf
    values[rng.random(size=values.shape) < 0.01] = -np.inf
    check(update, values, edges)


def test_counts_accumulate_over_calls(update) -> None:
    rng = np.random.default_rng(3)
    edges = np.ascontiguousarray(np.sort(rng.normal(size=(5, 4)), axis=0))
    a, b = rng.normal(size=(40, 4)), rng.normal(size=(7, 4))
    counts = np.zeros((4, 8), dtype=np.int64)
    update(counts, a, edges)
    update(counts, b, edges)
    np.testing.assert_array_equal(counts, expected_counts(np.vstack([a, b]), edges))


def read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda a: a[:, ::2], id="column-slice"),
        pytest.param(lambda a: a[::3], id="row-step"),
        pytest.param(lambda a: np.asfortranarray(a), id="fortran-order"),
        pytest.param(lambda a: a.astype(a.dtype.newbyteorder(">")), id="big-endian"),
        pytest.param(read_only, id="read-only"),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_values_in_any_layout(update, make, dtype) -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(size=(60, 10)).astype(dtype)
    values = make(base)
    edges = np.ascontiguousarray(np.sort(rng.normal(size=(6, values.shape[1])), axis=0))
    counts = np.zeros((values.shape[1], 9), dtype=np.int64)
    before = values.copy()
    update(counts, values, edges)
    np.testing.assert_array_equal(counts, expected_counts(np.ascontiguousarray(values), edges))
    np.testing.assert_array_equal(values, before)


def test_implementations_agree_bit_for_bit() -> None:
    rng = np.random.default_rng(11)
    edges = np.ascontiguousarray(np.sort(rng.normal(size=(10, 33)), axis=0))
    values = rng.normal(size=(777, 33)).astype(np.float32)
    values[::7, ::5] = np.nan
    results = []
    for update in IMPLEMENTATIONS.values():
        counts = np.zeros((33, 13), dtype=np.int64)
        update(counts, values, edges)
        results.append(counts)
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)


# --------------------------------------------------------------------------------------------------
# bound_update: the serving path's update, edges checked once


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches())
@pytest.mark.parametrize("name", sorted(IMPLEMENTATIONS))
def test_bound_update_matches_numpy_histogram(name: str, batch: tuple[np.ndarray, np.ndarray]) -> None:
    values, edges = batch
    bound = histogram.bound_update(edges, name)
    check(lambda counts, v, e: bound(counts, v), values, edges)


@pytest.mark.parametrize("name", sorted(IMPLEMENTATIONS))
def test_bound_update_takes_any_layout_and_refuses_what_update_counts_refuses(name: str) -> None:
    rng = np.random.default_rng(8)
    edges = np.ascontiguousarray(np.sort(rng.normal(size=(6, 5)), axis=0))
    bound = histogram.bound_update(edges, name)
    base = rng.normal(size=(40, 10)).astype(np.float32)
    for values in (base[:, ::2], np.asfortranarray(base[:, :5]), base[:, :5].astype(">f8"), base[:1, :5].copy()):
        counts = np.zeros((5, 9), dtype=np.int64)
        bound(counts, values)
        np.testing.assert_array_equal(counts, expected_counts(np.ascontiguousarray(values), edges))
    with pytest.raises(ValueError, match="float32 or float64"):
        bound(np.zeros((5, 9), dtype=np.int64), np.zeros((3, 5), dtype=np.int32))
    with pytest.raises(ValueError, match="columns"):
        bound(np.zeros((5, 9), dtype=np.int64), np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"edges\[2, 1\] = 0.5 is below"):
        histogram.bound_update(unsorted_edges(), name)  # checked when bound, not per batch


# --------------------------------------------------------------------------------------------------
# Validation: the same clear ValueError from every implementation

EDGES = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
VALUES = np.zeros((3, 2))
COUNTS = np.zeros((2, 6), dtype=np.int64)


def unsorted_edges() -> np.ndarray:
    e = EDGES.copy()
    e[2, 1] = 0.5
    return e


def nan_edge() -> np.ndarray:
    e = EDGES.copy()
    e[1, 0] = np.nan
    return e


def inf_edge() -> np.ndarray:
    e = EDGES.copy()
    e[2, 0] = np.inf
    return e


def read_only_counts() -> np.ndarray:
    c = COUNTS.copy()
    c.flags.writeable = False
    return c


@pytest.mark.parametrize(
    "counts, values, edges, message",
    [
        pytest.param(COUNTS, np.zeros((3, 2), dtype=np.int32), EDGES, "float32 or float64", id="int-values"),
        pytest.param(COUNTS, np.zeros((3, 2), dtype=np.float16), EDGES, "float32 or float64", id="float16-values"),
        pytest.param(COUNTS, np.zeros(6), EDGES, "2-D", id="1d-values"),
        pytest.param(COUNTS, [[0.0, 0.0]], EDGES, "2-D", id="list-values"),
        pytest.param(COUNTS, VALUES, EDGES.astype(np.float32), "float64", id="float32-edges"),
        pytest.param(COUNTS, VALUES, EDGES[:, :1].copy(), "columns", id="edges-columns"),
        pytest.param(np.zeros((2, 4), dtype=np.int64), VALUES, EDGES[:1].copy(), "at least 2", id="one-edge"),
        pytest.param(COUNTS, VALUES, np.asfortranarray(EDGES), "C-contiguous", id="fortran-edges"),
        pytest.param(COUNTS, VALUES, unsorted_edges(), r"edges\[2, 1\] = 0.5 is below edges\[1, 1\]", id="unsorted"),
        pytest.param(COUNTS, VALUES, nan_edge(), r"edges\[1, 0\] is nan", id="nan-edge"),
        pytest.param(COUNTS, VALUES, inf_edge(), r"edges\[2, 0\] is inf", id="inf-edge"),
        pytest.param(np.zeros((2, 5), dtype=np.int64), VALUES, EDGES, r"shape \(2, 6\)", id="counts-shape"),
        pytest.param(np.zeros((2, 6), dtype=np.int32), VALUES, EDGES, "int64", id="counts-dtype"),
        pytest.param(np.zeros((6, 2), dtype=np.int64).T, VALUES, EDGES, "C-contiguous", id="counts-transposed"),
        pytest.param(read_only_counts(), VALUES, EDGES, "writeable", id="counts-read-only"),
    ],
)
def test_invalid_arguments_raise_value_error(update, counts, values, edges, message: str) -> None:
    before = counts.copy()
    with pytest.raises(ValueError, match=message):
        update(counts, values, edges)
    np.testing.assert_array_equal(counts, before)


# --------------------------------------------------------------------------------------------------
# Which implementation is active


def test_native_kernel_is_built() -> None:
    # CI machines have a C compiler, so `pip install -e .` must have built the extension; a missing
    # kernel there is a build regression, not a reason to test only the twin.
    assert "native" in IMPLEMENTATIONS, "sidecar.monitoring._histogram_native is not built (pip install -e .)"
    assert "numpy" in IMPLEMENTATIONS


def test_active_kernel_is_reported() -> None:
    assert histogram.KERNEL in IMPLEMENTATIONS
    assert histogram.update_counts is IMPLEMENTATIONS[histogram.KERNEL]
    attributes = histogram.kernel_attributes()
    assert attributes["kernel"] == histogram.KERNEL
    if histogram.KERNEL == "native":
        from sidecar.monitoring import _histogram_native

        assert histogram.NATIVE_VARIANT == _histogram_native.VARIANT
        assert histogram.NATIVE_VARIANT in _histogram_native.VARIANTS
        assert attributes["variant"] == histogram.NATIVE_VARIANT
    else:
        assert histogram.NATIVE_VARIANT is None
        assert attributes["variant"] == "numpy"
