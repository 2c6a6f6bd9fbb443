"""Run a real Sidecar in a background thread with its own event loop, for tests and benchmarks.

    with ServerThread(config) as server:
        client = tritonclient.grpc.InferenceServerClient(server.url)

The gRPC port defaults to 0 (a free port chosen by the OS); ``server.url`` has the bound address.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from sidecar.config import SidecarConfig


class ServerThread:
    def __init__(self, config: SidecarConfig, setup: Callable[[Any], None] | None = None) -> None:
        self.config = config
        self._setup = setup
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.app: Any = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.app.grpc_port}"

    @property
    def control_url(self) -> str:
        return f"127.0.0.1:{self.app.control_port}"

    def start(self, timeout_s: float = 60.0) -> ServerThread:
        self._thread = threading.Thread(target=self._run, name="sidecar-test-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise TimeoutError("sidecar did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            self._error = exc
            self._started.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        from sidecar.app import Sidecar

        self._stop = asyncio.Event()
        try:
            self.app = Sidecar(self.config)
            if self._setup is not None:
                self._setup(self.app)
            await self.app.start()
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        await self._stop.wait()
        await self.app.drain(timeout_s=10)
        await self.app.stop(0.5)

    def call(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 60.0) -> Any:
        """Run a coroutine on the server's loop (e.g. ``server.call(server.app.repository.load_model("m"))``)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def config_for_tests(repository_path: str, /, **sections: dict[str, Any]) -> SidecarConfig:
    """A config for tests: port 0 everywhere, CPU provider, small warm-up; ``sections`` override."""
    overrides: dict[str, Any] = {
        "repository.path": repository_path,
        "server.grpc_host": "127.0.0.1",
        "server.grpc_port": 0,
        "server.control_port": 0,
        "engine.providers": ["CPUExecutionProvider"],
        "engine.executor_threads": 2,
        "engine.intra_op_threads": 1,
        "telemetry.metrics_port": -1,  # no fixed Prometheus port (8002) in tests; telemetry={...} turns it on
    }
    for section, values in sections.items():
        for key, value in values.items():
            overrides[f"{section}.{key}"] = value
    return SidecarConfig.load(None, overrides=overrides, environ={})
