"""A request forwarded as it came to an unbatched upstream goes out before it is decoded and checked
against the signature (DirectScheduler.begin); a request that then fails the check gets the sidecar's
own INVALID_ARGUMENT and its call is cancelled. Statistics come once the caller has its answer."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from sidecar.batching.scheduler import DirectScheduler
from sidecar.engine.metadata import VersionMetadata
from sidecar.engine.repository import ModelVersion, VersionState
from sidecar.engine.semver import SemVer
from sidecar.errors import InvalidTensor
from sidecar.protocol._generated import grpc_service_pb2 as pb
from sidecar.protocol.codec import decode_request
from sidecar.types import TensorSpec


class Started:
    sent = True  # on its way when start_forward returns, as UpstreamEngine's (engine.upstream_call)

    def __init__(self, encoded: bytes, deadline_ns: int | None) -> None:
        self.encoded = encoded
        self.deadline_ns = deadline_ns
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ForwardingEngine:
    """Stands in for UpstreamEngine's forwarding interface; records what was started and awaited."""

    inputs = (TensorSpec("input", "FP32", (-1, 4)),)
    outputs = (TensorSpec("sum", "FP32", (-1,)),)
    max_batch_size = 8
    provider = "upstream:test"

    def __init__(self) -> None:
        self.started: list[Started] = []
        self.finished: list[Started] = []

    def start_forward(self, encoded: bytes, deadline_ns: int | None, names_end: int = -1) -> Started:
        handle = Started(encoded, deadline_ns)
        self.started.append(handle)
        return handle

    async def finish_forward(self, handle: Started) -> dict[str, np.ndarray]:
        self.finished.append(handle)
        msg = pb.ModelInferRequest.FromString(handle.encoded)
        x = np.frombuffer(msg.raw_input_contents[0], np.float32).reshape(-1, 4)
        return {"sum": x.sum(axis=1)}

    async def forward(self, encoded: bytes, names_end: int = -1) -> dict[str, np.ndarray]:
        raise AssertionError("a started request must be finished, not forwarded again")

    async def run(self, inputs, output_names):
        raise AssertionError("a request with its bytes must be forwarded, not run")


def version() -> tuple[ModelVersion, ForwardingEngine]:
    engine = ForwardingEngine()
    mv = ModelVersion("m", SemVer.parse("1.0.0"), Path("."), VersionMetadata())
    mv.engine = engine
    mv.scheduler = DirectScheduler(engine, mv.stats, "m", "1.0.0")
    mv.state = VersionState.READY
    return mv, engine


def request(x: np.ndarray, raw: bytes | None = None, deadline_ns: int | None = None):
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    msg.raw_input_contents.append(x.tobytes() if raw is None else raw)
    encoded = msg.SerializeToString()
    return decode_request(pb.ModelInferRequest.FromString(encoded), deadline_ns, None, encoded, lazy_inputs=True)


async def test_a_valid_request_is_started_before_its_check_and_answered_from_that_call():
    mv, engine = version()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    deadline = time.monotonic_ns() + 10_000_000_000
    response = await mv.infer(request(x, deadline_ns=deadline))
    np.testing.assert_array_equal(response.outputs["sum"], x.sum(axis=1))
    assert len(engine.started) == 1 and engine.finished == engine.started
    assert engine.started[0].deadline_ns == deadline and not engine.started[0].cancelled
    # The execution statistics are recorded right after the answer, at the loop's next turn.
    assert mv.stats.execution_count == 0
    await asyncio.sleep(0)
    assert (mv.stats.execution_count, mv.stats.inference_count) == (1, 2)


@pytest.mark.parametrize(
    ("x", "raw", "words"),
    [
        (np.zeros((2, 5), np.float32), None, "the model expects [-1, 4]"),  # fails the signature check
        (np.zeros((2, 4), np.float32), b"\x00" * 12, "raw contents hold 12 bytes"),  # fails decoding
    ],
)
async def test_a_request_that_fails_its_check_is_refused_and_its_call_cancelled(x, raw, words):
    mv, engine = version()
    with pytest.raises(InvalidTensor) as caught:
        await mv.infer(request(x, raw))
    assert "'input'" in caught.value.message and words in caught.value.message
    (started,) = engine.started
    assert started.cancelled and engine.finished == []
    # The version keeps serving.
    ok = await mv.infer(request(np.ones((1, 4), np.float32)))
    assert ok.outputs["sum"].tolist() == [4.0]
