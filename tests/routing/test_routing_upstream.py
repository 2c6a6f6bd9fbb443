"""Versions served by an upstream Open Inference Protocol server: a second sidecar process, or a fake one
that can be made slow, broken or unready."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from conftest import Control, mlp_input, start_sidecar_process, write_upstream_version
from tritonclient.utils import InferenceServerException

from sidecar.testing.models import mlp_model, write_version
from sidecar.testing.server import ServerThread, config_for_tests
from sidecar.testing.upstream import FakeUpstream


def fake_input(rows: int = 2) -> list[tc.InferInput]:
    inp = tc.InferInput("input", [rows, 4], "FP32")
    inp.set_data_from_numpy(np.arange(rows * 4, dtype=np.float32).reshape(rows, 4))
    return [inp]


def test_second_sidecar_as_upstream_canary_and_shadow(tmp_path):
    upstream_repo = tmp_path / "upstream"
    write_version(upstream_repo, "mlp", "1.0.0", mlp_model, hidden=32, seed=5)
    peer = start_sidecar_process(upstream_repo, "mlp")
    try:
        repo = tmp_path / "repo"
        write_version(repo, "mlp", "1.0.0", mlp_model, hidden=32, seed=0)
        write_upstream_version(repo, "mlp", "2.0.0", target=peer.target, model="mlp", version="1.0.0")
        write_upstream_version(repo, "mlp", "3.0.0", target=peer.target)
        with ServerThread(config_for_tests(str(repo))) as srv:
            proxy = tc.InferenceServerClient(srv.url)
            direct = tc.InferenceServerClient(peer.target)
            # Metadata and batch size come from the upstream.
            meta = proxy.get_model_metadata("mlp", "2.0.0")
            upstream_meta = direct.get_model_metadata("mlp", "1.0.0")
            assert meta.platform == upstream_meta.platform == "onnxruntime_onnx"
            assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
                (t.name, t.datatype, list(t.shape)) for t in upstream_meta.inputs
            ]
            assert proxy.get_model_config("mlp", "2.0.0").config.max_batch_size > 0
            assert proxy.is_model_ready("mlp", "2.0.0")
            # Same answer through the proxy as from the upstream; the response names our version.
            inputs, _ = mlp_input(rows=3)
            via_proxy = proxy.infer("mlp", inputs, model_version="2.0.0")
            via_direct = direct.infer("mlp", inputs)
            assert via_proxy.get_response().model_version == "2.0.0"
            np.testing.assert_array_equal(via_proxy.as_numpy("probabilities"), via_direct.as_numpy("probabilities"))
            np.testing.assert_array_equal(via_proxy.as_numpy("label"), via_direct.as_numpy("label"))
            # A canary on the upstream and a shadow on the upstream, beside a local stable version.
            control = Control(srv.control_url)
            control.set("mlp", {"1.0.0": 50, "2.0.0": 50}, {"3.0.0": 100})
            versions = {
                proxy.infer("mlp", inputs, headers={"x-routing-key": f"k{i}"}).get_response().model_version
                for i in range(30)
            }
            assert versions == {"1.0.0", "2.0.0"}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                reports = control.report("mlp")
                if reports and reports[0].total.completed == 30:
                    break
                time.sleep(0.05)
            total = control.report("mlp")[0].total
            assert total.completed == 30 and total.errors == 0
            assert 0 < total.agreement <= 1  # 3.0.0 and 2.0.0 are the same model upstream
    finally:
        peer.stop()


def test_batches_to_an_upstream_go_out_side_by_side(tmp_path):
    """An upstream runs the batches it is sent concurrently: an upstream version sends up to
    ``UPSTREAM_BATCHES_IN_FLIGHT`` at once, not the server's default for local sessions (2), unless its
    metadata sets ``batching.batches_in_flight``. Against a slow upstream that takes 2 rows a batch,
    12 concurrent callers are 6 batches or more, all in flight together."""
    from concurrent.futures import ThreadPoolExecutor

    from sidecar.engine.repository import UPSTREAM_BATCHES_IN_FLIGHT

    with FakeUpstream("fake", delay_s=0.5, max_batch_size=2) as up:
        write_upstream_version(tmp_path, "m", "1.0.0", target=up.target, model="fake")
        pinned = write_upstream_version(tmp_path, "m", "2.0.0", target=up.target, model="fake")
        (pinned / "model.json").write_text('{"batching": {"batches_in_flight": 1}}')
        with ServerThread(config_for_tests(str(tmp_path))) as srv:
            repository = srv.app.repository
            assert repository.get("m", "1.0.0").settings.batches_in_flight == UPSTREAM_BATCHES_IN_FLIGHT
            assert repository.get("m", "2.0.0").settings.batches_in_flight == 1  # the metadata's word
            assert srv.app.config.batching.batches_in_flight == 2  # local sessions keep the server's default
            client = tc.InferenceServerClient(srv.url)

            def one(version: str) -> tuple:
                return client.infer("m", fake_input(rows=1), model_version=version).as_numpy("label").shape

            for version, most in (("1.0.0", 6), ("2.0.0", 1)):
                up.max_in_flight = 0
                calls = up.calls
                with ThreadPoolExecutor(12) as pool:
                    assert list(pool.map(one, [version] * 12)) == [(1,)] * 12  # every answer split back
                assert up.calls - calls >= 6  # at most 2 rows a call
                if most > 1:
                    assert up.max_in_flight >= 4  # the server's default would have allowed 2
                else:
                    assert up.max_in_flight == 1


def test_deadline_is_propagated_and_mapped(tmp_path):
    with FakeUpstream("fake", delay_s=1.0) as up:
        write_upstream_version(tmp_path, "m", "1.0.0", target=up.target, model="fake", timeout_s=30)
        with ServerThread(config_for_tests(str(tmp_path))) as srv:
            client = tc.InferenceServerClient(srv.url)
            start = time.perf_counter()
            with pytest.raises(InferenceServerException) as err:
                client.infer("m", fake_input(), parameters={"timeout": 200_000}, client_timeout=10)
            took = time.perf_counter() - start
            assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
            assert "upstream" in err.value.message() and up.target in err.value.message()
            assert took < 0.8
            # The gRPC deadline of the caller travels too: the upstream call is cut at the caller's.
            up.delay_s = 0.0
            assert client.infer("m", fake_input(), client_timeout=5).as_numpy("label").shape == (2,)


def test_unavailable_upstream_retries_then_maps_to_unavailable(tmp_path):
    with FakeUpstream("fake", fail_with=grpc.StatusCode.UNAVAILABLE) as up:
        write_upstream_version(tmp_path, "m", "1.0.0", target=up.target, model="fake", retries=2, retry_backoff_ms=1)
        with ServerThread(config_for_tests(str(tmp_path), batching={"enabled": False})) as srv:
            client = tc.InferenceServerClient(srv.url)
            with pytest.raises(InferenceServerException) as err:
                client.infer("m", fake_input())
            assert err.value.status() == "StatusCode.UNAVAILABLE"
            assert "after 3 attempt(s)" in err.value.message()
            assert up.calls == 3
            up.fail_with, up.calls = grpc.StatusCode.INTERNAL, 0
            with pytest.raises(InferenceServerException) as err:
                client.infer("m", fake_input())
            assert err.value.status() == "StatusCode.INTERNAL" and up.calls == 1  # not retried
            up.fail_with = grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(InferenceServerException) as err:
                client.infer("m", fake_input())
            assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "refused the request" in err.value.message()


def test_readiness_follows_the_upstream_and_a_dead_upstream_is_unavailable(tmp_path):
    up = FakeUpstream("fake").start()
    write_upstream_version(
        tmp_path, "m", "1.0.0", target=up.target, model="fake", health_interval_s=0.1, retries=1, retry_backoff_ms=1
    )
    try:
        with ServerThread(config_for_tests(str(tmp_path))) as srv:
            client = tc.InferenceServerClient(srv.url)
            assert client.is_model_ready("m", "1.0.0")
            up.ready = False
            deadline = time.monotonic() + 5
            while client.is_model_ready("m", "1.0.0") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not client.is_model_ready("m", "1.0.0")
            up.ready = True
            deadline = time.monotonic() + 5
            while not client.is_model_ready("m", "1.0.0") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.is_model_ready("m", "1.0.0")
            up.stop()
            with pytest.raises(InferenceServerException) as err:
                client.infer("m", fake_input(), model_version="1.0.0")
            assert err.value.status() == "StatusCode.UNAVAILABLE"
            assert up.target in err.value.message()
    finally:
        up.stop()


def test_an_unreachable_upstream_at_load_leaves_the_version_unavailable_with_a_reason(tmp_path):
    write_upstream_version(tmp_path, "m", "1.0.0", target="127.0.0.1:1", connect_timeout_s=0.3)
    write_upstream_version(tmp_path, "bad", "1.0.0", target="no-port-here")
    with ServerThread(config_for_tests(str(tmp_path))) as srv:
        index = {(e.name, e.version): e for e in srv.app.repository.index()}
        assert index[("m", "1.0.0")].state == "UNAVAILABLE"
        assert "cannot read upstream 127.0.0.1:1" in index[("m", "1.0.0")].reason
        assert "must be host:port" in index[("bad", "1.0.0")].reason
        client = tc.InferenceServerClient(srv.url)
        with pytest.raises(InferenceServerException) as err:
            client.infer("m", fake_input())
        assert err.value.status() == "StatusCode.UNAVAILABLE"
