"""Unbatched upstream versions pass the caller's request bytes through and the upstream's answer back:
only the model name and version are rewritten, and monitoring still sees the tensors."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tritonclient.grpc as tc
from conftest import Control, write_upstream_version

from sidecar.engine.upstream_wire import ForwardedOutputs
from sidecar.errors import EngineError
from sidecar.protocol._generated import grpc_service_pb2 as pb
from sidecar.protocol.codec import encode_response
from sidecar.testing.server import ServerThread, config_for_tests
from sidecar.testing.upstream import FakeUpstream, default_compute
from sidecar.types import InferenceResponse


def _input(rows: int) -> tuple[list[tc.InferInput], np.ndarray]:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) / 7
    inp = tc.InferInput("input", [rows, 4], "FP32")
    inp.set_data_from_numpy(x)
    return [inp], x


def test_request_bytes_pass_through_with_name_and_version_rewritten(tmp_path):
    with FakeUpstream("fake") as up:
        write_upstream_version(tmp_path, "m", "2.0.0", target=up.target, model="fake")
        with ServerThread(config_for_tests(str(tmp_path), batching={"enabled": False})) as srv:
            client = tc.InferenceServerClient(srv.url)
            inputs, x = _input(3)
            result = client.infer(
                "m",
                inputs,
                model_version="2.0.0",
                request_id="req-7",
                outputs=[tc.InferRequestedOutput("label")],
                parameters={"color": "blue"},
            )
            # The answer names this server's model and version and the caller's id, not the upstream's.
            response = result.get_response()
            assert (response.model_name, response.model_version, response.id) == ("m", "2.0.0", "req-7")
            assert [o.name for o in response.outputs] == ["label"]  # the requested subset
            np.testing.assert_array_equal(result.as_numpy("label"), default_compute({"input": x})["label"])
            # The upstream got the caller's request with its own model name and its default version.
            sent = up.last_request
            assert (sent.model_name, sent.model_version, sent.id) == ("fake", "", "req-7")
            assert [o.name for o in sent.outputs] == ["label"]
            assert sent.parameters["color"].string_param == "blue"
            np.testing.assert_array_equal(np.frombuffer(sent.raw_input_contents[0], np.float32).reshape(3, 4), x)
            # Statistics and monitoring count the forwarded request and its (lazily decoded) outputs.
            stats = client.get_inference_statistics("m", "2.0.0").model_stats[0]
            assert stats.inference_stats.success.count == 1 and stats.inference_count == 3
            report = srv.app.monitoring.reports("m", "2.0.0")[0]
            assert (report.requests_total, report.rows_total, report.dropped_total, report.errors_total) == (1, 3, 0, 0)
            # A bad request is still refused by the sidecar itself, naming the tensor and the version's
            # signature (it went out before the check, and its call is cancelled: see test_forward_early).
            bad = tc.InferInput("input", [2, 5], "FP32")
            bad.set_data_from_numpy(np.zeros((2, 5), np.float32))
            try:
                client.infer("m", [bad])
                raise AssertionError("a wrongly shaped input was accepted")
            except tc.InferenceServerException as exc:
                assert exc.status() == "StatusCode.INVALID_ARGUMENT", exc
                assert "model 'm' version '2.0.0': input 'input' has shape [2, 5]" in exc.message(), exc
            again = client.infer("m", inputs).as_numpy("label")  # and the version keeps serving
            np.testing.assert_array_equal(again, default_compute({"input": x})["label"])


def test_an_answer_that_needs_reshaping_goes_back_reshaped(tmp_path):
    def column_labels(inputs):  # MLServer's NumpyCodec answers a [N] tensor as [N, 1]
        out = default_compute(inputs)
        return {"probabilities": out["probabilities"], "label": out["label"].reshape(-1, 1)}

    with FakeUpstream("fake", compute=column_labels) as up:
        write_upstream_version(tmp_path, "m", "1.0.0", target=up.target, model="fake")
        with ServerThread(config_for_tests(str(tmp_path), batching={"enabled": False})) as srv:
            inputs, x = _input(2)
            result = tc.InferenceServerClient(srv.url).infer("m", inputs)
            assert result.as_numpy("label").shape == (2,)
            np.testing.assert_array_equal(result.as_numpy("label"), default_compute({"input": x})["label"])
            assert result.get_response().model_version == "1.0.0"


def test_a_passed_through_answer_is_compared_with_its_shadow(tmp_path):
    with FakeUpstream("fake") as up:
        write_upstream_version(tmp_path, "m", "1.0.0", target=up.target, model="fake")
        write_upstream_version(tmp_path, "m", "2.0.0", target=up.target, model="fake")
        with ServerThread(config_for_tests(str(tmp_path), batching={"enabled": False})) as srv:
            control = Control(srv.control_url)
            control.set("m", {"1.0.0": 100}, {"2.0.0": 100})
            client = tc.InferenceServerClient(srv.url)
            for rows in (1, 2, 3, 4, 5, 6, 7, 8, 2, 3):
                assert client.infer("m", _input(rows)[0]).get_response().model_version == "1.0.0"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and control.report("m")[0].total.completed < 10:
                time.sleep(0.05)
            total = control.report("m")[0].total
            # The shadow is the same upstream model: every answer agrees with the passed-through primary's.
            assert (total.completed, total.errors, total.mismatches) == (10, 0, 0)
            assert total.agreement == 1.0
            control.close()


def test_forwarded_outputs_decode_on_first_read_and_encode_as_they_came():
    upstream = pb.ModelInferResponse(model_name="fake", model_version="9", id="abc")
    upstream.outputs.add(name="p", datatype="FP32", shape=[2, 2])
    upstream.raw_output_contents.append(np.arange(4, dtype=np.float32).tobytes())
    raw = upstream.SerializeToString()
    outputs = ForwardedOutputs(raw, "m 1.0.0")  # parsed when first read
    answer = pb.ModelInferResponse.FromString(encode_response(InferenceResponse("m", "1.0.0", "abc", outputs)))
    assert outputs._response is None  # going back as it came needs no parsing
    assert len(outputs) == 1 and outputs._decoded is None  # counting outputs parses, without decoding
    assert (answer.model_name, answer.model_version, answer.id) == ("m", "1.0.0", "abc")
    assert answer.outputs == upstream.outputs and answer.raw_output_contents == upstream.raw_output_contents
    assert outputs._decoded is None  # encoding did not decode
    np.testing.assert_array_equal(outputs["p"], np.arange(4, dtype=np.float32).reshape(2, 2))
    assert list(outputs) == ["p"]


def test_an_answer_with_the_checked_head_goes_back_unparsed_and_any_other_is_checked():
    from sidecar.engine.upstream import UpstreamEngine, UpstreamSettings
    from sidecar.types import TensorSpec

    engine = UpstreamEngine(UpstreamSettings(target="up:1", model="fake"), label="m 1.0.0", max_batch_size=0)
    engine.outputs = (TensorSpec("p", "FP32", (-1, 2)),)
    engine._output_ranks = {"p": 2}

    def answer(rows: int, rank: int = 2, request_id: str = "") -> bytes:
        msg = pb.ModelInferResponse(model_name="fake", model_version="9", id=request_id)
        msg.outputs.add(name="p", datatype="FP32", shape={1: [rows * 2], 2: [rows, 2], 3: [rows, 2, 1]}[rank])
        msg.raw_output_contents.append(np.arange(rows * 2, dtype=np.float32).tobytes())
        return msg.SerializeToString()

    first = engine._answer(answer(3))
    assert first._response is not None  # parsed and checked
    again = engine._answer(answer(3))
    assert again._response is None and again.encoded == answer(3)  # same head: not parsed
    np.testing.assert_array_equal(again["p"], np.arange(6, dtype=np.float32).reshape(3, 2))
    assert engine._answer(answer(4))._response is not None  # another batch size: another head, checked
    assert engine._answer(answer(4, request_id="r1"))._response is not None  # another id: checked
    # A different rank is never passed on the strength of an earlier head: reshaped to the declared one,
    # [N, 2, 1] for [-1, 2] by rewriting the shape in the answer's head (the tensor's bytes as they came).
    engine._answer(answer(3))
    reshaped = engine._answer(answer(3, rank=3))
    assert reshaped._response is None and reshaped["p"].shape == (3, 2)
    sent = pb.ModelInferResponse.FromString(reshaped.encoded)
    assert list(sent.outputs[0].shape) == [3, 2]
    assert sent.raw_output_contents == pb.ModelInferResponse.FromString(answer(3, rank=3)).raw_output_contents
    np.testing.assert_array_equal(reshaped["p"], np.arange(6, dtype=np.float32).reshape(3, 2))
    again = engine._answer(answer(3, rank=3))  # the same head again: its rewritten head, nothing parsed
    assert again._response is None and again.encoded == reshaped.encoded
    assert engine._answer(answer(3)).encoded == answer(3)  # a conforming answer is checked and goes as it came
    # Any other rank difference is decoded (and passed on as it is: the caller sees what the upstream sent).
    odd = engine._answer(answer(3, rank=1))
    assert isinstance(odd, dict) and odd["p"].shape == (6,)
    # An answer cut short after the checked head is parsed, not passed on: refused, naming the upstream.
    assert engine._answer(answer(3)).encoded == answer(3)
    with pytest.raises(EngineError, match="malformed response"):
        engine._answer(answer(3)[:-5])
    assert engine._answer(answer(3)).encoded == answer(3)  # and the next whole one goes through
