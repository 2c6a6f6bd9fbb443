"""Server lifecycle state shared by the servicers: ready, draining, and requests in flight.

Draining order (``Sidecar.drain``): health NOT_SERVING and ``draining`` set, so new inference
requests get UNAVAILABLE; wait for ``inflight`` to reach zero (bounded by the drain timeout); then the
batchers are flushed, the engines closed and telemetry flushed.
"""

from __future__ import annotations

import asyncio


class Lifecycle:
    def __init__(self) -> None:
        self.started = False
        self.draining = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def ready(self) -> bool:
        return self.started and not self.draining

    @property
    def inflight(self) -> int:
        return self._inflight

    def enter(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
