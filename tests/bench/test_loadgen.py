"""The benchmark harness itself: load generator, server processes, reports, raw ONNX Runtime, py-spy parsing.

Short runs against real servers (the echo server and a sidecar, each in its own process); they check
that the harness counts and reports correctly, not how fast anything is.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` run without `python -m`: make the bench package importable
    sys.path.insert(0, str(ROOT))

from bench import loadgen, servers  # noqa: E402
from bench.profiling import summarize  # noqa: E402
from bench.report import markdown_table, result_row, save_results  # noqa: E402
from sidecar.protocol._generated import grpc_service_pb2 as pb  # noqa: E402
from sidecar.testing.models import mlp_model, write_version  # noqa: E402


@pytest.fixture(scope="module")
def payload() -> bytes:
    return loadgen.make_infer_request("mlp", {"input": np.ones((1, 64), np.float32)})


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    with servers.start_echo(log_dir=tmp_path_factory.mktemp("echo-logs")) as server:
        yield server


def test_make_infer_request_is_a_valid_model_infer_request(payload):
    msg = pb.ModelInferRequest.FromString(payload)
    assert msg.model_name == "mlp"
    assert [(t.name, t.datatype, list(t.shape)) for t in msg.inputs] == [("input", "FP32", [1, 64])]
    assert np.frombuffer(msg.raw_input_contents[0], np.float32).tolist() == [1.0] * 64


def test_closed_loop_in_process_counts_requests_and_cpu(echo, payload):
    result = loadgen.run(
        echo.target,
        payload,
        concurrency=4,
        duration_s=0.5,
        warmup_s=0.2,
        processes=0,
        cpu_probes={"server": echo.cpu_seconds},
        labels={"server": "echo"},
    )
    assert result.mode == "closed" and result.concurrency == 4
    assert result.requests > 50 and result.errors == 0
    assert math.isclose(result.rps, result.requests / 0.5)
    lat = result.latency_ms
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert result.cpu_s["server"] > 0 and result.client_cpu_s > 0
    assert result.cpu_us_per_request("server") > 0
    row = result_row(result)
    assert row["server"] == "echo" and row["load"] == "c=4"


def test_closed_loop_in_worker_processes_splits_the_load(echo, payload):
    result = loadgen.run(echo.target, payload, concurrency=3, duration_s=0.5, warmup_s=0.2, processes=2)
    assert result.processes == 2 and result.concurrency == 3
    assert result.requests > 50 and result.errors == 0
    assert result.client_cpu_s > 0  # the workers' CPU, sampled from here


def test_open_loop_holds_the_rate(echo, payload):
    result = loadgen.run(echo.target, payload, rate_per_s=200, duration_s=1.0, warmup_s=0.2, processes=1)
    assert result.mode == "open" and result.rate_per_s == 200
    assert 180 <= result.requests <= 201
    assert result.dropped == 0 and result.errors == 0


def test_errors_are_counted_by_status(echo):
    # The echo server only knows ModelInfer: another method is UNIMPLEMENTED for every call.
    result = loadgen.run(
        echo.target,
        b"",
        concurrency=2,
        duration_s=0.3,
        warmup_s=0.1,
        processes=0,
        method="/inference.GRPCInferenceService/ModelMetadata",
    )
    assert result.requests == 0
    assert result.errors > 0 and set(result.error_kinds) == {"UNIMPLEMENTED"}


def test_sidecar_process_serves_the_load_generator(tmp_path, payload):
    write_version(tmp_path, "mlp", "1.0.0", mlp_model)
    settings = {"engine.providers": "CPUExecutionProvider", "batching.enabled": False}
    with servers.start_sidecar(tmp_path, models=["mlp"], settings=settings, log_dir=tmp_path) as server:
        result = loadgen.run(
            server.target,
            payload,
            concurrency=2,
            duration_s=0.5,
            warmup_s=0.2,
            processes=0,
            cpu_probes={"server": server.cpu_seconds},
        )
        stats = servers.model_statistics(server.target, "mlp")
        assert servers.model_provider(server.target, "mlp") == "CPUExecutionProvider"
        assert "main" in servers.thread_cpu(server.pid)
    assert server.proc is not None and server.proc.poll() is not None  # stopped
    assert result.requests > 10 and result.errors == 0
    assert stats is not None and stats[0] >= result.requests and stats[1] >= 1


def test_raw_onnxruntime_sweep(tmp_path):
    from bench.raw_onnxruntime import batch_sizes_up_to, measure

    path = mlp_model(tmp_path / "mlp.onnx")
    result = measure(path, [1, 4], duration_s=0.2, warmup_s=0.05, intra_op_threads=1)
    assert [r["batch"] for r in result["rows"]] == [1, 4]
    assert all(r["rows_per_s"] > 0 and r["p50_ms"] > 0 for r in result["rows"])
    assert batch_sizes_up_to(64) == [1, 2, 4, 8, 16, 32, 64]
    assert batch_sizes_up_to(48) == [1, 2, 4, 8, 16, 32, 48]


def test_reports(tmp_path):
    rows = [{"server": "a", "rps": 1234.5, "p99_ms": 1.234, "n": 3}, {"server": "b", "rps": None, "p99_ms": 12.0}]
    table = markdown_table(rows, (("server", "server"), ("rps", "req/s"), ("p99_ms", "p99"), ("n", "n")))
    assert table.splitlines() == [
        "| server | req/s | p99 | n |",
        "|---|---:|---:|---:|",
        "| a | 1,234 | 1.23 | 3 |",
        "| b | - | 12.0 | - |",
    ]
    json_path, md_path = save_results("x", {"v": float("nan")}, table, tmp_path)
    assert json.loads(json_path.read_text()) == {"v": None}
    assert md_path.read_text().endswith("\n")


def test_py_spy_raw_summary():
    raw = "\n".join(
        [
            "thread (1): MainThread;main (a.py:1);run (asyncio/runners.py:1);handler (s.py:10);decode (c.py:5) 6",
            "thread (1): MainThread;main (a.py:1);run (asyncio/runners.py:1);handler (s.py:10) 2",
            "thread (2): engine_0;worker (t.py:1);session_run (o.py:3) 2",
        ]
    )
    summary = summarize(raw)
    assert summary["samples"] == 10
    assert summary["threads"] == {"MainThread": 0.8, "engine_0": 0.2}
    assert summary["self"][0] == {"function": "decode (c.py:5)", "share": 0.75}
    assert {"function": "handler (s.py:10)", "share": 1.0} in summary["inclusive"]
    assert all(not e["function"].startswith("main (") for e in summary["inclusive"])


def test_command_line_runs_in_worker_processes(echo, tmp_path):
    import subprocess

    out = tmp_path / "r.json"
    argv = [sys.executable, "-m", "bench.loadgen", "--target", echo.target, "--model", "mlp"]
    argv += ["--input", "input:1x64:FP32", "--concurrency", "2", "--duration", "0.5", "--warmup", "0.1"]
    argv += ["--processes", "1", "--server-pid", str(echo.pid), "--json", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["requests"] > 10 and result["processes"] == 1
    assert result["cpu_us_per_request"]["server"] > 0


def test_batching_floor_server_answers_each_request_with_its_own_rows(tmp_path):
    """bench/echo_server.py --batch-model: concurrent requests batched into one model, split back exactly."""
    import asyncio

    import grpc
    import onnxruntime as ort

    model = mlp_model(tmp_path / "model.onnx", features=8, hidden=16, classes=3)
    xs = [np.full((1, 8), i / 10, np.float32) for i in range(12)]
    expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"input": np.concatenate(xs)}
    )[0]

    async def send_all(target: str) -> list[pb.ModelInferResponse]:
        async with grpc.aio.insecure_channel(target) as channel:
            infer = channel.unary_unary(loadgen.INFER_METHOD)
            replies = await asyncio.gather(
                *(infer(loadgen.make_infer_request("mlp", {"input": x}), timeout=30) for x in xs)
            )
        return [pb.ModelInferResponse.FromString(r) for r in replies]

    with servers.start_echo(batch_model=model, max_batch_size=4, max_queue_delay_ms=5, log_dir=tmp_path) as server:
        responses = asyncio.run(send_all(server.target))
    for i, resp in enumerate(responses):
        names = [o.name for o in resp.outputs]
        got = np.frombuffer(resp.raw_output_contents[names.index("probabilities")], np.float32)
        np.testing.assert_allclose(got, expected[i], rtol=1e-5)


def _closed_cell(server: str, round: int, rps: float, cpu_us: float, concurrency: int = 64):
    from bench.batching_report import Cell

    requests = int(rps * 5)
    result = loadgen.Result(
        "closed",
        "127.0.0.1:1",
        5.0,
        concurrency=concurrency,
        requests=requests,
        latency_ms={"p50": 1.0, "p99": 10.0},
        cpu_s={"server": cpu_us * requests / 1e6},
    )
    return Cell(server, "mlp", result, round=round)


def test_batching_targets_are_judged_within_each_round_and_on_the_rounds_median():
    """``run_batching --rounds``: the sidecar is compared with the echo server of its own round, and a
    target's verdict is the median of the rounds' figures (all listed), not one round's."""
    from bench.batching_report import RunRecord, targets

    record = RunRecord()
    # (echo req/s, echo CPU, sidecar req/s, sidecar CPU) per round: ratios 0.9, 0.7, 0.85 / 1.2, 1.5, 1.25
    for r, (e_rps, e_cpu, s_rps, s_cpu) in enumerate(
        ((1000, 400, 900, 480), (2000, 300, 1400, 450), (1000, 400, 850, 500))
    ):
        record.cells += [_closed_cell("echo", r, e_rps, e_cpu), _closed_cell("sidecar-batching", r, s_rps, s_cpu)]
    rows = {row["target"]: row for row in targets(record)}
    rps = rows["req/s vs echo server (c=64)"]
    assert rps["measured"] == pytest.approx(0.85) and rps["verdict"] == "met"
    assert rps["rounds"] == "0.90, 0.70, 0.85"
    cpu = rows["server CPU per request vs echo"]
    assert cpu["measured"] == pytest.approx(1.25) and cpu["verdict"] == "met"
    assert cpu["rounds"] == "1.20, 1.50, 1.25"

    one = RunRecord(cells=[_closed_cell("echo", 0, 1000, 400), _closed_cell("sidecar-batching", 0, 700, 600)])
    rows = {row["target"]: row for row in targets(one)}
    assert rows["req/s vs echo server (c=64)"]["verdict"] == "NOT met"
    assert rows["server CPU per request vs echo"]["measured"] == pytest.approx(1.5)
    assert "rounds" not in rows["server CPU per request vs echo"]


