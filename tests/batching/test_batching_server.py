"""Dynamic batching through the real server: tritonclient requests, ONNX Runtime underneath."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from sidecar.testing.models import identity_model, mlp_model, write_version
from sidecar.testing.server import ServerThread, config_for_tests

CLIENTS = 16


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batching-repository")
    # Triton's rule with a long window, so concurrent requests surely share batches.
    triton_rule = {"max_batch_size": 16, "max_queue_delay_ms": 20, "adaptive": False}
    write_version(root, "mlp", "1.0.0", mlp_model, {"batching": triton_rule})
    # One request at a time, one waiting at most: everything else is shed.
    write_version(
        root,
        "slow",
        "1.0.0",
        mlp_model,
        {
            "batching": {"max_batch_size": 2, "batches_in_flight": 1, "max_queue_size": 1, "max_queue_delay_ms": 0},
            "warmup": {"batch_sizes": [1], "runs": 1},
        },
        hidden=4096,
    )
    # Batching switched off for one version: every request runs the engine on its own.
    write_version(root, "direct", "1.0.0", identity_model, {"batching": {"enabled": False}}, dims=(4,))
    return root


@pytest.fixture(scope="module")
def server(repo: Path):
    # Server defaults: adaptive batching; the versions above override what they need.
    with ServerThread(config_for_tests(str(repo), batching={"max_queue_delay_ms": 2.0})) as srv:
        yield srv


def infer(client: tc.InferenceServerClient, model: str, x: np.ndarray, **kw) -> tc.InferResult:
    inp = tc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], **kw)


def statistics(client: tc.InferenceServerClient, model: str) -> dict:
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return stats


def test_concurrent_requests_are_batched_and_split_back_exactly(server, repo):
    import onnxruntime as ort

    session = ort.InferenceSession(str(repo / "mlp" / "1.0.0" / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((int(rng.integers(1, 4)), 64)).astype(np.float32) for _ in range(96)]
    client = tc.InferenceServerClient(server.url)
    before = statistics(client, "mlp")
    outputs = [None, [tc.InferRequestedOutput("label")], [tc.InferRequestedOutput("probabilities")]]

    def one(i: int):
        return infer(client, "mlp", xs[i], outputs=outputs[i % 3])

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(one, range(len(xs))))
    for i, (x, result) in enumerate(zip(xs, results, strict=True)):
        probs, labels = session.run(["probabilities", "label"], {"input": x})
        names = {o["name"] for o in result.get_response(as_json=True)["outputs"]}
        if i % 3 == 1:
            assert names == {"label"}
        elif i % 3 == 2:
            assert names == {"probabilities"}
        else:
            assert names == {"label", "probabilities"}
        if "probabilities" in names:
            np.testing.assert_allclose(result.as_numpy("probabilities"), probs, rtol=1e-5, atol=1e-6)
        if "label" in names:
            np.testing.assert_array_equal(result.as_numpy("label"), labels)
    after = statistics(client, "mlp")
    requests = len(xs)
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    rows = sum(x.shape[0] for x in xs)
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == rows
    assert 0 < executions < requests  # requests shared engine runs
    sizes = [int(b["batch_size"]) for b in after["batch_stats"]]
    assert max(sizes) > 3 and all(s <= 16 for s in sizes)
    assert int(after["inference_stats"]["queue"]["count"]) >= requests


def test_malformed_request_fails_alone_while_its_neighbours_succeed(server):
    client = tc.InferenceServerClient(server.url)
    good = np.ones((1, 64), np.float32)
    bad = np.ones((1, 63), np.float32)

    def one(i: int):
        try:
            return infer(client, "mlp", bad if i == 5 else good).as_numpy("probabilities")
        except InferenceServerException as exc:
            return exc

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(one, range(12)))
    assert isinstance(results[5], InferenceServerException) and "INVALID_ARGUMENT" in results[5].status()
    for i, r in enumerate(results):
        if i != 5:
            assert isinstance(r, np.ndarray) and r.shape == (1, 10)
    # More rows than the version's max_batch_size (16): refused, not split, never queued.
    with pytest.raises(InferenceServerException) as caught:
        infer(client, "mlp", np.ones((17, 64), np.float32))
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and "max_batch_size 16" in caught.value.message()


def test_version_with_batching_switched_off_runs_every_request_alone(server):
    client = tc.InferenceServerClient(server.url)
    xs = [np.full((1, 4), i, np.float32) for i in range(24)]

    def one(x: np.ndarray) -> np.ndarray:
        inp = tc.InferInput("INPUT0", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        return client.infer("direct", [inp]).as_numpy("OUTPUT0")

    with ThreadPoolExecutor(CLIENTS) as pool:
        outs = list(pool.map(one, xs))
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_array_equal(out, x)
    stats = statistics(client, "direct")
    assert int(stats["execution_count"]) == len(xs) == int(stats["inference_count"])
    assert [int(b["batch_size"]) for b in stats["batch_stats"]] == [1]


def test_full_queue_sheds_with_resource_exhausted_while_others_succeed(server, monkeypatch):
    client = tc.InferenceServerClient(server.url)
    x = np.ones((1, 64), np.float32)
    # The engine is held busy by a gate (see hold_engine) while more requests arrive than one batch in
    # flight and one queued request can hold: those are shed at once, and the rest run once it opens.
    batcher = server.app.repository.get("slow").scheduler
    gate, runs = hold_engine(batcher, monkeypatch)

    def one(_: int):
        try:
            infer(client, "slow", x)
            return "OK"
        except InferenceServerException as exc:
            return exc.status()

    with ThreadPoolExecutor(CLIENTS) as pool:
        first = pool.submit(one, 0)
        wait_until(lambda: batcher.batches_running == 1)
        rest = [pool.submit(one, i) for i in range(1, 8)]
        wait_until(lambda: sum(f.done() for f in rest) >= 6)  # all but the one that found room in the queue
        gate.set()
        statuses = [first.result(), *(f.result() for f in rest)]
    shed = [s for s in statuses if s != "OK"]
    assert statuses.count("OK") == 2 and len(runs) == 2, statuses  # the held batch and the queued request
    assert len(shed) == 6 and all(s == "StatusCode.RESOURCE_EXHAUSTED" for s in shed), set(statuses)
    assert infer(client, "slow", x).as_numpy("probabilities").shape == (1, 10)  # and it keeps serving


def hold_engine(batcher, monkeypatch) -> tuple[threading.Event, list[int]]:
    """Hold ``batcher``'s engine: each real ONNX Runtime run starts once the returned gate is set (a
    model that is merely slow is not slow enough on every machine). ``runs``: the rows of each run."""
    engine = batcher._engine
    gate = threading.Event()
    real_run = engine.run_sync
    runs: list[int] = []

    def gated_run(inputs, output_names):
        gate.wait(10)
        runs.append(len(next(iter(inputs.values()))))
        return real_run(inputs, output_names)

    monkeypatch.setattr(engine, "run_sync", gated_run)
    monkeypatch.setattr(batcher, "_run_inline", None)  # every run in the pool: a held run must not hold the loop
    return gate, runs


def test_expired_timeout_parameter_gives_deadline_exceeded(server, monkeypatch):
    client = tc.InferenceServerClient(server.url)
    x = np.ones((1, 64), np.float32)
    with pytest.raises(InferenceServerException) as caught:
        infer(client, "mlp", x, timeout=1)  # Triton's timeout parameter: 1 microsecond
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    # A request queued behind a busy engine expires in the queue and never runs. The engine is
    # held busy by a gate (not by a model that is merely slow, which a fast machine finishes before
    # the second request arrives): the real ONNX Runtime run starts once the gate opens.
    batcher = server.app.repository.get("slow").scheduler
    gate, runs = hold_engine(batcher, monkeypatch)
    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(infer, client, "slow", np.ones((2, 64), np.float32))
        wait_until(lambda: batcher.batches_running == 1 or busy.done())
        late = pool.submit(infer, client, "slow", x, timeout=500)  # 0.5 ms
        wait_until(lambda: batcher.queue_depth == 1 or late.done())
        time.sleep(0.002)  # past the late request's deadline, while it waits in the queue
        gate.set()
        assert busy.result().as_numpy("probabilities").shape[0] == 2
        with pytest.raises(InferenceServerException) as late_caught:
            late.result()
    assert late_caught.value.status() == "StatusCode.DEADLINE_EXCEEDED", late_caught.value
    assert runs == [2]  # the expired request never reached the engine
    # The version keeps serving.
    assert infer(client, "slow", x).as_numpy("probabilities").shape == (1, 10)


def wait_until(condition, timeout_s: float = 5.0) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, "condition not reached"
        time.sleep(0.0005)


class Recording:
    """An ONNX Runtime session that notes the batch size of every run."""

    def __init__(self, session):
        self.session = session
        self.rows: list[int] = []

    def run(self, names, feed):
        self.rows.append(next(iter(feed.values())).shape[0])
        return self.session.run(names, feed)

    def __getattr__(self, name):
        return getattr(self.session, name)


def serve_concurrently(srv, xs, session) -> list[int]:
    """Send ``xs`` from CLIENTS threads; check every answer against ``session``; return batch sizes."""
    client = tc.InferenceServerClient(srv.url)
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(lambda x: infer(client, "mlp", x), xs))
    for x, result in zip(xs, results, strict=True):
        probs, labels = session.run(["probabilities", "label"], {"input": x})
        np.testing.assert_allclose(result.as_numpy("probabilities"), probs, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(result.as_numpy("label"), labels)
    return [int(b["batch_size"]) for b in statistics(client, "mlp")["batch_stats"]]


@pytest.mark.parametrize("mode", ["pad", "sessions"])
def test_padded_batches_run_at_the_warm_up_sizes_and_answer_exactly(tmp_path, mode):
    """engine.shape_buckets = pad: the session is warmed at powers of two and only ever runs those
    shapes; = sessions: each of those sizes has a session of its own that runs only that size. Every
    caller still gets its own rows, exactly."""
    import onnxruntime as ort

    write_version(tmp_path, "mlp", "1.0.0", mlp_model, {"batching": {"max_batch_size": 16, "adaptive": False}})
    config = config_for_tests(str(tmp_path), engine={"shape_buckets": mode}, batching={"max_queue_delay_ms": 20.0})
    session = ort.InferenceSession(str(tmp_path / "mlp" / "1.0.0" / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((int(rng.integers(1, 4)), 64)).astype(np.float32) for _ in range(64)]
    with ServerThread(config) as srv:
        engine = srv.app.repository.get("mlp", "1.0.0").engine
        assert engine.batch_buckets == (1, 2, 4, 8, 16)
        assert sorted(engine._by_rows) == ([1, 2, 4, 8] if mode == "sessions" else [])
        main = engine._session = Recording(engine._session)
        own = {rows: Recording(s) for rows, s in engine._by_rows.items()}
        engine._by_rows = dict(own)
        serve_concurrently(srv, xs, session)
        lone = np.ones((3, 64), np.float32)  # alone, 3 rows run at 4
        client = tc.InferenceServerClient(srv.url)
        np.testing.assert_allclose(
            infer(client, "mlp", lone).as_numpy("probabilities"),
            session.run(["probabilities"], {"input": lone})[0],
            rtol=1e-5,
            atol=1e-6,
        )
        sizes = [int(b["batch_size"]) for b in statistics(client, "mlp")["batch_stats"]]
    ran = main.rows + [r for rec in own.values() for r in rec.rows]
    assert ran and set(ran) <= {1, 2, 4, 8, 16}
    assert any(s not in (1, 2, 4, 8, 16) for s in sizes)  # real batches of other sizes were padded
    assert sum(ran) >= sum(x.shape[0] for x in xs)
    if mode == "sessions":
        assert set(main.rows) <= {16} and all(set(rec.rows) <= {rows} for rows, rec in own.items())
        assert own[4].rows


@pytest.mark.parametrize(
    ("probe_ms", "chosen"),
    [((80.0, 2.0, 90.0), "sessions"), ((80.0, 2.0, 2.2), "pad"), ((2.5, 2.0, 2.4), "off")],
)
def test_auto_buckets_only_where_a_change_of_batch_size_stalls(tmp_path, monkeypatch, probe_ms, chosen):
    """engine.shape_buckets = auto (the default): sessions of their own when a run after one at another
    size stalls (ONNX Runtime's CUDA convolutions), padding when only a first run at a new size does,
    nothing otherwise."""
    from sidecar.engine.onnx_session import OnnxEngine

    real_probe = OnnxEngine.probe_shapes
    measured = []

    def probe(self):
        measured.append(real_probe(self))  # the real probe runs (at a size the warm-up skipped)
        return probe_ms

    monkeypatch.setattr(OnnxEngine, "probe_shapes", probe)
    write_version(tmp_path, "mlp", "1.0.0", mlp_model, {"batching": {"max_batch_size": 8}})
    with ServerThread(config_for_tests(str(tmp_path))) as srv:
        engine = srv.app.repository.get("mlp", "1.0.0").engine
        assert engine.batch_buckets == (() if chosen == "off" else (1, 2, 4, 8))
        assert sorted(engine._by_rows) == ([1, 2, 4] if chosen == "sessions" else [])
        assert engine.padded_rows(3) == (3 if chosen == "off" else 4)
        client = tc.InferenceServerClient(srv.url)
        x = np.ones((3, 64), np.float32)
        assert infer(client, "mlp", x).as_numpy("probabilities").shape[0] == 3
    assert len(measured) == 1 and len(measured[0]) == 3 and all(ms > 0 for ms in measured[0])


def test_auto_gives_sessions_of_their_own_to_a_model_that_replans_on_every_shape_change(tmp_path):
    """With every session stalling 30 ms whenever its batch size changes (ONNX Runtime's CUDA
    convolutions, simulated), auto's probe picks one session per size, and serving concurrent requests
    of mixed sizes then re-plans no more: each session only ever sees its own size."""
    from sidecar.testing.replanning import ReplanningEngines

    write_version(tmp_path, "mlp", "1.0.0", mlp_model, {"batching": {"max_batch_size": 8}})
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "mlp" / "1.0.0" / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((int(rng.integers(1, 3)), 64)).astype(np.float32) for _ in range(48)]
    with ReplanningEngines(stall_s=0.03) as made, ServerThread(config_for_tests(str(tmp_path))) as srv:
        engine = srv.app.repository.get("mlp", "1.0.0").engine
        assert engine.batch_buckets == (1, 2, 4, 8) and sorted(engine._by_rows) == [1, 2, 4]
        before = made.replans
        serve_concurrently(srv, xs, session)
        # At most one re-plan per session (its first run at its own size, if the warm-up left it elsewhere).
        assert made.replans - before <= len(made.sessions)


def test_auto_does_not_probe_a_version_whose_warm_up_is_switched_off(tmp_path):
    from sidecar.testing.replanning import ReplanningEngines

    write_version(tmp_path, "mlp", "1.0.0", mlp_model, {"batching": {"max_batch_size": 8}, "warmup": {"runs": 0}})
    with ReplanningEngines(stall_s=0.03) as made, ServerThread(config_for_tests(str(tmp_path))) as srv:
        engine = srv.app.repository.get("mlp", "1.0.0").engine
        assert engine.batch_buckets == () and made.replans == 0  # not a single run at load
