"""Big merges are written into kept buffers, reused only once nothing refers to them any more."""

from __future__ import annotations

import threading

import numpy as np

from sidecar.batching.buffers import MergeBuffers


def test_a_buffer_is_reused_only_when_nothing_refers_to_it():
    pool = MergeBuffers(per_shape=3, max_rows=128)
    a = pool.take(64, (4,), np.float32)
    assert a.shape == (64, 4) and a.base.shape == (64, 4)  # capacity: the next power of two
    first = id(a.base)  # (not the buffer itself: a reference here would keep it taken)
    b = pool.take(64, (4,), np.float32)
    assert id(b.base) != first  # a is in use
    del a
    c = pool.take(60, (4,), np.float32)
    assert id(c.base) == first and c.shape == (60, 4)  # a's buffer, free again
    rows = c[1:3]  # a view of a view (the monitor keeps rows like this)
    held = memoryview(pool.take(64, (4,), np.float32))
    del c
    d = pool.take(64, (4,), np.float32)
    assert id(d.base) not in (first, id(held.obj.base))  # one held by a view, one by a memoryview
    del rows
    assert id(pool.take(64, (4,), np.float32).base) == first
    # Another row shape or type has buffers of its own.
    assert id(pool.take(64, (5,), np.float32).base) != first
    assert pool.take(64, (4,), np.float64).dtype == np.float64


def test_no_more_than_max_bytes_are_kept():
    row = (256,)  # 1 KiB per float32 row
    pool = MergeBuffers(per_shape=4, max_rows=64, max_bytes=80 << 10)  # room for one 64-row buffer (64 KiB), not two
    a = pool.take(64, row, np.float32)
    assert pool.kept_bytes == 64 << 10
    b = pool.take(32, row, np.float32)  # 32 KiB more would pass the limit: a fresh array, not kept
    assert pool.kept_bytes == 64 << 10
    del a, b
    c = pool.take(16, row, np.float32)
    assert c.base.shape == (64, 256) and pool.kept_bytes == 64 << 10  # the kept one, free again
    none = MergeBuffers(per_shape=4, max_rows=64, max_bytes=0)  # batching.kept_merge_mb = 0: keep nothing
    first = none.take(64, row, np.float32)
    assert none.kept_bytes == 0 and first.shape == (64, 256)  # a fresh array, not kept
    del first
    assert none.take(64, row, np.float32).shape == (64, 256) and none.kept_bytes == 0


def test_the_smallest_free_buffer_that_fits_is_taken_and_at_most_per_shape_are_kept():
    pool = MergeBuffers(per_shape=2, max_rows=128)
    a, b = pool.take(10, (2,), np.float32), pool.take(100, (2,), np.float32)
    assert (len(a.base), len(b.base)) == (16, 128)  # capacities: powers of two
    small, large = id(a.base), id(b.base)
    del a, b
    assert id(pool.take(8, (2,), np.float32).base) == small
    assert id(pool.take(16, (2,), np.float32).base) == small
    assert id(pool.take(17, (2,), np.float32).base) == large
    kept = pool.kept_bytes
    held = [pool.take(128, (2,), np.float32) for _ in range(4)]  # more than are kept: fresh arrays
    assert len({id(h.base) for h in held}) == 4
    assert pool.kept_bytes == kept + (128 - 16) * 2 * 4  # the free small one was replaced by a full-size one
    assert pool.take(300, (2,), np.float32).shape == (300, 2)  # past max_rows: exactly what was asked


def test_threads_never_get_the_same_buffer_at_once():
    pool = MergeBuffers(per_shape=4, max_rows=64)
    errors = []

    def merge(value: float) -> None:
        for _ in range(300):
            out = pool.take(64, (16,), np.float32)
            out[:] = value
            if not (out == value).all():
                errors.append(value)

    threads = [threading.Thread(target=merge, args=(float(i),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
