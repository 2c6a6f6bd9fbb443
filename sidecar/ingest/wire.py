"""The frames an ingest worker and the serving process exchange over their Unix socket.

Every frame is a 9-byte header, ``!IBI`` (body length, kind, call id), then the body:

- ``CALL`` (worker -> server): method index (u8, into ``METHODS``), the caller's time remaining (f64
  seconds, negative for no deadline), the number of metadata entries (u16), each entry as key length
  (u16), key, value length (u32), value; then the request message's bytes as they came off the wire.
- ``CALL_SHARED`` (worker -> server): as ``CALL``, except that the request's bytes are in the worker's
  shared-memory ring (``SharedRing``) and the body ends with their offset and length (``!QQ``)
  instead: a large message is copied once in user space instead of through the socket.
- ``HELLO`` (worker -> server, first): the path of the worker's shared-memory ring (empty: none).
- ``FREE`` (server -> worker): offsets (``!Q`` each) of shared payloads nothing refers to any more:
  the serving process reads a shared request in place (``SharedSlots``), for as long as any part of
  it is alive (its tensors, a shadow copy, the monitor's held batches), then gives its space back.
- ``CANCEL`` (worker -> server): the caller went away; no body.
- ``REPLY`` (server -> worker): the gRPC status code (u8, 0 = OK), details length (u32), details
  (UTF-8); then the response message's bytes (nothing unless OK).

Metadata keys and values are passed as they are (text values UTF-8 encoded; ``-bin`` keys as bytes).
One connection per worker carries all its calls at once, told apart by call id.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

HEADER = struct.Struct("!IBI")  # body length, kind, call id
CALL_HEAD = struct.Struct("!BdH")  # method index, time remaining (s; < 0: none), metadata entries
REPLY_HEAD = struct.Struct("!BI")  # status code, details length
_KEY = struct.Struct("!H")
_VALUE = struct.Struct("!I")

_SPAN = struct.Struct("!QQ")  # offset, length in the shared ring

_OFFSET = struct.Struct("!Q")

CALL, CANCEL, REPLY, CALL_SHARED, HELLO, FREE = 1, 2, 3, 4, 5, 6
KINDS = frozenset((CALL, CANCEL, REPLY, CALL_SHARED, HELLO, FREE))

# What a worker relays, by index: the inference service's unary methods, health checking's Check, and
# each message of a ModelStreamInfer stream.
INFERENCE = "/inference.GRPCInferenceService/"
METHODS: tuple[str, ...] = (
    INFERENCE + "ServerLive",
    INFERENCE + "ServerReady",
    INFERENCE + "ModelReady",
    INFERENCE + "ServerMetadata",
    INFERENCE + "ModelMetadata",
    INFERENCE + "ModelInfer",
    INFERENCE + "ModelConfig",
    INFERENCE + "ModelStatistics",
    INFERENCE + "RepositoryIndex",
    INFERENCE + "RepositoryModelLoad",
    INFERENCE + "RepositoryModelUnload",
    "/grpc.health.v1.Health/Check",
    "/sidecar.ingest/StreamMessage",  # one ModelStreamInfer message (not a gRPC method of its own)
)
METHOD_INDEX = {m: i for i, m in enumerate(METHODS)}
MODEL_INFER = METHOD_INDEX[INFERENCE + "ModelInfer"]
STREAM_MESSAGE = len(METHODS) - 1


class WireError(Exception):
    """A frame that does not parse: the connection is closed."""


def call_frame(
    call_id: int,
    method: int,
    remaining_s: float | None,
    metadata: Iterable,
    payload: bytes,
    shared: tuple | None = None,
) -> list:
    """A CALL frame as a list of buffers (for ``writelines``: the payload is not copied); with ``shared``
    (offset, length) a CALL_SHARED frame whose payload is in the ring, ``payload`` unused."""
    kind = CALL
    if shared is not None:
        kind, payload = CALL_SHARED, _SPAN.pack(*shared)
    parts = [CALL_HEAD.pack(method, -1.0 if remaining_s is None else remaining_s, 0)]
    count = 0
    for key, value in metadata:
        k = key.encode() if isinstance(key, str) else key
        v = value.encode() if isinstance(value, str) else value
        parts.append(_KEY.pack(len(k)) + k + _VALUE.pack(len(v)) + v)
        count += 1
    if count:
        parts[0] = CALL_HEAD.pack(method, -1.0 if remaining_s is None else remaining_s, count)
    size = sum(len(p) for p in parts) + len(payload)
    return [HEADER.pack(size, kind, call_id), *parts, payload]


def parse_call(
    body: bytes | memoryview, ring: Any = None
) -> tuple[int, float | None, tuple[tuple[str, str | bytes], ...], Any]:
    """(method index, time remaining or None, metadata, payload) of a CALL frame's body; of a
    CALL_SHARED frame's with ``ring``: a memoryview of the worker's shared memory (the payload is
    copied out of it) or a ``SharedSlots`` (the payload is a read-only view of it, no copy)."""
    try:
        method, remaining, count = CALL_HEAD.unpack_from(body, 0)
        pos = CALL_HEAD.size
        metadata = []
        for _ in range(count):
            (klen,) = _KEY.unpack_from(body, pos)
            key = bytes(body[pos + 2 : pos + 2 + klen]).decode()
            pos += 2 + klen
            (vlen,) = _VALUE.unpack_from(body, pos)
            raw = bytes(body[pos + 4 : pos + 4 + vlen])
            pos += 4 + vlen
            metadata.append((key, raw if key.endswith("-bin") else raw.decode()))
        if method >= len(METHODS) or pos > len(body):
            raise WireError(f"a CALL frame names method {method} or runs past its end")
        if ring is None:
            payload = bytes(body[pos:])
        else:
            offset, length = _SPAN.unpack_from(body, pos)
            if offset + length > len(ring):
                raise WireError(f"a CALL frame's payload [{offset}, +{length}) is outside the shared ring")
            payload = (
                ring.view(offset, length) if isinstance(ring, SharedSlots) else bytes(ring[offset : offset + length])
            )
    except (struct.error, UnicodeDecodeError) as exc:
        raise WireError(f"a CALL frame does not parse: {exc}") from None
    return method, (None if remaining < 0 else remaining), tuple(metadata), payload


def reply_frame(call_id: int, code: int, details: str, payload: bytes = b"") -> Sequence[bytes]:
    text = details.encode()
    head = REPLY_HEAD.pack(code, len(text))
    return (HEADER.pack(len(head) + len(text) + len(payload), REPLY, call_id), head + text, payload)


def parse_reply(body: bytes | memoryview) -> tuple[int, str, bytes]:
    """(status code, details, response bytes) of a REPLY frame's body."""
    try:
        code, dlen = REPLY_HEAD.unpack_from(body, 0)
        start = REPLY_HEAD.size
        details = bytes(body[start : start + dlen]).decode()
    except (struct.error, UnicodeDecodeError) as exc:
        raise WireError(f"a REPLY frame does not parse: {exc}") from None
    return code, details, bytes(body[start + dlen :])


