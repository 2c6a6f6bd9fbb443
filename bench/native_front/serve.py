"""The sidecar behind the prototype native front end (``front.cc``), for ``bench/native_front/compare.py``.

    python bench/native_front/serve.py --model-repository REPO --port PORT

Starts the sidecar as ``sidecar serve`` does (its own grpc.aio port on a free port: health, metadata,
everything else), then the C++ front on ``PORT``: ModelInfer calls arrive on gRPC's C++ threads, and
the event loop takes every queued call at one wake-up and answers each through the sidecar's own
servicer (with its telemetry wrapper), as a call to its grpc.aio port would be answered. A prototype:
no metadata, cancellation or streams.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "build"))

import _native_front  # built by bench/native_front/build.sh

from sidecar.cli import install_event_loop_policy
from sidecar.config import SidecarConfig

_Details = collections.namedtuple("_Details", "method invocation_metadata")


class _Aborted(Exception):
    def __init__(self, code: int, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _Context:
    """What the servicer and its wrapper ask of a ``grpc.aio.ServicerContext``, for a native call."""

    __slots__ = ("_code", "_deadline", "_details")

    def __init__(self, deadline_s: float) -> None:
        self._deadline = deadline_s
        self._code = None
        self._details = ""

    def invocation_metadata(self):
        return ()

    def time_remaining(self):
        return None if self._deadline < 0 else max(self._deadline - time.time(), 0.0)

    async def abort(self, code, details=""):
        self._code, self._details = code, details
        raise _Aborted(code.value[0], details)

    def code(self):
        return self._code

    def details(self):
        return self._details


class _Registrar:
    def __init__(self) -> None:
        self.handlers: list = []

    def add_generic_rpc_handlers(self, handlers):
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, *args):
        pass


async def main(args: argparse.Namespace) -> None:
    from sidecar.app import Sidecar

    config = SidecarConfig.load(
        None, overrides={"repository.path": args.model_repository, "server.grpc_port": 0, "server.control_port": -1}
    )
    app = Sidecar(config)
    await app.start()
    registrar = _Registrar()
    app.register_inference(registrar)
    infer = None
    for handler in registrar.handlers:
        found = handler.service(_Details("/inference.GRPCInferenceService/ModelInfer", ()))
        if found is not None:
            infer = found.unary_unary
            break
    front = _native_front.Front(args.port)
    loop = asyncio.get_running_loop()

    async def answer(handle: int, request: bytes, deadline_s: float) -> None:
        try:
            response = await infer(request, _Context(deadline_s))
        except _Aborted as exc:
            front.fail(handle, exc.code, exc.details)
        except BaseException as exc:
            front.fail(handle, 13, f"internal error: {type(exc).__name__}: {exc}")
            if not isinstance(exc, Exception):
                raise
        else:
            front.respond(handle, response)

    tasks: set[asyncio.Task] = set()

    def drain() -> None:
        for handle, request, deadline_s in front.take():
            task = loop.create_task(answer(handle, request, deadline_s))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    loop.add_reader(front.fileno(), drain)
    print("ready", flush=True)
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    loop.remove_reader(front.fileno())
    front.shutdown()
    await app.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--model-repository", required=True)
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    from sidecar import grpc_io

    grpc_io.choose(SidecarConfig.load(None).server.grpc_io, a.model_repository)  # as `sidecar serve`, before gRPC
    install_event_loop_policy()
    asyncio.run(main(a))
