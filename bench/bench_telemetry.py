"""What telemetry costs the serving path, measured against the issue's targets.

1. **serving**: one ``sidecar serve`` process per mode (MLP 64-256-256-10, dynamic batching on), closed
   loop at concurrency 64 (bench/loadgen.py in one worker process), modes interleaved round by round
   on the same machine and the median taken:

   - ``off``: ``telemetry.enabled = false`` (the baseline);
   - ``metrics``: the default: metrics on, Prometheus endpoint, no traces;
   - ``full``: traces sampled at 100 % and metrics, both exported over OTLP/gRPC every second to a
     null collector in this process (it accepts the OTLP Export calls without decoding them: a real
     collector runs elsewhere, its CPU is not the sidecar's cost);
   - ``sampled1``: the same with ``parentbased_traceidratio`` at 1 %;
   - ``collector_down``: ``full`` with the collector unreachable (spans dropped and counted).

   Targets: ``full`` costs at most 10 % of req/s against ``off``; ``sampled1`` at most 3 %.
2. **wrapper**: in-process cost per call of the RPC wrapper (``sidecar.protocol.interceptors``) and of
   the statistics sink, with a grpc-free fake context: metrics only, traces 100 %, traces 1 %.
3. **gpu** (``--gpu``): time of one NVML sample of every GPU (``GpuSampler.sample``), on the sampler's
   own thread in production; reports that there is no GPU where there is none.

    .venv/bin/python -m bench.bench_telemetry                      # about 3 minutes
    .venv/bin/python -m bench.bench_telemetry --duration 5 --rounds 1 --only wrapper,serving --gpu

Results: bench/results/telemetry.json and telemetry.md. On a shared 2-core machine the serving numbers
are noisy: compare modes within one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import loadgen, servers
from bench.report import machine_info, markdown_table, save_results
from sidecar.testing.models import mlp_model, write_version

TARGET_FULL_PCT = 10.0
TARGET_SAMPLED_PCT = 3.0
MODES = ("off", "metrics", "full", "sampled1", "collector_down")


def mode_settings(mode: str, otlp_endpoint: str, dead_endpoint: str) -> dict[str, Any]:
    base: dict[str, Any] = {"telemetry.gpu_metrics": True, "telemetry.metrics_port": servers.free_port()}
    if mode == "off":
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
    if mode == "sampled1":
        exported.update({"telemetry.sampler": "parentbased_traceidratio", "telemetry.sampler_arg": "0.01"})
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


def bench_serving(workdir: Path, duration_s: float, rounds: int, concurrency: int, modes: list[str]) -> dict:
    repo = workdir / "repo"
    write_version(repo, "mlp", "1.0.0", mlp_model)
    payload = loadgen.make_infer_request("mlp", {"input": np.random.default_rng(0).random((1, 64), np.float32)})
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    with NullCollector() as otlp:
        dead = f"http://127.0.0.1:{servers.free_port()}"
        for r in range(rounds):
            for mode in modes:
                settings = mode_settings(mode, otlp.endpoint, dead)
                with servers.start_sidecar(repo, models=["mlp"], settings=settings, name=f"sidecar-{mode}") as srv:
                    result = loadgen.run(
                        srv.target,
                        payload,
                        concurrency=concurrency,
                        duration_s=duration_s,
                        warmup_s=1.0,
                        cpu_probes={"server": srv.cpu_seconds},
                        labels={"mode": mode, "round": r},
                    )
                runs[mode].append(result.to_dict())
                print(f"round {r} {mode:15s} {result.summary()}", flush=True)
        received = {"export_calls": otlp.requests, "bytes": otlp.bytes}
    summary = {}
    for mode, results in runs.items():
        summary[mode] = {
            "rps": statistics.median(x["rps"] for x in results),
            "p99_ms": statistics.median(x["latency_ms"].get("p99", float("nan")) for x in results),
            "server_us_per_req": statistics.median(
                x["cpu_us_per_request"].get("server") or float("nan") for x in results
            ),
            "errors": sum(x["errors"] for x in results),
        }
    base = summary.get("off", {}).get("rps")
    for s in summary.values():
        s["rps_cost_pct"] = round(100.0 * (1 - s["rps"] / base), 2) if base else None
    return {"modes": summary, "runs": runs, "collector": received}


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


def bench_wrapper(n: int = 50_000) -> dict[str, float]:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from sidecar.protocol.interceptors import observed
    from sidecar.telemetry import catalog
    from sidecar.telemetry.export import BoundedSpanProcessor, DropCounter
    from sidecar.telemetry.histograms import HistogramSet
    from sidecar.telemetry.model_metrics import ModelHistograms, VersionMetrics
    from sidecar.telemetry.sampling import configured_sampler

    class Servicer:
        async def ModelInfer(self, request: Any, context: Any) -> int:
            return 1

    class NullExporter:
        def export(self, spans: Any) -> Any:
            from opentelemetry.sdk.trace.export import SpanExportResult

            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    hists = HistogramSet(Resource({}))
    durations = hists.family(catalog.RPC_DURATION, scale=1e-9)
    request = type("Req", (), {"model_name": "mlp", "model_version": ""})()
    ctx = _Context((("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),))
    ctx_unsampled = _Context(())
    out: dict[str, float] = {}

    async def loop(fn: Any, context: Any) -> float:
        # process CPU time: includes the span export thread's work, and not other processes' noise
        t = time.process_time()
        for _ in range(n):
            await fn(request, context)
        return (time.process_time() - t) / n * 1e6

    async def main() -> None:
        plain = Servicer().ModelInfer
        out["no_wrapper_us"] = await loop(plain, ctx)
        out["metrics_only_us"] = (
            await loop(observed(Servicer(), "s", None, durations).ModelInfer, ctx) - out["no_wrapper_us"]
        )
        for name, sampler, context in (
            ("traces_100pct_us", configured_sampler("parentbased_always_on", 1.0), ctx),
            ("traces_1pct_us", configured_sampler("parentbased_traceidratio", 0.01), ctx_unsampled),
        ):
            provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
            processor = BoundedSpanProcessor(NullExporter(), DropCounter(), 1 << 20, 512, 0.2)
            provider.add_span_processor(processor)
            fn = observed(Servicer(), "s", provider.get_tracer("b"), durations).ModelInfer
            out[name] = await loop(fn, context) - out["no_wrapper_us"]
            t = time.process_time()
            processor.shutdown(30.0)  # what was still queued: exported now, its CPU counted too
            out[name] += (time.process_time() - t) / n * 1e6

    asyncio.run(main())
    mv = type("MV", (), {"name": "mlp", "version_str": "1.0.0"})()
    sink = VersionMetrics(mv, ModelHistograms(hists))
    t = time.process_time()
    for _ in range(n):
        sink.request(True, 1_000_000, 1)
        sink.queue(200_000)
    out["sink_per_request_us"] = (time.process_time() - t) / n * 1e6
    return {k: round(v, 2) for k, v in out.items()}


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
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--only", default="wrapper,serving", help="comma list of wrapper, serving")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--gpu", action="store_true", help="also time NVML sampling")
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
            results["serving"] = bench_serving(
                Path(tmp), args.duration, args.rounds, args.concurrency, args.modes.split(",")
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
            ("p99_ms", "p99 ms"),
            ("server_us_per_req", "server CPU us/req"),
            ("errors", "errors"),
            ("target", "target"),
        ]
        table = markdown_table(rows, columns)
        print(table)
        results["table"] = table
    save_results("telemetry", results, results.get("table", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
