"""A small, scriptable Open Inference Protocol server for tests and benchmarks of the upstream proxy.

It serves one model whose answer is computed by a Python function, after an optional delay, or
fails with a chosen gRPC status, so tests can make an upstream that is slow, broken or garbage:

    with FakeUpstream(model="m", delay_s=1.0) as up:        # answers after a second
        ...  up.target  ("127.0.0.1:<port>")

Default model: ``input`` FP32 [-1, 4] -> ``probabilities`` FP32 [-1, 3] (softmax of fixed weights)
and ``label`` INT64 [-1]; ``inputs``/``outputs``/``compute`` replace it. ``max_batch_size`` is reported
through ModelConfig. ``delay_s``, ``fail_with`` and ``ready`` may be changed while it runs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

from sidecar.protocol._generated import grpc_service_pb2 as pb
from sidecar.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from sidecar.protocol._generated import model_config_pb2 as mc
from sidecar.types import TensorSpec

_W = np.array([[1.0, -1.0, 0.5], [0.2, 0.3, -0.4], [-0.7, 0.1, 0.9], [0.4, 0.4, -0.2]], dtype=np.float32)
DEFAULT_INPUTS = (TensorSpec("input", "FP32", (-1, 4)),)
DEFAULT_OUTPUTS = (TensorSpec("probabilities", "FP32", (-1, 3)), TensorSpec("label", "INT64", (-1,)))


def default_compute(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    logits = inputs["input"].astype(np.float32) @ _W
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {"probabilities": (e / e.sum(axis=1, keepdims=True)).astype(np.float32), "label": logits.argmax(axis=1)}


class _Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, up: FakeUpstream) -> None:
        self.up = up

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.up.ready)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.up.ready and request.name == self.up.model)

    async def ModelMetadata(self, request, context):
        if request.name != self.up.model:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.name}")
        resp = pb.ModelMetadataResponse(name=self.up.model, versions=["1"], platform="fake")
        for spec in self.up.inputs:
            resp.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        for spec in self.up.outputs:
            resp.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return resp

    async def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(config=mc.ModelConfig(name=self.up.model, max_batch_size=self.up.max_batch_size))

    async def ModelInfer(self, request, context):
        up = self.up
        up.calls += 1
        up.last_request = request
        up.last_metadata = dict(context.invocation_metadata() or ())
        up.in_flight += 1
        up.max_in_flight = max(up.max_in_flight, up.in_flight)
        try:
            if up.delay_s:
                await asyncio.sleep(up.delay_s)
        finally:
            up.in_flight -= 1
        if up.fail_with is not None:
            await context.abort(up.fail_with, f"fake upstream failure ({up.fail_with.name})")
        inputs = {}
        for i, t in enumerate(request.inputs):
            dtype = np.float32 if t.datatype == "FP32" else np.int64
            inputs[t.name] = np.frombuffer(request.raw_input_contents[i], dtype=dtype).reshape(tuple(t.shape))
        outputs = up.compute(inputs)
        wanted = [o.name for o in request.outputs] or list(outputs)
        resp = pb.ModelInferResponse(model_name=up.model, model_version="1", id=request.id)
        for name in wanted:
            array = np.ascontiguousarray(outputs[name])
            datatype = {"f": "FP32", "i": "INT64"}[array.dtype.kind]
            resp.outputs.add(name=name, datatype=datatype, shape=array.shape)
            resp.raw_output_contents.append(array.astype(np.float32 if datatype == "FP32" else np.int64).tobytes())
        return resp


class FakeUpstream:
    def __init__(
        self,
        model: str = "fake",
        delay_s: float = 0.0,
        fail_with: grpc.StatusCode | None = None,
        compute: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] = default_compute,
        max_batch_size: int = 8,
        port: int = 0,
        inputs: tuple[TensorSpec, ...] = DEFAULT_INPUTS,
        outputs: tuple[TensorSpec, ...] = DEFAULT_OUTPUTS,
    ) -> None:
        self.model = model
        self.delay_s = delay_s
        self.fail_with = fail_with
        self.compute = compute
        self.max_batch_size = max_batch_size
        self.inputs = inputs
        self.outputs = outputs
        self.ready = True
        self.calls = 0
        self.in_flight = 0  # inference calls being answered now
        self.max_in_flight = 0  # the most at once since start (or since a test reset it)
        self.last_request: pb.ModelInferRequest | None = None  # the last inference request received
        self.last_metadata: dict[str, str] = {}  # and the gRPC metadata it came with
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stopped: asyncio.Event | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeUpstream:
        self._thread = threading.Thread(target=self._run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise TimeoutError("fake upstream did not start")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        loop.run_until_complete(self._main())
        loop.close()

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(self), server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server
        self._started.set()
        await self._stopped.wait()
        await server.stop(0)

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
