"""Ingest workers (server.ingest_workers): calls taken by worker processes on the sidecar's port are
served by the sidecar exactly as its own, through real gRPC clients.

Most tests start one worker on a port of its own, relaying to the sidecar's socket, so that every call
they make is known to go through the relay (on the shared port the kernel picks the process)."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from bench.servers import free_port
from sidecar.errors import ConfigError
from sidecar.ingest.relay import IngestWorkers
from sidecar.routing.policy import TrafficPolicy
from sidecar.testing.models import identity_model, mlp_model, write_version
from sidecar.testing.server import ServerThread, config_for_tests

BIG = (3, 96, 96)  # 110 KB of FP32 per row: through the worker's shared memory
RING = 8 * 1024 * 1024  # the tests' workers' shared memory: a small /dev/shm holds it too


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ingest-repo")
    write_version(root, "mlp", "1.0.0", mlp_model)
    write_version(root, "image", "1.0.0", identity_model, dims=BIG)
    return root


def _wait_serving(target: str, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing serving on {target}")
            time.sleep(0.1)


@contextlib.contextmanager
def _sidecar_with_worker(config, ring: int = RING):
    """(sidecar, relay, the worker's own target): a sidecar, its relay socket, one worker on another port."""
    with ServerThread(config) as srv:
        relay = IngestWorkers(
            0,
            srv.app.register_inference,
            srv.app.stream_message,
            "127.0.0.1",
            srv.config.server.max_message_bytes,
            shared_memory_bytes=ring,
        )
        srv.call(relay.start(srv.app.grpc_port))
        port = free_port()
        argv = relay.argv(0)
        argv[argv.index("--port") + 1] = str(port)
        worker = subprocess.Popen(argv)
        try:
            _wait_serving(f"127.0.0.1:{port}")
            yield srv, relay, f"127.0.0.1:{port}"
        finally:
            worker.terminate()
            worker.wait(10)
            srv.call(relay.stop())


@pytest.fixture(scope="module")
def relayed(repo: Path):
    with _sidecar_with_worker(config_for_tests(str(repo), batching={"batches_in_flight": 1})) as running:
        yield running


def _mlp_input(rows: int, seed: int = 0) -> tuple[tc.InferInput, np.ndarray]:
    x = np.random.default_rng(seed).random((rows, 64), dtype=np.float32)
    inp = tc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp, x


def test_relayed_calls_answer_as_the_sidecar_does(relayed) -> None:
    srv, relay, target = relayed
    before = relay.relayed
    direct, through = tc.InferenceServerClient(srv.url), tc.InferenceServerClient(target)
    try:
        assert through.is_server_live() and through.is_server_ready() and through.is_model_ready("mlp")
        assert through.get_model_metadata("mlp").versions == direct.get_model_metadata("mlp").versions
        for rows in (1, 3):
            inp, _ = _mlp_input(rows, seed=rows)
            a = direct.infer("mlp", [inp], request_id=f"r{rows}")
            b = through.infer("mlp", [inp], request_id=f"r{rows}")
            assert b.get_response().id == f"r{rows}" and b.get_response().model_version == "1.0.0"
            np.testing.assert_array_equal(a.as_numpy("probabilities"), b.as_numpy("probabilities"))
        stats = through.get_inference_statistics("mlp")
        assert stats.model_stats[0].inference_stats.success.count >= 2
    finally:
        direct.close()
        through.close()
    assert relay.relayed - before >= 6


def test_large_requests_come_through_shared_memory_and_give_it_back(relayed) -> None:
    """400 requests of 221 KB (88 MB) through an 8 MiB ring: all of them through shared memory (none
    fell back to the socket for want of space), so the space of each was given back once read."""
    _, relay, target = relayed
    before = relay.shared
    client = tc.InferenceServerClient(target)
    try:
        for i in range(400):
            x = np.full((2, *BIG), i, np.float32)
            inp = tc.InferInput("INPUT0", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            np.testing.assert_array_equal(client.infer("image", [inp]).as_numpy("OUTPUT0"), x)
    finally:
        client.close()
    assert relay.shared - before == 400


def test_a_shadow_reads_the_request_it_was_given_after_the_caller_had_its_answer(tmp_path: Path) -> None:
    """A request read in place from a worker's shared memory is mirrored to a shadow, which runs after
    the caller's answer went back (here 20 ms later): its space must not be reused meanwhile. Two
    identical versions, every request different, 8 callers at once: the shadow's answers equal the
    primary's (no difference, no mismatch)."""
    write_version(tmp_path, "image", "1.0.0", identity_model, dims=BIG)
    write_version(tmp_path, "image", "1.1.0", identity_model, dims=BIG)
    with _sidecar_with_worker(config_for_tests(str(tmp_path)), ring=32 * 1024 * 1024) as (srv, relay, target):
        shadow = srv.app.repository.get("image", "1.1.0").engine
        run = shadow.run_sync

        def late_run(inputs, output_names):  # the shadow reads its inputs 20 ms after it was given them
            time.sleep(0.02)
            return run(inputs, output_names)

        shadow.run_sync = late_run
        policy = TrafficPolicy.build("image", {"1.0.0": 1000}, {"1.1.0": 1000})
        srv.call(srv.app.routing.set_policy(policy, "test"))

        def caller(k: int) -> None:
            client = tc.InferenceServerClient(target, channel_args=[("grpc.use_local_subchannel_pool", 1)])
            try:
                for i in range(40):
                    x = np.full((2, *BIG), 100 * k + i, np.float32)
                    inp = tc.InferInput("INPUT0", list(x.shape), "FP32")
                    inp.set_data_from_numpy(x)
                    np.testing.assert_array_equal(client.infer("image", [inp]).as_numpy("OUTPUT0"), x)
            finally:
                client.close()

        with ThreadPoolExecutor(8) as pool:
            for done in [pool.submit(caller, k) for k in range(8)]:
                done.result(60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            (report,) = srv.app.routing.shadow_report("image")
            if report.total.completed + report.total.dropped + report.total.errors >= 320 and not report.queue_depth:
                break
            time.sleep(0.1)
        assert relay.shared >= 160  # most through shared memory (while shadows hold it, some take the socket)
    total = report.total
    assert total.completed > 0 and total.errors == 0 and total.mismatches == 0, total
    assert total.max_abs_diff == 0.0, total


def _code(exc: InferenceServerException) -> str:
    return str(exc.status())


def test_bad_input_gets_the_sidecars_status_and_message(relayed) -> None:
    _, _, target = relayed
    client = tc.InferenceServerClient(target)
    try:
        inp, _ = _mlp_input(1)
        with pytest.raises(InferenceServerException) as missing:
            client.infer("no_such_model", [inp])
        assert "NOT_FOUND" in _code(missing.value) and "no_such_model" in str(missing.value)
        wrong = tc.InferInput("input", [1, 63], "FP32")
        wrong.set_data_from_numpy(np.zeros((1, 63), dtype=np.float32))
        with pytest.raises(InferenceServerException) as shape:
            client.infer("mlp", [wrong])
        assert "INVALID_ARGUMENT" in _code(shape.value) and "63" in str(shape.value)
        assert client.infer("mlp", [inp]).as_numpy("probabilities").shape == (1, 10)  # still serving
    finally:
        client.close()


def test_a_caller_who_gives_up_is_given_up_on_by_the_sidecar(relayed) -> None:
    """The caller's deadline (and its cancellation when the deadline passes) reach the sidecar: a
    request expired while it waited behind a held engine never runs."""
    srv, _, target = relayed
    batcher = srv.app.repository.get("mlp").scheduler
    engine = batcher._engine
    gate, runs, real_run = threading.Event(), [], engine.run_sync

    def gated_run(inputs, output_names):
        gate.wait(10)
        runs.append(len(next(iter(inputs.values()))))
        return real_run(inputs, output_names)

    engine.run_sync, inline = gated_run, batcher._run_inline
    batcher._run_inline = None
    direct, through = tc.InferenceServerClient(srv.url), tc.InferenceServerClient(target)
    try:
        with ThreadPoolExecutor(2) as pool:
            busy = pool.submit(direct.infer, "mlp", [_mlp_input(2)[0]])
            _until(lambda: batcher.batches_running == 1)
            late = pool.submit(through.infer, "mlp", [_mlp_input(1)[0]], client_timeout=0.3)
            _until(lambda: batcher.queue_depth == 1)
            with pytest.raises(InferenceServerException) as expired:
                late.result(10)
            gate.set()
            assert busy.result(10).as_numpy("probabilities").shape == (2, 10)
        assert "DEADLINE_EXCEEDED" in _code(expired.value)
        _until(lambda: batcher.queue_depth == 0 and batcher.batches_running == 0)
        assert runs == [2]  # the expired request never reached the engine
    finally:
        gate.set()
        engine.run_sync, batcher._run_inline = real_run, inline
        direct.close()
        through.close()


def _until(condition, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.002)


def _stream(target: str) -> list:
    """20 stream requests (the sixth to a model that does not exist): (result, error) of each."""
    client = tc.InferenceServerClient(target)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        for i in range(20):
            inp, _ = _mlp_input(1 + i % 2, seed=i)
            client.async_stream_infer("mlp" if i != 5 else "nope", [inp], request_id=str(i))
        return [responses.get(timeout=30) for _ in range(20)]
    finally:
        client.stop_stream()
        client.close()


def test_streams_and_health_work_through_a_worker(relayed) -> None:
    """A stream through a worker answers as one to the sidecar itself, its error message included."""
    srv, _, target = relayed
    got, direct = _stream(target), _stream(srv.url)
    assert [r.get_response().id for r, e in got if e is None] == [str(i) for i in range(20) if i != 5]
    for (r, e), (d, _) in zip(got, direct, strict=True):
        if e is None:
            np.testing.assert_array_equal(r.as_numpy("probabilities"), d.as_numpy("probabilities"))
    errors = [str(e) for _, e in got if e is not None]
    assert len(errors) == 1 and "nope" in errors[0]
    assert errors == [str(e) for _, e in direct if e is not None]  # the same status and message
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(service="mlp"), timeout=5).status == 1
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Check(health_pb2.HealthCheckRequest(service="nothing-here"), timeout=5)
        assert unknown.value.code() is grpc.StatusCode.NOT_FOUND


def test_the_sidecar_starts_supervises_and_stops_its_workers(repo: Path) -> None:
    cfg = config_for_tests(
        str(repo),
        server={"ingest_workers": 2, "ingest_shared_memory_bytes": RING},
        telemetry={"metrics_port": 0, "metrics_host": "127.0.0.1"},
    )
    with ServerThread(cfg) as srv:
        ingest = srv.app.ingest
        deadline = time.monotonic() + 20
        while len(ingest.pids) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = ingest.pids
        assert len(pids) == 2
        time.sleep(1.0)  # the workers bind the shared port
        inp, _ = _mlp_input(1)
        for _ in range(24):  # a connection each: the kernel spreads them over the three processes
            client = tc.InferenceServerClient(srv.url, channel_args=[("grpc.use_local_subchannel_pool", 1)])
            try:
                assert client.infer("mlp", [inp]).as_numpy("probabilities").shape == (1, 10)
            finally:
                client.close()
        assert ingest.relayed > 0
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{srv.app.telemetry.prometheus_port}/metrics").read()
        assert re.search(rb"sidecar_ingest_workers\{[^}]*\} 2\.0", metrics)
        relayed = re.search(rb'sidecar_ingest_relayed_total\{[^}]*transport="socket"[^}]*\} ([0-9.e+]+)', metrics)
        assert relayed is not None and float(relayed.group(1)) == ingest.relayed - ingest.shared
        assert all(list(Path("/dev/shm").glob(f"sidecar-ingest-*-{pid}")) for pid in pids)  # their rings
        os.kill(pids[0], signal.SIGKILL)  # a worker dies: it is started again
        deadline = time.monotonic() + 20
        while (pids[0] in ingest.pids or len(ingest.pids) < 2) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(ingest.pids) == 2 and pids[0] not in ingest.pids and ingest.started == 3
        assert not list(Path("/dev/shm").glob(f"sidecar-ingest-*-{pids[0]}"))  # its ring is removed
        last = ingest.pids
    for pid in last:  # the sidecar's stop ended them, and their rings are gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert not list(Path("/dev/shm").glob(f"sidecar-ingest-*-{pid}"))


def test_ingest_workers_cannot_be_negative() -> None:
    with pytest.raises(ConfigError, match="ingest_workers must be 0 or more"):
        config_for_tests("", server={"ingest_workers": -1})
