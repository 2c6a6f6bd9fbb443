"""Answering a bidirectional stream's requests concurrently, in request order (ModelStreamInfer)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

STREAM_WINDOW = 1024  # requests of one stream in flight before the reader waits


async def answer_in_order(
    requests: AsyncIterator[Any], answer: Callable[[Any], Awaitable[Any]], window: int = STREAM_WINDOW
) -> AsyncIterator[Any]:
    """``answer(request)`` for each request as it arrives (at most ``window`` at once), the answers
    yielded in request order. When the stream ends early, answers still running are cancelled."""
    pending: asyncio.Queue = asyncio.Queue(maxsize=window)

    async def reader() -> None:
        try:
            async for request in requests:
                await pending.put(asyncio.ensure_future(answer(request)))
        finally:
            await pending.put(None)

    reader_task = asyncio.ensure_future(reader())
    try:
        while True:
            fut = await pending.get()
            if fut is None:
                break
            yield await fut
        await reader_task
    finally:
        if not reader_task.done():
            reader_task.cancel()
        while not pending.empty():
            fut = pending.get_nowait()
            if fut is not None:
                fut.cancel()
