"""A stand-in for ONNX Runtime's CUDA convolutions on a CPU: a session wrapper that stalls whenever
the batch size differs from its previous run's.

ONNX Runtime (>= 1.20, cuDNN frontend) keeps one convolution plan per node, for the last input shape,
and builds a new one whenever the shape changes (microsoft/onnxruntime#23006): 101-154 ms per change
for ResNet-50 on an H200. ``ReplanningSession`` reproduces that behaviour around any session, so the
batcher's answer to it (``engine.shape_buckets``) can be tested and benchmarked without a GPU.

    engine._session = ReplanningSession(engine._session, stall_s=0.02)
    with ReplanningEngines(stall_s=0.02) as made: ...   # every OnnxEngine made meanwhile, every session
"""

from __future__ import annotations

import threading
from typing import Any


class ReplanningSession:
    """``session`` whose ``run`` first waits ``stall_s`` (GIL released, like a native re-plan) whenever
    its batch size is not the previous run's. Thread-safe in the way the real one is: one plan, shared."""

    def __init__(self, session: Any, stall_s: float) -> None:
        self.session = session
        self.stall_s = stall_s
        self.replans = 0
        self._last: int | None = None
        self._lock = threading.Lock()

    def run(self, names: Any, feed: dict) -> Any:
        rows = next(iter(feed.values())).shape[0]
        with self._lock:  # the per-node state is guarded by a mutex in ONNX Runtime too
            if rows != self._last:
                self._last = rows
                self.replans += 1
                threading.Event().wait(self.stall_s)
        return self.session.run(names, feed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


class ReplanningEngines:
    """While active, every ``OnnxEngine`` made wraps each of its sessions (its first and any per-size
    ones) in a ``ReplanningSession``; ``sessions`` lists them all."""

    def __init__(self, stall_s: float) -> None:
        from sidecar.engine.onnx_session import OnnxEngine

        self.stall_s = stall_s
        self.sessions: list[ReplanningSession] = []
        self._cls = OnnxEngine
        self._init = OnnxEngine.__init__

    @property
    def replans(self) -> int:
        return sum(s.replans for s in self.sessions)

    def _wrap(self, session: Any) -> ReplanningSession:
        wrapped = ReplanningSession(session, self.stall_s)
        self.sessions.append(wrapped)
        return wrapped

    def __enter__(self) -> ReplanningEngines:
        init, wrap = self._init, self._wrap

        def patched(engine: Any, *args: Any, **kwargs: Any) -> None:
            init(engine, *args, **kwargs)
            make = engine._new_session
            engine._new_session = lambda: wrap(make())
            engine._session = wrap(engine._session)

        self._cls.__init__ = patched
        return self

    def __exit__(self, *exc: object) -> None:
        self._cls.__init__ = self._init
