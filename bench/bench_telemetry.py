"""What telemetry costs the serving path, measured against the issue's targets.

1. **serving**: one ``sidecar serve`` process per mode (MLP 64-256-256-10, dynamic batching on), new
   processes every round, all running at once; closed loop at concurrency 64 (bench/loadgen.py in one
   worker process) on one server at a time, the modes visited in turn round by round (shuffled order,
   a settling pause before each); the costs are medians of the per-round ratios against ``off``, with
   the interquartile range of those ratios:

   - ``off``: ``telemetry.enabled = false`` (the baseline);
   - ``control``: ``off`` again, a process of its own: its "cost" is the run's noise floor;
   - ``metrics``: the default: metrics on, Prometheus endpoint, no traces;
   - ``full``: traces sampled at 100 % and metrics, both exported over OTLP/gRPC every second to a
     null collector in this process (it accepts the OTLP Export calls without decoding them: a real
     collector runs elsewhere, its CPU is not the sidecar's cost);
   - ``sampled1``: the same with ``parentbased_traceidratio`` at 1 %;
   - ``sampled1_pull``: ``sampled1`` with metrics pulled only (Prometheus, not scraped here): the 1 %
     traces without the OTLP metric push every second (60 times the default rate);
   - ``full_push60``, ``sampled1_push60``: ``full`` and ``sampled1`` with the metric push at its
     default interval (60 s): what the traces cost without the benchmark's 1 s push;
   - ``collector_down``: ``full`` with the collector unreachable (spans dropped and counted).

   Targets: ``full`` costs at most 10 % of req/s against ``off``; ``sampled1`` at most 3 %. Also per
   mode: the event loop thread's CPU per request (where every request's Python runs, spans included;
   the rest of the server CPU is gRPC's, the engine's and the export threads') and the mean batch the
   batcher formed (fewer rows per engine run cost every request more CPU, whatever the cause).
2. **wrapper**: in-process CPU per request of the RPC wrapper (``sidecar.protocol.interceptors``) with
   the request path's span work (queue time, one batch span per 8 requests) and the export thread's
   OTLP encoding, grpc-free: metrics only, traces 100 %, traces 1 %; each traced mode both with the
   sidecar's lean tracer (``lean_*``) and with the OpenTelemetry SDK's tracer and encoder (``sdk_*``,
   what the sidecar used before), plus the OTLP encoding alone per span and the statistics sink.
3. **paired**: server CPU per request of ``metrics``, ``full``, ``sampled1``, their ``_push60``
   variants and ``control``, each against an ``off`` server loaded at the same time (open loop at 500
   req/s on each, fresh processes every pair, 6 rounds): a cost measure that holds to a few per cent on
   this shared machine, where the closed-loop req/s of part 1 moves by +-15 % from round to round.
   Below saturation; the targets are stated on part 1's req/s.
4. **gpu** (``--gpu``): time of one NVML sample of every GPU (``GpuSampler.sample``), on the sampler's
   own thread in production; reports that there is no GPU where there is none.

    .venv/bin/python -m bench.bench_telemetry                      # about 20 minutes
    .venv/bin/python -m bench.bench_telemetry --duration 2 --rounds 4 --only wrapper,serving --gpu

Results: bench/results/telemetry.json and telemetry.md. On a shared 2-core machine the serving numbers
are noisy: compare modes within one run only, and read a cost against ``control``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import loadgen, servers
from bench.report import machine_info, markdown_table, save_results
from sidecar.testing.models import mlp_model, write_version

TARGET_FULL_PCT = 10.0
TARGET_SAMPLED_PCT = 3.0
MODES = (
    "off",
    "control",
    "metrics",
    "full",
    "sampled1",
    "sampled1_pull",
    "full_push60",
    "sampled1_push60",
    "collector_down",
)


def mode_settings(mode: str, otlp_endpoint: str, dead_endpoint: str) -> dict[str, Any]:
    base: dict[str, Any] = {"telemetry.gpu_metrics": True, "telemetry.metrics_port": servers.free_port()}
    if mode in ("off", "control"):
        return {"telemetry.enabled": False}
    if mode == "metrics":
        return base
    exported = {
        **base,
        "telemetry.otlp_endpoint": otlp_endpoint,
        "telemetry.metric_export_interval_ms": 1000,
        "telemetry.span_schedule_delay_ms": 200,
        "telemetry.sampler": "parentbased_always_on",
    }
    if mode.startswith("sampled1"):
        exported.update({"telemetry.sampler": "parentbased_traceidratio", "telemetry.sampler_arg": "0.01"})
    if mode == "sampled1_pull":  # metrics only pulled (Prometheus): what the 1 % costs without the 1 s OTLP push
        exported["telemetry.metrics_exporter"] = "prometheus"
    if mode.endswith("_push60"):  # the OTLP metric push at its default interval (60 s), not every second
        exported["telemetry.metric_export_interval_ms"] = 60_000
    if mode == "collector_down":
        exported.update({"telemetry.otlp_endpoint": dead_endpoint, "telemetry.otlp_timeout_ms": 500})
    return exported


class NullCollector:
    """Answers OTLP/gRPC TraceService and MetricsService Export calls without decoding them."""

    def __init__(self) -> None:
        import grpc

        self.requests = 0
        self.bytes = 0

        def export(body: bytes, context: Any) -> bytes:
            self.requests += 1
            self.bytes += len(body)
            return b""  # an empty Export*ServiceResponse

        handler = grpc.unary_unary_rpc_method_handler(export)  # no (de)serialisers: raw bytes
        services = [
            grpc.method_handlers_generic_handler(name, {"Export": handler})
            for name in (
                "opentelemetry.proto.collector.trace.v1.TraceService",
                "opentelemetry.proto.collector.metrics.v1.MetricsService",
            )
        ]
        from concurrent.futures import ThreadPoolExecutor

        self._server = grpc.server(ThreadPoolExecutor(2), handlers=services)
        self.endpoint = f"http://127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"

    def __enter__(self) -> NullCollector:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(0).wait(5)


def bench_serving(
    workdir: Path,
    duration_s: float,
    rounds: int,
    concurrency: int,
    modes: list[str],
    settle_s: float = 1.0,
    fresh: bool = True,
) -> dict:
    """Each round starts one server per mode (``fresh``: new processes every round; else the first
    round's serve them all), all running at once (idle while another is measured); the load visits them
    in a shuffled order after a settling pause (a traced server goes on exporting for a moment after its
    load stops: always measuring one mode right after another would charge it to that one). Costs are
    medians of the per-round ratios against ``off`` (paired), which hold up under a shared machine's
    noise far better than ratios of medians of separate runs.

    Fresh processes every round, because two processes of one configuration differ by themselves: in
    one run here, two ``off`` processes served 4,180 and 4,032 req/s and two ``sampled1`` ones 3,866 and
    3,459 (12 % apart), each steady over six rounds. With one process per mode for the whole run, that
    difference is part of every round's ratio and no number of rounds averages it out; with fresh ones
    it is noise between rounds, and the median goes through it. ``control`` (an ``off`` server of its
    own, costed like the others) shows what is left of it: its cost is the noise floor of the run."""
    repo = workdir / "repo"
    write_version(repo, "mlp", "1.0.0", mlp_model)
    payload = loadgen.make_infer_request("mlp", {"input": np.random.default_rng(0).random((1, 64), np.float32)})
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    order = random.Random(0)
    with NullCollector() as otlp, contextlib.ExitStack() as kept:
        dead = f"http://127.0.0.1:{servers.free_port()}"
        started: dict[str, Any] = {}
        for r in range(rounds):
            with contextlib.ExitStack() as round_stack:
                stack = round_stack if fresh else kept
                if fresh or not started:
                    started = {
                        mode: stack.enter_context(
                            servers.start_sidecar(
                                repo,
                                models=["mlp"],
                                settings=mode_settings(mode, otlp.endpoint, dead),
                                name=f"sidecar-{mode}",
                            )
                        )
                        for mode in modes
                    }
                for mode in order.sample(modes, len(modes)):
                    srv = started[mode]
                    time.sleep(settle_s)  # the previous server's export thread drains what its load left
                    before = servers.model_statistics(srv.target, "mlp")
                    result = loadgen.run(
                        srv.target,
                        payload,
                        concurrency=concurrency,
                        duration_s=duration_s,
                        warmup_s=0.5,
                        cpu_probes=server_probes(srv),
                        labels={"mode": mode, "round": r},
                    )
                    after = servers.model_statistics(srv.target, "mlp")
                    run = result.to_dict()
                    batch = servers.mean_batch(before, after)  # the mean batch the batcher formed
                    if batch is not None:
                        run["batch_rows"] = round(batch, 2)
                    runs[mode].append(run)
                    print(f"round {r} {mode:15s} {result.summary()}", flush=True)
        received = {"export_calls": otlp.requests, "bytes": otlp.bytes}
    return {"modes": summarise(runs), "runs": runs, "collector": received, "fresh_processes": fresh}


def bench_paired(workdir: Path, duration_s: float, rounds: int, rate_per_s: float, modes: list[str]) -> dict:
    """CPU per request of each mode against ``off``, the two served **at the same time**, open loop.

    Each round, for each mode (shuffled): a fresh ``off`` server and a fresh server of the mode, each
    loaded at ``rate_per_s`` (open loop, below saturation) by its own load generator process, both in
    the same seconds. The cost is the median over the rounds of (mode's server CPU per request / the
    ``off`` server's - 1). Both share whatever the machine does in those seconds, so this resolves a few
    per cent where the closed-loop req/s ratios (``bench_serving``) move by +-15 % from round to round;
    ``control`` (``off`` against ``off``) is its noise floor. Below saturation the batches are small
    (about one request each), so a batch span costs each request what a request span does."""
    repo = workdir / "repo"
    write_version(repo, "mlp", "1.0.0", mlp_model)
    payload = loadgen.make_infer_request("mlp", {"input": np.random.default_rng(0).random((1, 64), np.float32)})
    pairs: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {m: [] for m in modes if m != "off"}
    order = random.Random(1)
    with NullCollector() as otlp:
        dead = f"http://127.0.0.1:{servers.free_port()}"
        for r in range(rounds):
            for mode in order.sample(list(pairs), len(pairs)):
                base = "off" if mode == "control" else mode
                with (
                    servers.start_sidecar(
                        repo, models=["mlp"], settings=mode_settings("off", otlp.endpoint, dead), name="sidecar-off"
                    ) as ref,
                    servers.start_sidecar(
                        repo, models=["mlp"], settings=mode_settings(base, otlp.endpoint, dead), name=f"sidecar-{mode}"
                    ) as srv,
                ):
                    out: dict[str, dict[str, Any]] = {}
                    threads = [
                        threading.Thread(target=_open_loop, args=(out, key, x, payload, rate_per_s, duration_s))
                        for key, x in (("off", ref), ("mode", srv))
                    ]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    pairs[mode].append((out["off"], out["mode"]))
                    a, b = (x["cpu_us_per_request"]["server"] for x in (out["off"], out["mode"]))
                    print(
                        f"round {r} {mode:15s} off {a:.0f} us/req, {mode} {b:.0f} us/req ({100 * (b / a - 1):+.1f} %)"
                    )
    summary = {}
    for mode, got in pairs.items():
        cpu = [100.0 * (m["cpu_us_per_request"]["server"] / o["cpu_us_per_request"]["server"] - 1) for o, m in got]
        loop = [100.0 * (m["cpu_us_per_request"]["loop"] / o["cpu_us_per_request"]["loop"] - 1) for o, m in got]
        summary[mode] = {
            "off_server_us_per_req": statistics.median(o["cpu_us_per_request"]["server"] for o, _ in got),
            "server_us_per_req": statistics.median(m["cpu_us_per_request"]["server"] for _, m in got),
            "cpu_cost_pct": round(statistics.median(cpu), 2),
            "cpu_cost_iqr": _iqr(cpu) if len(cpu) >= 4 else "",
            "loop_cost_pct": round(statistics.median(loop), 2),
            "p50_ms_off": statistics.median(o["latency_ms"]["p50"] for o, _ in got),
            "p50_ms": statistics.median(m["latency_ms"]["p50"] for _, m in got),
            "errors": sum(m["errors"] + o["errors"] for o, m in got),
        }
    return {"rate_per_s": rate_per_s, "modes": summary, "pairs": pairs}


def _open_loop(out: dict, key: str, server: Any, payload: bytes, rate_per_s: float, duration_s: float) -> None:
    result = loadgen.run(
        server.target,
        payload,
        rate_per_s=rate_per_s,
        duration_s=duration_s,
        warmup_s=1.0,
        cpu_probes=server_probes(server),
    )
    out[key] = result.to_dict()


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per mode: medians over the rounds, and the cost against ``off`` as the median of the per-round
    ratios with the interquartile range of those ratios (``rps_cost_iqr``: how far the rounds spread)."""
    summary: dict[str, dict[str, Any]] = {}
    base = runs.get("off")
    for mode, results in runs.items():
        cpu = [x["cpu_us_per_request"].get("server") or float("nan") for x in results]
        summary[mode] = {
            "rps": statistics.median(x["rps"] for x in results),
            "p99_ms": statistics.median(x["latency_ms"].get("p99", float("nan")) for x in results),
            "server_us_per_req": statistics.median(cpu),
            "loop_us_per_req": statistics.median(x["cpu_us_per_request"].get("loop") or float("nan") for x in results),
            "batch_rows": statistics.median(x.get("batch_rows", float("nan")) for x in results),
            "errors": sum(x["errors"] for x in results),
        }
        if base:
            costs = [100.0 * (1 - x["rps"] / b["rps"]) for x, b in zip(results, base, strict=True) if b["rps"]]
            base_cpu = [b["cpu_us_per_request"].get("server") or float("nan") for b in base]
            summary[mode]["rps_cost_pct"] = round(statistics.median(costs), 2) if costs else None
            summary[mode]["rps_cost_iqr"] = _iqr(costs) if len(costs) >= 4 else ""
            summary[mode]["cpu_cost_pct"] = round(
                100.0 * (statistics.median(c / b for c, b in zip(cpu, base_cpu, strict=True)) - 1), 2
            )
    return summary


def _iqr(values: list[float]) -> str:
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{q1:.1f} .. {q3:.1f}"


def server_probes(server: Any) -> dict[str, Any]:
    """The load generator's CPU probes for a served sidecar: its whole process tree, and its event loop."""
    return {"server": server.cpu_seconds, "loop": functools.partial(loop_cpu_s, server.pid)}


def loop_cpu_s(pid: int) -> float:
    """CPU seconds of a server's main thread, where its event loop runs (every request's Python: the
    gRPC handlers, the request spans, the batcher), from the scheduler's nanosecond counter."""
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return float("nan")


class _Context:
    """Just what the wrapper reads of a grpc.aio ServicerContext (metadata, code, details)."""

    def __init__(self, metadata: tuple) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple:
        return self._metadata

    def code(self) -> None:
        return None

    def details(self) -> None:
        return None


class NullTraceExporter:
    """Encodes each batch as the sidecar's OTLP exporters do (spans encoded as they end: ``at_end``),
    then drops it: the in-process benchmarks' exporter."""

    def __init__(self, resource: dict[str, Any]) -> None:
        from sidecar.telemetry.otlp import TraceEncoder

        self.encoder = TraceEncoder(resource)
        self.at_end = self.encoder.at_end
        self.bytes = 0

    def export(self, spans: Any) -> bool:
        self.bytes += len(self.encoder.encode(spans))
        return True

    def shutdown(self) -> None:
        pass


def bench_wrapper(n: int = 48_000, batch: int = 8, impls: tuple[str, ...] = ("sdk", "lean")) -> dict[str, float]:
    """Process CPU per request of the tracing pipeline, in process, grpc-free.

    Each request goes through the RPC wrapper and a fake servicer that does what the repository and the
    batcher do with spans: take the current span, record its queue time, and every ``batch`` requests
    run one batch span linked to them. Spans are exported at the end (the export thread's CPU is
    process CPU too): ``lean_*`` through the sidecar's lean tracer and OTLP encoder, ``sdk_*`` through
    the OpenTelemetry SDK's TracerProvider and its OTLP encoder (what the sidecar used before), for
    comparison within one run. The grpc transport is left out (a null sender): both pay the same.
    """
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    from sidecar.protocol.interceptors import observed
    from sidecar.telemetry import catalog, tracing
    from sidecar.telemetry.export import BoundedSpanProcessor, DropCounter
    from sidecar.telemetry.histograms import HistogramSet
    from sidecar.telemetry.lean_tracing import LeanTracerProvider
    from sidecar.telemetry.model_metrics import ModelHistograms, VersionMetrics
    from sidecar.telemetry.sampling import configured_sampler, decision
    from sidecar.telemetry.spans import INVALID_SPAN, batch_span, current_span, record_queue_time

    resource = {"service.name": "bench", "telemetry.sdk.name": "opentelemetry", "telemetry.sdk.language": "python"}

    class Servicer:
        def __init__(self) -> None:
            self.pending: list[tuple[Any, asyncio.Future]] = []

        async def ModelInfer(self, request: Any, context: Any) -> int:
            future = asyncio.get_running_loop().create_future()
            self.pending.append((current_span(), future))
            if len(self.pending) == batch:
                pending, self.pending = self.pending, []
                spans = []
                for span, _ in pending:
                    if span is not INVALID_SPAN:
                        record_queue_time(span, 1e-4)
                        spans.append(span)
                if spans:
                    with batch_span("mlp", "1.0.0", spans, batch, "CPUExecutionProvider"):
                        pass
                for _, f in pending:
                    f.set_result(1)
            return await future

    class LeanEncoding(NullTraceExporter):
        def __init__(self) -> None:
            super().__init__(resource)

    class SdkEncoding(LeanEncoding):
        def __init__(self) -> None:
            super().__init__()
            self.at_end = None  # the SDK's spans: encoded at export

        def export(self, spans: Any) -> bool:
            self.bytes += len(encode_spans(spans).SerializeToString())
            return True

    class SdkProcessor(SpanProcessor):
        def __init__(self, inner: BoundedSpanProcessor) -> None:
            self.on_end = inner.on_end  # type: ignore[method-assign]

    hists = HistogramSet(Resource({}))
    durations = hists.family(catalog.RPC_DURATION, scale=1e-9)
    request = type("Req", (), {"model_name": "mlp", "model_version": ""})()
    ctx = _Context((("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),))
    ctx_unsampled = _Context(())
    out: dict[str, float] = {}

    async def loop(fn: Any, context: Any) -> float:
        # process CPU time: includes the span export thread's work, and not other processes' noise
        t = time.process_time()
        for _ in range(n // batch):
            await asyncio.gather(*[fn(request, context) for _ in range(batch)])
        return (time.process_time() - t) / n * 1e6

    async def main() -> None:
        out["no_wrapper_us"] = await loop(Servicer().ModelInfer, ctx)
        out["metrics_only_us"] = (
            await loop(observed(Servicer(), "s", None, durations).ModelInfer, ctx) - out["no_wrapper_us"]
        )
        for impl in impls:
            for name, sampler, ratio, context in (
                ("traces_100pct_us", "parentbased_always_on", 1.0, ctx),
                ("traces_1pct_us", "parentbased_traceidratio", 0.01, ctx_unsampled),
            ):
                if impl == "sdk":
                    provider = TracerProvider(
                        sampler=configured_sampler(sampler, ratio), resource=Resource(resource), shutdown_on_exit=False
                    )
                    processor = BoundedSpanProcessor(SdkEncoding(), DropCounter(), 1 << 20, 512, 0.2)
                    provider.add_span_processor(SdkProcessor(processor))
                else:
                    provider = LeanTracerProvider(decision(sampler, ratio), resource)
                    processor = BoundedSpanProcessor(LeanEncoding(), DropCounter(), 1 << 20, 512, 0.2)
                    provider.add_span_processor(processor)
                tracing.activate(provider)  # batch spans go through the API's global provider
                fn = observed(Servicer(), "s", provider.get_tracer("b"), durations).ModelInfer
                cost = await loop(fn, context) - out["no_wrapper_us"]
                t = time.process_time()
                processor.shutdown(30.0)  # what was still queued: exported now, its CPU counted too
                out[f"{impl}_{name}"] = cost + (time.process_time() - t) / n * 1e6
                tracing.deactivate(provider)
                if impl == "lean" and ratio == 1.0:
                    out["lean_spans_per_request_100pct"] = processor.exported / n

    asyncio.run(main())
    out.update(bench_encoding())
    out.update(bench_metric_collection())
    mv = type("MV", (), {"name": "mlp", "version_str": "1.0.0"})()
    sink = VersionMetrics(mv, ModelHistograms(hists))
    t = time.process_time()
    for _ in range(n):
        sink.request(True, 1_000_000, 1)
        sink.queue(200_000)
    out["sink_per_request_us"] = (time.process_time() - t) / n * 1e6
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


def bench_encoding(spans: int = 512, repeat: int = 20) -> dict[str, float]:
    """OTLP encoding alone, CPU per span, of typical request spans: the lean encoder and the SDK's."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    from sidecar.telemetry import otlp
    from sidecar.telemetry.lean_tracing import LeanTracerProvider
    from sidecar.telemetry.otlp import TraceEncoder
    from sidecar.telemetry.sampling import decision

    attrs = {"rpc.system.name": "grpc", "rpc.method": "inference.GRPCInferenceService/ModelInfer"}

    def make(provider: Any) -> list[Any]:
        made: list[Any] = []
        tracer = provider.get_tracer("sidecar.protocol")
        for _ in range(spans):
            span = tracer.start_span(attrs["rpc.method"], kind=trace.SpanKind.SERVER, attributes=attrs)
            span.set_attribute("model.name", "mlp")
            span.set_attribute("sidecar.queue.duration_s", 0.00012)
            span.set_attribute("sidecar.batch.span_id", "00f067aa0ba902b7")
            span.set_attribute("sidecar.batch.rows", 8)
            span.set_attribute("rpc.status_code", "OK")
            span.end()
            made.append(span)
        return made

    class Keep(SpanProcessor):
        def __init__(self) -> None:
            self.spans: list[Any] = []

        def on_end(self, span: Any) -> None:
            self.spans.append(span)

    out = {}
    native = otlp.native_span_field
    for impl in ("sdk", "lean", "lean_python"):
        keep = Keep()
        if impl == "sdk":
            provider: Any = TracerProvider(shutdown_on_exit=False)
            encode = lambda batch: encode_spans(batch).SerializeToString()  # noqa: E731
        else:
            provider = LeanTracerProvider(decision("always_on", 1.0), {"service.name": "bench"})
            encode = TraceEncoder({"service.name": "bench"}).encode
        provider.add_span_processor(keep)
        make(provider)
        otlp.native_span_field = None if impl == "lean_python" else native  # lean: C where it is built
        try:
            t = time.process_time()
            for _ in range(repeat):
                encode(keep.spans)
            out[f"{impl}_encode_us_per_span"] = (time.process_time() - t) / (repeat * spans) * 1e6
        finally:
            otlp.native_span_field = native
    out["lean_encoder"] = otlp.ENCODER
    return out


def bench_metric_collection(features: int = 64, repeat: int = 200) -> dict[str, float]:
    """One metric collection and its OTLP encoding (what every push does, on the reader's thread) for a
    profiled version of ``features`` numeric features (14 bin counts and 14 reference shares each, plus
    the data-quality counts): the drift instruments' points dominate every export."""
    from types import SimpleNamespace

    from opentelemetry.sdk.resources import Resource

    from sidecar.telemetry.drift_metrics import DriftMetrics
    from sidecar.telemetry.histograms import HistogramSet
    from sidecar.telemetry.otlp_metrics import encode_request

    labels = ("below", *(f"b{i}" for i in range(10)), "above", "nan", "inf")
    version = SimpleNamespace(
        model="mlp",
        version="1.0.0",
        features=tuple(
            SimpleNamespace(
                feature=f"feature_{i}",
                kind="numeric",
                bins=labels,
                cumulative=tuple(range(i, i + len(labels))),
                reference=tuple(range(1, len(labels) + 1)),
            )
            for i in range(features)
        ),
        has_reference=True,
        schema_violations_total=0,
        last_window=None,
        alerts=(),
    )
    hists = HistogramSet(Resource({"service.name": "bench"}))
    DriftMetrics(hists, lambda: SimpleNamespace(versions=(version,)))
    points = sum(len(m.data.data_points) for m in hists.metrics())
    took = []
    for _ in range(repeat):
        t = time.process_time()
        encode_request(hists.merge_into(None))
        took.append(time.process_time() - t)
    return {
        "metric_points": points,
        "metric_collect_encode_ms_min": min(took) * 1e3,
        "metric_collect_encode_ms_median": statistics.median(took) * 1e3,
    }


def bench_gpu(samples: int = 200) -> dict[str, Any]:
    from opentelemetry.sdk.metrics import MeterProvider

    from sidecar.telemetry.gpu import GpuSampler

    provider = MeterProvider()
    sampler = GpuSampler.start(provider.get_meter("b"), 3600.0)
    if sampler is None:
        return {"gpus": 0, "note": "no GPU or no NVML here: the hw.* instruments are absent (as designed)"}
    try:
        t = time.perf_counter()
        for _ in range(samples):
            sampler.sample()
        per_sample = (time.perf_counter() - t) / samples * 1e6
        names = [r.attributes["hw.name"] for r in sampler.readings]
        return {"gpus": len(names), "names": names, "us_per_sample_all_gpus": round(per_sample, 1)}
    finally:
        sampler.stop()
        provider.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per mode and round")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--only", default="wrapper,serving,paired", help="comma list of wrapper, serving, paired")
    p.add_argument("--paired-rate", type=float, default=500.0, help="paired: open-loop req/s on each of the two")
    p.add_argument("--paired-rounds", type=int, default=6)
    p.add_argument("--paired-duration", type=float, default=5.0, help="paired: measured seconds per pair")
    p.add_argument(
        "--paired-modes",
        default="metrics,full,sampled1,full_push60,sampled1_push60,control",
        help="paired: each against off",
    )
    p.add_argument(
        "--modes",
        default="off,control,metrics,full,sampled1,sampled1_pull,collector_down",
        help=f"comma list of {', '.join(MODES)}; off (the baseline) is always measured",
    )
    p.add_argument(
        "--same-processes",
        action="store_true",
        help="serve every round from the first round's processes (the method before fresh processes)",
    )
    p.add_argument("--gpu", action="store_true", help="also time NVML sampling")
    p.add_argument("--name", help="results file stem (default telemetry; telemetry-gpu for --gpu alone)")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    results: dict[str, Any] = {"machine": machine_info()}
    if "wrapper" in only:
        results["wrapper"] = bench_wrapper()
        print("wrapper (us per call, beyond the bare handler):", json.dumps(results["wrapper"]), flush=True)
    if args.gpu:
        results["gpu"] = bench_gpu()
        print("gpu:", json.dumps(results["gpu"]), flush=True)
    if "serving" in only:
        with tempfile.TemporaryDirectory() as tmp:
            modes = [m for m in args.modes.split(",") if m]
            if "off" not in modes:
                modes.insert(0, "off")
            unknown = sorted(set(modes) - set(MODES))
            if unknown:
                p.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
            results["serving"] = bench_serving(
                Path(tmp), args.duration, args.rounds, args.concurrency, modes, fresh=not args.same_processes
            )
        rows = []
        for mode, m in results["serving"]["modes"].items():
            target = {"full": TARGET_FULL_PCT, "sampled1": TARGET_SAMPLED_PCT}.get(mode)
            verdict = ""
            if target is not None and m["rps_cost_pct"] is not None:
                verdict = f"<= {target:g} %: " + ("meets" if m["rps_cost_pct"] <= target else "MISSES")
            rows.append({"mode": mode, **m, "target": verdict})
        columns = [
            ("mode", "mode"),
            ("rps", "req/s"),
            ("rps_cost_pct", "req/s cost % vs off"),
            ("rps_cost_iqr", "per-round cost, IQR %"),
            ("p99_ms", "p99 ms"),
            ("server_us_per_req", "server CPU us/req"),
            ("cpu_cost_pct", "CPU/req cost % vs off"),
            ("loop_us_per_req", "event loop CPU us/req"),
            ("batch_rows", "mean batch rows"),
            ("errors", "errors"),
            ("target", "target"),
        ]
        table = markdown_table(rows, columns)
        print(table)
        results["table"] = table
    if "paired" in only:
        paired_modes = [m for m in args.paired_modes.split(",") if m and m != "off"]
        unknown = sorted(set(paired_modes) - set(MODES))
        if unknown:
            p.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
        with tempfile.TemporaryDirectory() as tmp:
            results["paired"] = bench_paired(
                Path(tmp), args.duration, args.paired_rounds, args.paired_rate, paired_modes
            )
        rows = [{"mode": mode, **m} for mode, m in results["paired"]["modes"].items()]
        columns = [
            ("mode", "mode"),
            ("off_server_us_per_req", "off: server CPU us/req"),
            ("server_us_per_req", "mode: server CPU us/req"),
            ("cpu_cost_pct", "CPU/req cost % vs off"),
            ("cpu_cost_iqr", "per-pair cost, IQR %"),
            ("loop_cost_pct", "event loop CPU/req cost %"),
            ("p50_ms_off", "off p50 ms"),
            ("p50_ms", "mode p50 ms"),
            ("errors", "errors"),
        ]
        heading = (
            f"Paired, open loop at {args.paired_rate:g} req/s on each of two servers served at the same time "
            f"(a fresh `off` and a fresh server of the mode every pair, {args.paired_rounds} rounds of "
            f"{args.paired_duration:g} s; cost = median of the per-pair ratios of server CPU per request; "
            "`control` is `off` against `off`):"
        )
        results["paired_table"] = f"{heading}\n\n{markdown_table(rows, columns)}"
        print(results["paired_table"])
    markdown = results.get("table", "")
    if "paired_table" in results:
        markdown = f"{markdown}\n\n{results['paired_table']}" if markdown else results["paired_table"]
    if "wrapper" in results:
        w = results["wrapper"]
        rows = [
            {"what": "metrics only (RPC wrapper, histogram)", "sdk": None, "lean": w["metrics_only_us"]},
            {
                "what": "traces 100 %: spans + OTLP encoding",
                "sdk": w["sdk_traces_100pct_us"],
                "lean": w["lean_traces_100pct_us"],
            },
            {
                "what": "traces 1 % (no caller context)",
                "sdk": w["sdk_traces_1pct_us"],
                "lean": w["lean_traces_1pct_us"],
            },
            {
                "what": f"OTLP encoding alone, per span (lean: the {w.get('lean_encoder', 'native')} encoder)",
                "sdk": w["sdk_encode_us_per_span"],
                "lean": w["lean_encode_us_per_span"],
            },
            {
                "what": "OTLP encoding alone, per span, Python encoder",
                "sdk": None,
                "lean": w.get("lean_python_encode_us_per_span"),
            },
        ]
        heading = "In-process CPU per request, us (one batch span per 8 requests; SDK = the OpenTelemetry SDK's tracer"
        heading += " and encoder, lean = the sidecar's):"
        wrapper_table = markdown_table(rows, [("what", "what"), ("sdk", "SDK us"), ("lean", "lean us")])
        if "metric_points" in w:
            wrapper_table += (
                f"\n\nOne metric collection and its OTLP encoding (every push), {w['metric_points']} points (a profiled"
                f" 64-feature version): {w['metric_collect_encode_ms_min']:.2f} ms CPU (min),"
                f" {w['metric_collect_encode_ms_median']:.2f} ms (median)."
            )
        markdown = f"{markdown}\n\n{heading}\n\n{wrapper_table}" if markdown else f"{heading}\n\n{wrapper_table}"
    if "gpu" in results:
        g = results["gpu"]
        if g.get("gpus"):
            line = f"NVML sampling: {g['gpus']} GPU(s) ({', '.join(g['names'])}), "
            line += f"{g['us_per_sample_all_gpus']} us per sample of all"
        else:
            line = f"NVML sampling: {g.get('note', 'no GPU')}"
        markdown = f"{markdown}\n\n{line}" if markdown else line
    # A GPU-only run must not overwrite the serving and wrapper results of a full run.
    name = args.name or ("telemetry" if only & {"wrapper", "serving", "paired"} else "telemetry-gpu")
    save_results(name, results, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
