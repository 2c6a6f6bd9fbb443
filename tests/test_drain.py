"""SIGTERM drains: health turns NOT_SERVING, in-flight requests finish, the process exits 0."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.testing.models import mlp_model, write_version


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("ingest_workers", [0, 2])
def test_sigterm_drains_without_losing_in_flight_requests(tmp_path, ingest_workers):
    """Also with ingest workers (server.ingest_workers): calls they hold are relayed and answered."""
    # A deliberately heavy model so requests are in flight when the signal lands.
    write_version(tmp_path, "heavy", "1.0.0", mlp_model, {"batching": {"enabled": False}}, hidden=4096)
    port = _free_port()
    env = {
        **os.environ,
        "SIDECAR_ENGINE__PROVIDERS": "CPUExecutionProvider",
        "SIDECAR_ENGINE__EXECUTOR_THREADS": "2",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidecar",
            "serve",
            "--model-repository",
            str(tmp_path),
            "--grpc-port",
            str(port),
            "--grpc-address",
            "127.0.0.1",
            "--control-port",
            "0",
            "--ingest-workers",  # `sidecar serve`'s flag for server.ingest_workers
            str(ingest_workers),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"127.0.0.1:{port}"
    try:
        client = tc.InferenceServerClient(url)
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.is_server_ready():
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        results: list[object] = []
        started = threading.Barrier(17)

        def send(i: int) -> None:
            # A connection each (no shared subchannel): with workers, the kernel spreads them.
            c = tc.InferenceServerClient(url, channel_args=[("grpc.use_local_subchannel_pool", 1)])
            inp = tc.InferInput("input", [64, 64], "FP32")
            inp.set_data_from_numpy(np.full((64, 64), i, np.float32))
            assert c.is_server_live()  # connect first, so the request below reaches the server at once
            started.wait()
            try:
                results.append(c.infer("heavy", [inp]).as_numpy("probabilities").shape)
            except Exception as exc:  # recorded and asserted below
                results.append(exc)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        started.wait()
        # Signal once the first answer is back: the other requests are then queued or running.
        first_done = time.monotonic() + 30
        while not results and time.monotonic() < first_done:
            time.sleep(0.001)
        proc.send_signal(signal.SIGTERM)
        with grpc.insecure_channel(url) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            # The server handles the signal on its event loop: health turns NOT_SERVING soon, not at once
            # (a Check that an ingest worker relays can get there first).
            turned_by = time.monotonic() + 10
            while True:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                except grpc.RpcError as exc:  # the server may already be gone once drained
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    break
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                assert status == health_pb2.HealthCheckResponse.SERVING, status
                assert time.monotonic() < turned_by, "health still SERVING 10 s after SIGTERM"
                time.sleep(0.005)
        for t in threads:
            t.join(60)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0]
    assert [str(r) for r in results if not isinstance(r, tuple)] == [], output
    assert results == [(64, 10)] * 16
    assert "sidecar stopped" in output
    in_flight = int(re.search(r"draining: (\d+) request\(s\) in flight", output).group(1))
    assert in_flight > 0, "the signal must land while requests are in flight for this test to mean anything"
    if ingest_workers:
        relayed = int(re.search(r"ingest workers stopped; they relayed (\d+) call", output).group(1))
        assert relayed > 0, output  # some of the 16 connections went to a worker
