"""With the collector down, the sidecar keeps serving; what could not be delivered is counted."""

from __future__ import annotations

import socket
import time
import urllib.request

import numpy as np
import tritonclient.grpc as tc

from sidecar.testing.server import ServerThread, config_for_tests


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when we return: nothing listens there


def test_collector_down_serving_continues_and_drops_are_counted(model_repository):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    cfg = config_for_tests(
        str(model_repository),
        telemetry={
            "otlp_endpoint": endpoint,
            "otlp_timeout_ms": 300,
            "span_queue_size": 64,
            "span_batch_size": 16,
            "span_schedule_delay_ms": 20,
            "metric_export_interval_ms": 200,
            "metrics_port": 0,
            "metrics_host": "127.0.0.1",
            "shutdown_timeout_s": 1.0,
        },
    )
    n = 200
    with ServerThread(cfg) as srv:
        telemetry = srv.app.telemetry
        client = tc.InferenceServerClient(srv.url)
        inp = tc.InferInput("input", [1, 64], "FP32")
        inp.set_data_from_numpy(np.ones((1, 64), np.float32))
        start = time.monotonic()
        for _ in range(n):
            assert client.infer("mlp", [inp]).as_numpy("probabilities").shape == (1, 10)
        elapsed = time.monotonic() - start
        deadline = time.monotonic() + 10
        while telemetry.drops.total("traces") < n or telemetry.drops.total("metrics") == 0:
            assert time.monotonic() < deadline, telemetry.drops.counts
            time.sleep(0.05)  # the export worker threads report on their own schedule
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{telemetry.prometheus_port}/metrics", timeout=5).read()
        stopped_at = time.monotonic()
    stop_s = time.monotonic() - stopped_at
    # Every request answered, none slowed to the exporter's pace (each failed export took up to 300 ms).
    assert elapsed < n * 0.05, f"{n} requests took {elapsed:.1f} s with the collector down"
    # Each request made 2 spans (request + batch): all were dropped, and counted, not queued without bound.
    assert telemetry.drops.total("traces") >= n
    assert telemetry.span_processors[0].exported == 0
    assert telemetry.drops.total("metrics") > 0
    text = scraped.decode()
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("sidecar_telemetry_dropped_total{") and 'signal="traces"' in ln and "export_failed" in ln
    )
    assert float(line.rsplit(" ", 1)[1]) > 0
    assert stop_s < 10.0  # shutdown is bounded even though nothing can be flushed