def test_native_echo_server_answers_model_infer_with_the_file_and_ready_probes(tmp_path):
    """The C++ echo of ``bench/native_echo`` (built here, as ``run_batching --servers echo-native`` does)
    replays the response file to every ModelInfer, and answers ServerReady (start-up waited on it)."""
    answer = pb.ModelInferResponse(model_name="mlp", id="x").SerializeToString()
    response_file = tmp_path / "response.bin"
    response_file.write_bytes(answer)
    with servers.start_native_echo(response_file=response_file, log_dir=tmp_path) as server:
        import grpc

        with grpc.insecure_channel(server.target) as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            ready = channel.unary_unary("/inference.GRPCInferenceService/ModelReady")
            got = infer(loadgen.make_infer_request("mlp", {"input": np.ones((1, 64), np.float32)}), timeout=10)
            assert got == answer
            assert pb.ModelReadyResponse.FromString(ready(b"", timeout=10)).ready
        result = loadgen.run(
            server.target,
            b"",
            concurrency=4,
            duration_s=0.5,
            warmup_s=0.1,
            processes=0,
            cpu_probes={"server": server.cpu_seconds},
        )
        assert result.requests > 0 and result.errors == 0
        assert result.cpu_us_per_request("server") > 0


def test_ab_trees_serves_each_checkout_from_its_own_directory_and_reports_ratios(tmp_path):
    from bench import ab_trees

    # the same checkout on both sides (its noise floor): each side's sidecar serves the closed loop, and
    # the report holds both sides' figures and the per-round ratios
    both = ["--before", str(ROOT), "--after", str(ROOT), "--modes", "off", "--rounds", "1", "--duration", "0.5"]
    tuned = ["--before-setting", "server.gc_gen0_threshold=700"]  # a setting for one side's servers only
    assert ab_trees.main([*both, *tuned, "--concurrency", "4", "--name", "ab", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "ab.json").read_text())
    assert saved["settings"] == {"before": {"server.gc_gen0_threshold": "700"}, "after": {}}
    assert "with `server.gc_gen0_threshold = 700`" in (tmp_path / "ab.md").read_text()
    (row,) = saved["rows"]
    assert row["mode"] == "off" and row["errors"] == 0
    assert row["rps_before"] > 0 and row["rps_after"] > 0 and math.isfinite(row["rps_ratio"])
    assert row["server_before"] > 0 and row["loop_after"] > 0
    assert saved["trees"] == {"before": str(ROOT.resolve()), "after": str(ROOT.resolve())}
    assert "| off |" in (tmp_path / "ab.md").read_text()


