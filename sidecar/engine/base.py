"""What every engine (a local ONNX Runtime session, an upstream server, a test fake) provides."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import Protocol

import numpy as np

from sidecar.types import TensorSpec

# The deadline (``time.monotonic_ns`` clock) of the request an engine runs for, set by the router on
# the request's task; engines that forward work elsewhere (the upstream proxy) propagate it. None when
# the request has no deadline or when the engine runs a merged batch outside any one request's task.
DEADLINE_NS: ContextVar[int | None] = ContextVar("sidecar_deadline_ns", default=None)


class Engine(Protocol):
    """One loaded model version's compute.

    ``max_batch_size`` > 0 means the first dimension of every input and output is the batch
    dimension (Triton's convention) and ``inputs``/``outputs`` shapes include it as -1.
    ``run`` must be safe to call concurrently and must not block the event loop.
    """

    platform: str
    provider: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int

    async def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...
