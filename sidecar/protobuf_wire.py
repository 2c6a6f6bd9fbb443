"""Protobuf wire format, written directly: for messages the sidecar writes without building a message
object per request (Open Inference Protocol answers and upstream requests, OTLP spans and metrics)."""

from __future__ import annotations

_SMALL = [bytes((i,)) for i in range(128)]
_INT64 = (1 << 64) - 1


def varint(n: int) -> bytes:
    """A base-128 varint; a negative int64 takes ten bytes, as protobuf writes it."""
    if 0 <= n < 128:
        return _SMALL[n]
    n &= _INT64
    out = bytearray()
    while n > 127:
        out.append((n & 127) | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def length_field(number: int, data: bytes) -> bytes:
    """A length-delimited field (bytes, string or message) with field number ``number``."""
    return varint(number << 3 | 2) + varint(len(data)) + data


def string_field(number: int, text: str) -> bytes:
    """A string field, written even when empty (so that it overrides an earlier value of the field)."""
    return length_field(number, text.encode("utf-8"))


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The base-128 varint at ``data[pos]``: (its value, the position after it). ``IndexError`` when the
    data ends inside it or it runs past ten bytes (not a varint)."""
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise IndexError("varint longer than ten bytes")