def cancel_frame(call_id: int) -> bytes:
    return HEADER.pack(0, CANCEL, call_id)


def free_frame(offsets: Sequence[int]) -> bytes:
    body = b"".join(_OFFSET.pack(o) for o in offsets)
    return HEADER.pack(len(body), FREE, 0) + body


def parse_free(body: bytes) -> list[int]:
    if len(body) % _OFFSET.size:
        raise WireError(f"a FREE frame of {len(body)} bytes")
    return [o for (o,) in _OFFSET.iter_unpack(body)]


def hello_frame(ring_path: str) -> bytes:
    text = ring_path.encode()
    return HEADER.pack(len(text), HELLO, 0) + text


class SharedRing:
    """A worker's shared memory for large request messages: a file under /dev/shm, mapped by the
    worker (which writes) and the serving process (which copies each message out as its call starts).

    ``put(payload)`` returns the (offset, length) it was written at, or None when it does not fit: the
    message then goes through the socket. Space is handed out in a ring and freed per call
    (``free(offset)`` once the call's REPLY came: by then the serving process has copied it), in any
    order; space behind the oldest call still held is reused only when that call ends.
    """

    def __init__(self, path: str, size: int) -> None:
        import mmap
        import os

        self.path = path
        self.size = size
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            # Reserve the memory now: a tmpfs too small for it (a container's /dev/shm is often 64 MB)
            # fails here with ENOSPC, instead of killing the worker with SIGBUS on a later write.
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, size)
            else:  # pragma: no cover - not Linux
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        self._view = memoryview(self._map)
        self._live: dict[int, int] = {}  # offset -> end, in the order given out (dicts keep it)

    def put(self, payload: bytes) -> tuple[int, int] | None:
        n = len(payload)
        live = self._live
        if live:
            tail = next(iter(live))  # the oldest still held
            newest = next(reversed(live))
            head = live[newest]  # where the newest ends (a newer one may have been freed already)
            if newest >= tail:  # the newest lies after the oldest: free are [head, size) and [0, tail)
                pos = head if self.size - head >= n else (0 if tail >= n else -1)
            else:  # the newest wrapped round to before it: free is [head, tail) alone
                pos = head if tail - head >= n else -1
        else:
            pos = 0 if self.size >= n else -1
        if pos < 0:
            return None
        self._view[pos : pos + n] = payload
        live[pos] = pos + n
        return pos, n

    def free(self, offset: int) -> None:
        self._live.pop(offset, None)

    def close(self) -> None:
        import contextlib
        import os

        self._view.release()
        self._map.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class SharedSlots:
    """The serving process's side of a worker's ring when requests are read in place: ``view(offset,
    length)`` is a read-only memoryview of one payload, over a numpy array of its own (so every array,
    slice and view made from it keeps it alive); when the last of them goes, ``on_free(offset)`` is
    called (from whichever thread let go of it), and the worker may reuse the space."""

    def __init__(self, path: str, on_free: Any) -> None:
        import numpy as np

        self._np = np
        self.mapping, self._ring = map_ring(path)
        self._on_free = on_free

    def __len__(self) -> int:
        return len(self._ring)

    def view(self, offset: int, length: int) -> memoryview:
        import weakref

        slot = self._np.frombuffer(self.mapping, self._np.uint8, length, offset)
        weakref.finalize(slot, self._on_free, offset)
        return memoryview(slot)

    def close(self) -> None:
        """Unmap now if nothing refers to a payload any more, else when the last reference goes."""
        import contextlib

        self._ring.release()
        with contextlib.suppress(BufferError):
            self.mapping.close()


def map_ring(path: str) -> tuple[object, memoryview]:
    """The serving process's read-only view of a worker's ring: (the mapping, a view of it)."""
    import mmap
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        mapping = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    return mapping, memoryview(mapping)


class FrameReader:
    """Splits a byte stream into frames: ``feed(data)`` returns the complete frames it made up,
    as (kind, call id, body) with ``body`` a bytes object of its own."""

    __slots__ = ("_buffer", "_max_body")

    def __init__(self, max_body: int) -> None:
        self._buffer = bytearray()
        self._max_body = max_body

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, int, bytes]]:
        buffer = self._buffer
        buffer += data
        frames = []
        pos = 0
        size = len(buffer)
        while size - pos >= HEADER.size:
            length, kind, call_id = HEADER.unpack_from(buffer, pos)
            if length > self._max_body or kind not in KINDS:
                raise WireError(f"a frame of kind {kind} and {length} bytes (at most {self._max_body})")
            end = pos + HEADER.size + length
            if end > size:
                break
            frames.append((kind, call_id, bytes(buffer[pos + HEADER.size : end])))
            pos = end
        if pos:
            del buffer[:pos]
        return frames
