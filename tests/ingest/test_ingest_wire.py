"""The relay's frames and the workers' shared-memory ring (sidecar/ingest/wire.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.ingest import wire


def test_a_call_frame_round_trips_with_its_metadata_and_deadline() -> None:
    metadata = (("x-routing-key", "user-7"), ("traceparent", "00-ab-cd-01"), ("blob-bin", b"\x00\xff"))
    parts = wire.call_frame(42, wire.MODEL_INFER, 1.5, metadata, b"payload")
    frames = wire.FrameReader(1 << 20).feed(b"".join(parts))
    assert [(k, i) for k, i, _ in frames] == [(wire.CALL, 42)]
    method, remaining, got, payload = wire.parse_call(frames[0][2])
    assert (method, remaining, payload) == (wire.MODEL_INFER, 1.5, b"payload")
    assert got == metadata


def test_no_deadline_travels_as_none() -> None:
    frames = wire.FrameReader(1 << 20).feed(b"".join(wire.call_frame(1, 0, None, (), b"")))
    assert wire.parse_call(frames[0][2])[1] is None


def test_frames_split_anywhere_are_put_back_together() -> None:
    stream = b"".join(
        [
            *wire.call_frame(1, 3, None, (), b"a" * 1000),
            *wire.reply_frame(2, 5, "model 'x' is not in the repository"),
            wire.cancel_frame(3),
        ]
    )
    reader = wire.FrameReader(1 << 20)
    frames = []
    for i in range(0, len(stream), 7):
        frames += reader.feed(stream[i : i + 7])
    assert [(k, i) for k, i, _ in frames] == [(wire.CALL, 1), (wire.REPLY, 2), (wire.CANCEL, 3)]
    assert wire.parse_reply(frames[1][2]) == (5, "model 'x' is not in the repository", b"")
    assert wire.parse_call(frames[0][2])[3] == b"a" * 1000


def test_a_frame_over_the_limit_or_of_no_kind_is_refused() -> None:
    with pytest.raises(wire.WireError, match="at most 100"):
        wire.FrameReader(100).feed(b"".join(wire.call_frame(1, 0, None, (), b"x" * 200)))
    with pytest.raises(wire.WireError, match="kind 9"):
        wire.FrameReader(100).feed(wire.HEADER.pack(0, 9, 1))


def test_a_call_naming_no_method_does_not_parse() -> None:
    frames = wire.FrameReader(1 << 20).feed(b"".join(wire.call_frame(1, len(wire.METHODS), None, (), b"")))
    with pytest.raises(wire.WireError, match="names method"):
        wire.parse_call(frames[0][2])


@pytest.fixture
def ring_path(tmp_path: Path) -> str:
    return str(tmp_path / "ring")


def test_the_ring_hands_out_space_in_order_and_reuses_it_behind_the_oldest(ring_path: str) -> None:
    ring = wire.SharedRing(ring_path, 100)
    try:
        a, b, c = ring.put(b"a" * 40), ring.put(b"b" * 40), ring.put(b"c" * 40)
        assert a == (0, 40) and b == (40, 40) and c is None  # 20 left at the end, and a holds the start
        ring.free(0)
        assert ring.put(b"d" * 30) == (0, 30)  # wraps to the front, freed by a
        assert ring.put(b"e" * 20) is None  # only 10 left before b, the oldest
        ring.free(40)
        assert ring.put(b"e" * 20) == (30, 20)
        _, view = wire.map_ring(ring_path)
        assert bytes(view[0:30]) == b"d" * 30 and bytes(view[30:50]) == b"e" * 20
        view.release()
    finally:
        ring.close()
    assert not os.path.exists(ring_path)


def test_a_wrapped_ring_full_up_to_its_oldest_gives_nothing_more(ring_path: str) -> None:
    """After wrapping round, the space ends at the oldest allocation still held, also when the newest
    ends exactly there (head == tail): nothing may be handed out over a payload still in use."""
    ring = wire.SharedRing(ring_path, 450)
    try:
        a, b, c, d = (ring.put(bytes([i]) * 100) for i in range(4))
        assert [a, b, c, d] == [(0, 100), (100, 100), (200, 100), (300, 100)]
        ring.free(0)
        assert ring.put(b"e" * 100) == (0, 100)  # wraps round into a's space, up to b
        assert ring.put(b"f" * 100) is None  # [100, 200) is b's, still held
        assert ring.put(b"g" * 40) is None
        ring.free(100)
        assert ring.put(b"f" * 100) == (100, 100)
    finally:
        ring.close()


def test_a_shared_call_is_copied_out_of_the_ring(ring_path: str) -> None:
    ring = wire.SharedRing(ring_path, 1 << 16)
    try:
        span = ring.put(b"tensor bytes")
        frames = wire.FrameReader(1 << 20).feed(b"".join(wire.call_frame(7, 2, None, (), b"", span)))
        assert frames[0][0] == wire.CALL_SHARED
        mapping, view = wire.map_ring(ring_path)
        assert wire.parse_call(frames[0][2], view)[3] == b"tensor bytes"
        bad = b"".join(wire.call_frame(8, 2, None, (), b"", (1 << 16, 10)))
        with pytest.raises(wire.WireError, match="outside the shared ring"):
            wire.parse_call(wire.FrameReader(1 << 20).feed(bad)[0][2], view)
        view.release()
        mapping.close()
    finally:
        ring.close()


def test_a_payload_read_in_place_is_given_back_when_nothing_refers_to_it(ring_path: str) -> None:
    """``SharedSlots.view``: the serving process's zero-copy read of a worker's payload. The request's
    tensors are views of it (as ``PlannedInputs`` makes them); its space is freed only after the last."""
    import gc

    import numpy as np

    ring = wire.SharedRing(ring_path, 1 << 16)
    freed: list[int] = []
    try:
        span = ring.put(np.arange(8, dtype=np.float32).tobytes())
        slots = wire.SharedSlots(ring_path, freed.append)
        view = slots.view(*span)
        assert view.readonly and bytes(view[:4]) == np.float32(0).tobytes()
        tensor = np.ndarray((2, 4), np.float32, view, 0)  # how a planned request's input is made
        head = view[:8]
        del view
        gc.collect()
        assert freed == []
        np.testing.assert_array_equal(tensor, np.arange(8, dtype=np.float32).reshape(2, 4))
        del tensor
        gc.collect()
        assert freed == []  # a slice of the view is still alive
        del head
        gc.collect()
        assert freed == [span[0]]
        slots.close()
    finally:
        ring.close()


def test_free_frames_round_trip() -> None:
    frames = wire.FrameReader(1 << 10).feed(wire.free_frame([0, 4096, 1 << 40]))
    assert frames[0][0] == wire.FREE and wire.parse_free(frames[0][2]) == [0, 4096, 1 << 40]


def test_a_ring_the_memory_cannot_hold_is_refused_at_once(ring_path: str, monkeypatch) -> None:
    """No space for the ring (a container's small /dev/shm): refused when it is made, its file removed,
    and the worker then sends every message through the socket."""
    import errno

    from sidecar.ingest import worker

    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError, match="No space"):
        wire.SharedRing(ring_path, 1 << 20)
    assert not os.path.exists(ring_path)
    assert worker._ring("ingest-test") is None


def test_the_ring_never_hands_out_space_in_use(ring_path: str) -> None:
    """Random payload sizes, freed in random order: every payload handed out lies inside the ring and
    clear of every payload still held, and its bytes are still there when it is freed."""
    import random

    rng = random.Random(7)
    ring = wire.SharedRing(ring_path, 10_000)
    _, view = wire.map_ring(ring_path)
    held: dict[int, tuple[int, bytes]] = {}
    try:
        for step in range(20_000):
            if held and (rng.random() < 0.45 or len(held) > 12):
                offset = rng.choice(list(held))
                length, data = held.pop(offset)
                assert bytes(view[offset : offset + length]) == data, step
                ring.free(offset)
                continue
            data = bytes([step % 251]) * rng.randint(1, 3_000)
            span = ring.put(data)
            if span is None:
                continue
            offset, length = span
            assert offset >= 0 and offset + length <= 10_000
            assert all(offset + length <= o or o + n <= offset for o, (n, _) in held.items()), step
            held[offset] = (length, data)
    finally:
        view.release()
        ring.close()
