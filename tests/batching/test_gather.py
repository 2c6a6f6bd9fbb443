"""The batch merge's copy without the GIL (sidecar.batching.gather, C helper _gather_native)."""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.batching import gather
from sidecar.batching.gather import concatenate_into


def _parts(rows: list[int], row_shape: tuple[int, ...] = (3, 4), dtype: str = "float32") -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    # read-only views of bytes, as the codec hands the batcher a request's tensors
    return [
        np.frombuffer(rng.standard_normal((r, *row_shape)).astype(dtype).tobytes(), dtype).reshape(r, *row_shape)
        for r in rows
    ]


@pytest.fixture(autouse=True)
def _gather_small_merges_too(monkeypatch) -> None:
    # the tests' arrays are small; the C path is taken for merges of GATHER_MIN_BYTES and more
    monkeypatch.setattr(gather, "GATHER_MIN_BYTES", 0)


def test_small_merges_stay_with_numpy(monkeypatch) -> None:
    monkeypatch.setattr(gather, "GATHER_MIN_BYTES", 1 << 18)
    called = []
    monkeypatch.setattr(gather, "_gather", lambda out, parts: called.append(1))
    parts = _parts([1, 2])
    out = np.empty((3, 3, 4), np.float32)
    concatenate_into(out, parts)
    assert not called and np.array_equal(out, np.concatenate(parts))
    big = _parts([1, 1], row_shape=(1 << 16,))
    concatenate_into(np.empty((2, 1 << 16), np.float32), big)
    assert called == [1]


def test_the_native_helper_is_built() -> None:
    # setup.py builds it with the other C extensions; CI installs with a compiler
    assert gather.NATIVE


@pytest.mark.parametrize("dtype", ["float32", "int64", "uint8", "float16"])
def test_rows_land_in_order_exactly_as_numpy_puts_them(dtype: str) -> None:
    parts = _parts([1, 3, 1, 2], dtype=dtype)
    out = np.full((7, 3, 4), 9, dtype)
    concatenate_into(out, parts)
    assert np.array_equal(out, np.concatenate(parts))


def test_writes_into_a_view_of_a_bigger_buffer_and_leaves_the_rest() -> None:
    parts = _parts([2, 2])
    buffer = np.full((8, 3, 4), -1.0, np.float32)
    concatenate_into(buffer[:4], parts)
    assert np.array_equal(buffer[:4], np.concatenate(parts))
    assert (buffer[4:] == -1.0).all()


def test_parts_numpy_must_handle_still_merge_right() -> None:
    # a non-contiguous part, a part of another type: the numpy path, same result
    base = np.arange(2 * 3 * 8, dtype=np.float32).reshape(2, 3, 8)
    strided = base[:, :, ::2]
    other = np.ones((1, 3, 4), np.float64)
    out = np.empty((3, 3, 4), np.float32)
    concatenate_into(out, [strided, other])
    assert np.array_equal(out, np.concatenate([strided, other.astype(np.float32)]))


def test_rows_that_do_not_add_up_fail_as_numpy_fails() -> None:
    with pytest.raises(ValueError):
        concatenate_into(np.empty((3, 3, 4), np.float32), _parts([1, 1]))


@pytest.mark.skipif(not gather.NATIVE, reason="checks the C helper itself")
def test_the_c_helper_refuses_what_it_cannot_write() -> None:
    from sidecar.batching._gather_native import gather as native

    parts = _parts([2, 2])
    with pytest.raises(ValueError, match="the parts hold 192 bytes, the destination 48"):
        native(np.empty((1, 3, 4), np.float32), parts)
    with pytest.raises((BufferError, ValueError), match="contiguous"):
        native(np.empty((4, 3, 8), np.float32)[:, :, ::2], parts)  # dest not contiguous
    with pytest.raises((BufferError, ValueError), match=r"writ|read-only"):
        native(parts[0], parts)  # dest read-only
    with pytest.raises(TypeError):
        native(np.empty(4), 5)
    assert native(np.empty(0, np.uint8), []) == 0
