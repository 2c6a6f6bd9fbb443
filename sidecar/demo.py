"""``sidecar demo``: real models, real traffic, the dashboard.

1. Builds an example repository: a scikit-learn classifier trained on the breast-cancer dataset that
   ships with scikit-learn, converted with skl2onnx, in two semantic versions (2.0.0 logistic
   regression, 2.1.0 gradient boosting), each with model.json metadata (training data version,
   training date, hyperparameters, offline accuracy).
2. Starts ``sidecar serve`` on free loopback ports, as a deployment would.
3. Sends traffic through ``tritonclient`` (the client a Triton user already has): held-out rows, one
   row per request, from concurrent clients; reports latency, throughput and served accuracy.
4. Later phases (drift, routing, telemetry) add themselves below in clearly marked sections.
5. Prints the dashboard.

The demo's own numbers come from what it measured in this run, never from constants.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODEL = "cancer"
VERSIONS = ("2.0.0", "2.1.0")
LATENCY_TARGET_MS = 200.0
THROUGHPUT_TARGET_RPS = 500.0
ACCURACY_TARGET = 0.93
PSI_THRESHOLD = 0.1


@dataclass
class DemoData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: list[str]


@dataclass
class Served:
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    correct: int = 0
    by_version: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def p95_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 95)) if self.latencies_ms else float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def accuracy(self) -> float:
        ok = self.requests - self.errors
        return self.correct / ok if ok else float("nan")


@dataclass
class Dashboard:
    """Facts for the dashboard; each phase fills what it measured (None = not measured)."""

    model: str = MODEL
    version: str = ""
    deployed: str = ""
    p95_ms: float | None = None
    rps: float | None = None
    accuracy: float | None = None
    psi: float | None = None
    psi_feature: str = ""
    psi_threshold: float = PSI_THRESHOLD
    psi_window: str = ""
    alerts: list[str] = field(default_factory=list)


# -- building the repository ---------------------------------------------------------------------


def load_data(seed: int = 0) -> DemoData:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    bunch = load_breast_cancer()
    x = bunch.data.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, bunch.target, test_size=0.3, random_state=seed, stratify=bunch.target
    )
    return DemoData(x_train, y_train, x_test, y_test, [str(n) for n in bunch.feature_names])


def build_repository(root: Path, data: DemoData) -> Path:
    """Train, convert and write both versions with their metadata; returns the repository path."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    repo = root / "models"
    if repo.exists():
        shutil.rmtree(repo)
    today = dt.date.today()
    specs = {
        "2.0.0": ("logistic regression", {"C": 1.0, "max_iter": 1000}, 30),
        "2.1.0": (
            "gradient boosting",
            {"n_estimators": 80, "max_depth": 3, "learning_rate": 0.1, "random_state": 0},
            7,
        ),
    }
    for version, (kind, params, age_days) in specs.items():
        if kind == "logistic regression":
            clf = make_pipeline(StandardScaler(), LogisticRegression(**params))
            options = {id(clf.steps[-1][1]): {"zipmap": False}}
        else:
            clf = GradientBoostingClassifier(**params)
            options = {id(clf): {"zipmap": False}}
        clf.fit(data.x_train, data.y_train)
        accuracy = float(clf.score(data.x_test, data.y_test))
        onx = to_onnx(clf, data.x_train[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
        vdir = repo / MODEL / version
        vdir.mkdir(parents=True)
        (vdir / "model.onnx").write_bytes(onx.SerializeToString())
        meta = {
            "description": f"{kind} on scikit-learn's breast-cancer dataset ({len(data.x_train)} training rows)",
            "training_data_version": f"breast-cancer-train-{len(data.x_train)}rows-seed0",
            "training_date": (today - dt.timedelta(days=age_days)).isoformat(),
            "hyperparameters": params,
            "offline_metrics": {"accuracy": round(accuracy, 4)},
            "batching": {"max_batch_size": 64, "max_queue_delay_ms": 1.0},
        }
        (vdir / "model.json").write_text(json.dumps(meta, indent=2))
        print(f"  built {MODEL} {version}: {kind}, offline accuracy {accuracy:.1%}, {vdir / 'model.onnx'}")
    return repo


# -- running the server --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    process: subprocess.Popen
    url: str
    control_url: str
    metrics_port: int
    log_path: Path


@contextlib.contextmanager
def serve(repo: Path, workdir: Path, extra_env: dict[str, str] | None = None) -> Iterator[RunningServer]:
    """Run ``sidecar serve`` as its own process on free loopback ports; SIGTERM (drain) at the end."""
    import tritonclient.grpc as tc

    grpc_port, control_port, metrics_port = _free_port(), _free_port(), _free_port()
    log_path = workdir / "sidecar.log"
    env = {**os.environ, "SIDECAR_ENGINE__PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider", **(extra_env or {})}
    cmd = [
        sys.executable,
        "-m",
        "sidecar",
        "serve",
        "--model-repository",
        str(repo),
        "--grpc-port",
        str(grpc_port),
        "--grpc-address",
        "127.0.0.1",
        "--control-port",
        str(control_port),
        "--metrics-port",
        str(metrics_port),
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = RunningServer(proc, f"127.0.0.1:{grpc_port}", f"127.0.0.1:{control_port}", metrics_port, log_path)
    try:
        client = tc.InferenceServerClient(server.url)
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(Exception):
                if client.is_server_ready():
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"sidecar did not become ready:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        client.close()
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- traffic -------------------------------------------------------------------------------------


async def send_rows(
    url: str,
    rows: np.ndarray,
    labels: np.ndarray | None,
    requests: int,
    concurrency: int,
    version: str = "",
    routing_keys: list[str] | None = None,
) -> Served:
    """Send ``requests`` single-row requests (cycling over ``rows``) from ``concurrency`` clients."""
    import tritonclient.grpc.aio as tca

    served = Served()
    client = tca.InferenceServerClient(url)
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            row = rows[i % len(rows)][None, :]
            inp = tca.InferInput("X", list(row.shape), "FP32")
            inp.set_data_from_numpy(row)
            params = {"routing_key": routing_keys[i % len(routing_keys)]} if routing_keys else None
            start = time.perf_counter()
            try:
                result = await client.infer(
                    MODEL,
                    [inp],
                    model_version=version,
                    request_id=str(i),
                    outputs=[tca.InferRequestedOutput("label")],
                    parameters=params,
                )
            except Exception:
                served.errors += 1
                continue
            finally:
                served.requests += 1
            served.latencies_ms.append((time.perf_counter() - start) * 1e3)
            served_version = result.get_response().model_version
            served.by_version[served_version] = served.by_version.get(served_version, 0) + 1
            if labels is not None and int(result.as_numpy("label")[0]) == int(labels[i % len(labels)]):
                served.correct += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    served.seconds = time.perf_counter() - start
    await client.close()
    return served


# -- the dashboard -------------------------------------------------------------------------------


def render_dashboard(d: Dashboard) -> str:
    def mark(ok: bool | None) -> str:
        return "?" if ok is None else ("✓" if ok else "✗")

    lat = (
        "Latency: n/a"
        if d.p95_ms is None
        else (f"Latency: 95% < {max(d.p95_ms, 0.1):.1f}ms {mark(d.p95_ms < LATENCY_TARGET_MS)}")
    )
    thr = (
        "Throughput: n/a" if d.rps is None else (f"Throughput: {d.rps:,.0f} RPS {mark(d.rps >= THROUGHPUT_TARGET_RPS)}")
    )
    acc = (
        "Accuracy: n/a"
        if d.accuracy is None
        else (f"Accuracy: {d.accuracy:.1%} (target: >{ACCURACY_TARGET:.0%}) {mark(d.accuracy > ACCURACY_TARGET)}")
    )
    if d.psi is None:
        drift = "Data Drift: not measured"
    else:
        where = f" ({d.psi_feature})" if d.psi_feature else ""
        window = f" for {d.psi_window}" if d.psi_window else ""
        drift = (
            f"Data Drift: PSI = {d.psi:.2f}{where} (threshold: {d.psi_threshold:.2g}{window}) "
            f"{mark(d.psi <= d.psi_threshold)}"
        )
    alerts = "Alerts: None active" if not d.alerts else f"Alerts: {len(d.alerts)} active: " + "; ".join(d.alerts)
    lines = [
        f"Model Performance Dashboard - {d.model} v{d.version} (Deployed {d.deployed})",
        f"{lat} | {thr}",
        acc,
        drift,
        alerts,
    ]
    width = max(61, *(len(line) + 2 for line in lines))
    out = ["┌" + "─" * width + "┐"]
    out += [f"│ {line.ljust(width - 2)} │" for line in lines]
    out.append("└" + "─" * width + "┘")
    return "\n".join(out)


# -- the demo ------------------------------------------------------------------------------------


def run_demo(args: argparse.Namespace) -> int:
    import tritonclient.grpc as tc

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print("== 1. Building the example model repository (scikit-learn -> skl2onnx)")
    data = load_data()
    repo = build_repository(workdir, data)
    # == drift monitoring: reference profiles from the training split (sidecar.monitoring) ========
    from sidecar.monitoring.demo import DEMO_SETTINGS, run_drift_phase, write_profiles

    write_profiles(repo, MODEL, VERSIONS, data.x_train, data.feature_names)
    # == end of drift monitoring profiles =========================================================

    print("\n== 2. Starting the sidecar")
    with serve(repo, workdir, DEMO_SETTINGS) as server:
        client = tc.InferenceServerClient(server.url)
        meta = client.get_model_metadata(MODEL)
        config = client.get_model_config(MODEL, as_json=True)["config"]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        print(f"  sidecar serving on {server.url} (control API {server.control_url}); log: {server.log_path}")
        print(
            f"  {MODEL}: versions {list(meta.versions)}, default {params.get('version')}, "
            f"provider {params.get('provider')}, warm-up {params.get('warmup_ms')} ms, "
            f"max batch {config.get('max_batch_size')}"
        )
        print(
            f"  metadata: trained {params.get('training_date')} on {params.get('training_data_version')}, "
            f"offline metrics {params.get('offline_metrics')}"
        )
        for entry in client.get_model_repository_index(as_json=True)["models"]:
            print(f"  repository: {entry['name']} {entry.get('version', '')} {entry.get('state', '')}")

        print(
            f"\n== 3. Traffic through tritonclient: {args.requests} single-row requests, "
            f"{args.concurrency} concurrent clients, held-out rows"
        )
        served = asyncio.run(send_rows(server.url, data.x_test, data.y_test, args.requests, args.concurrency))
        print(
            f"  served {served.requests - served.errors}/{served.requests} requests "
            f"({served.errors} errors) in {served.seconds:.2f} s = {served.rps:,.0f} req/s; "
            f"p50 {np.percentile(served.latencies_ms, 50):.2f} ms, p95 {served.p95_ms:.2f} ms; "
            f"versions {served.by_version}; accuracy against the held-out labels {served.accuracy:.1%}"
        )
        pinned = asyncio.run(send_rows(server.url, data.x_test, data.y_test, 200, 8, version="2.0.0"))
        print(
            f"  pinned to 2.0.0: {pinned.requests - pinned.errors} served by {pinned.by_version}, "
            f"accuracy {pinned.accuracy:.1%}"
        )
        stats = client.get_inference_statistics(MODEL, as_json=True)["model_stats"]
        for s in stats:
            inf = s.get("inference_stats", {})
            ok = int(inf.get("success", {}).get("count", 0))
            execs = int(s.get("execution_count", 0))
            queue_us = int(inf.get("queue", {}).get("ns", 0)) / max(ok, 1) / 1e3
            infer_us = int(inf.get("compute_infer", {}).get("ns", 0)) / max(ok, 1) / 1e3
            print(
                f"  statistics {s['name']} {s['version']}: {ok} requests in {execs} engine runs "
                f"({ok / max(execs, 1):.1f} requests per batch), queue {queue_us:.0f} us, compute {infer_us:.0f} us "
                "per request"
            )

        dash = Dashboard(
            version=params.get("version", ""),
            deployed=dt.date.today().isoformat(),
            p95_ms=served.p95_ms,
            rps=served.rps,
            accuracy=served.accuracy,
        )

        # == drift monitoring phase (sidecar.monitoring) ==============================================
        drift = run_drift_phase(
            server.url, server.control_url, MODEL, dash.version, data.x_train, data.x_test, data.feature_names,
            args.concurrency, send_rows,
        )  # fmt: skip
        dash.psi, dash.psi_feature, dash.alerts = drift.psi, drift.feature, drift.active
        if drift.psi_threshold is not None:
            dash.psi_threshold = drift.psi_threshold
            dash.psi_window = f"{drift.window_requests}-request windows"
        served.errors += 0 if drift.ok else 1
        # == end of drift monitoring phase ============================================================

        # == routing phase (sidecar.routing) ==========================================================
        from sidecar.routing.demo import run_routing_phase

        routing_ok = run_routing_phase(
            server.url, server.control_url, MODEL, VERSIONS[0], VERSIONS[1], data.x_test, data.y_test,
            args.requests, args.concurrency, send_rows,
        )  # fmt: skip
        served.errors += 0 if routing_ok else 1
        # == end of routing phase =====================================================================

        # == telemetry phase (sidecar.telemetry) ======================================================
        from sidecar.telemetry.demo import run_telemetry_phase

        served.errors += 0 if run_telemetry_phase(server.metrics_port, server.log_path, MODEL) else 1
        # == end of telemetry phase ===================================================================

        client.close()
    print("\n== Dashboard")
    print(render_dashboard(dash))
    print(f"\n(sidecar drained and stopped; its log is {server.log_path})")
    return 0 if served.errors == 0 else 1