def test_bench_gc_times_the_collector_inside_each_server_at_each_threshold(tmp_path):
    """bench.bench_gc: each server's own gc.callbacks (bench/gc_probe) give its collections per request;
    Python's threshold (700) collects the young generation far more often than the sidecar's (10,000)."""
    from bench import bench_gc

    args = ["--modes", "off", "--thresholds", "700,10000", "--rounds", "1", "--duration", "1", "--concurrency", "8"]
    assert bench_gc.main([*args, "--name", "gc", "--out", str(tmp_path)]) == 0
    rows = {row["threshold"]: row for row in json.loads((tmp_path / "gc.json").read_text())["rows"]}
    assert set(rows) == {700, 10000} and all(row["errors"] == 0 and row["rps"] > 0 for row in rows.values())
    assert rows[700]["gen0_per_1000"] > 0 and rows[700]["gc_us"] > 0
    assert rows[700]["gen0_per_1000"] > 3 * rows[10000]["gen0_per_1000"]
    assert "| off | 10000 |" in (tmp_path / "gc.md").read_text().replace(",", "")


def test_request_path_measures_each_mode_of_the_traced_request(tmp_path):
    """bench.request_path: thread CPU per request of the span work, per mode; tracing every request
    costs more than metrics alone (it does all the same work and more)."""
    from bench import request_path

    args = ["--blocks", "3", "--requests", "2400", "--name", "rp", "--out", str(tmp_path)]
    assert request_path.main(args) == 0
    rows = {row["mode"]: row for row in json.loads((tmp_path / "rp.json").read_text())["rows"]}
    assert set(rows) == {"metrics", "traces_100pct", "traces_1pct"}
    assert all(0 < row["min_us"] <= row["median_us"] for row in rows.values())
    assert rows["traces_100pct"]["min_us"] > rows["metrics"]["min_us"]
