"""Arrays for big merged batches, kept and reused once nothing refers to them any more.

A batch of image-sized requests merges into tens of megabytes (64 ResNet-50 images: 38.5 MB). An
array that big is a fresh memory mapping every time (glibc serves anything over its mmap threshold,
32 MiB at most, with a new mapping, and unmaps it on free), so every page of it faults on first
touch, and the kernel zeroes it, before the merge's copy can write it: that doubles a merge's cost
on this project's machines, and on the H100 machine a 64-image merge took 26 ms.

``MergeBuffers.take(rows, row_shape, dtype)`` returns an array of ``rows`` rows that is a view of a
kept buffer with room for at least that many (capacities are powers of two, up to the batch limit).
A buffer is free again when nothing but the pool refers to it: numpy views, memoryviews and the
monitor's kept rows all hold a reference to it, so a buffer in use is never handed out twice. At most
``per_shape`` buffers are kept per row shape and type (the batches in flight, one being merged and a
spare), and at most ``max_bytes`` in all (``batching.kept_merge_mb``); beyond that a take allocates a
fresh array, as before. Thread-safe: merges run on worker threads.
"""

from __future__ import annotations

import sys
import threading

import numpy as np


def _refs(kept: list, i: int) -> int:
    return sys.getrefcount(kept[i])


_FREE = _refs([object()], 0)  # what _refs says of an object only a list refers to (2 on CPython 3.11/3.12)


class MergeBuffers:
    def __init__(self, per_shape: int, max_rows: int, max_bytes: int | None = None) -> None:
        self._per_shape = max(1, per_shape)
        self._max_rows = max(1, max_rows)
        self._max_bytes = max_bytes  # None: no limit
        self._bytes = 0  # kept, in all
        self._kept: dict[tuple, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def _room(self, more: int) -> bool:
        return self._max_bytes is None or self._bytes + more <= self._max_bytes

    def take(self, rows: int, row_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An array of shape ``(rows, *row_shape)`` that nothing else refers to; its contents are
        whatever was there before."""
        key = (row_shape, np.dtype(dtype))
        with self._lock:
            kept = self._kept.setdefault(key, [])
            best = -1
            for i in range(len(kept)):
                size = len(kept[i])
                if size >= rows and (best < 0 or size < len(kept[best])) and _refs(kept, i) <= _FREE:
                    best = i
            if best >= 0:
                return kept[best][:rows]
            buffer = np.empty((max(rows, min(1 << (rows - 1).bit_length(), self._max_rows)), *row_shape), dtype)
            if len(kept) < self._per_shape and self._room(buffer.nbytes):
                kept.append(buffer)
                self._bytes += buffer.nbytes
            else:  # full (or no room): it replaces a smaller free one, if there is one and room for it
                for i in range(len(kept)):
                    old = kept[i].nbytes
                    if len(kept[i]) < len(buffer) and _refs(kept, i) <= _FREE and self._room(buffer.nbytes - old):
                        kept[i] = buffer
                        self._bytes += buffer.nbytes - old
                        break
            return buffer[:rows]

    @property
    def kept_bytes(self) -> int:
        return self._bytes
