"""A traced request's span work on the event loop, in a tight loop: what the C span work saves.

Per request, synchronously and grpc-free, what the served sidecar does with telemetry: the RPC wrapper's
start (metadata tapped, a serialized request), the repository's model attributes, the batcher's queue
time, one batch span per ``--batch`` requests (linked to them), the wrapper's end (the span ended,
encoded and queued by the span queue's sink, exported by its thread to a null exporter) and the call
duration histogram. Modes: ``metrics`` (the wrapper and its histogram, no tracer), ``traces_100pct``,
``traces_1pct``. Thread CPU per request of the loop's thread, the minimum (and median) over ``--blocks``
blocks: the minimum is what the code costs; the rest is this shared machine.

    .venv/bin/python -m bench.request_path
    .venv/bin/python -m bench.request_path --sidecar-from /tmp/before   # another checkout's sidecar

Results: bench/results/request-path.json and .md (``--name``).
"""

from __future__ import annotations

import argparse
import contextvars
import shlex
import statistics
import sys
import time
from pathlib import Path


def measure(mode: str, blocks: int, requests: int, batch: int) -> dict[str, float]:
    from opentelemetry.sdk.resources import Resource

    from bench.bench_telemetry import NullTraceExporter
    from sidecar.protocol.interceptors import _Call
    from sidecar.protocol.registration import CALL_METADATA
    from sidecar.telemetry import catalog, tracing
    from sidecar.telemetry.export import BoundedSpanProcessor, DropCounter
    from sidecar.telemetry.histograms import HistogramSet
    from sidecar.telemetry.lean_tracing import LeanTracerProvider
    from sidecar.telemetry.sampling import decision
    from sidecar.telemetry.spans import batch_span, current_span, record_queue_time

    sampler, ratio = ("parentbased_traceidratio", 0.01) if mode == "traces_1pct" else ("parentbased_always_on", 1.0)
    provider = LeanTracerProvider(decision(sampler, ratio), {"service.name": "bench"})
    processor = BoundedSpanProcessor(NullTraceExporter({"service.name": "bench"}), DropCounter(), 1 << 16, 512, 0.2)
    provider.add_span_processor(processor)
    tracing.activate(provider)
    tracer = None if mode == "metrics" else provider.get_tracer("sidecar.protocol")
    durations = HistogramSet(Resource({})).family(catalog.RPC_DURATION, scale=1e-9)
    call = _Call("inference.GRPCInferenceService/ModelInfer", tracer, durations)
    start_call = getattr(call, "_start_call", call._start)  # the checkout's unary start

    class Context:
        def code(self) -> None:
            return None

        def details(self) -> str:
            return ""

    context, request = Context(), b"\x0a\x03mlp"
    CALL_METADATA.set((("user-agent", "grpc-c++"),))

    def block() -> float:
        t = time.thread_time()
        for _ in range(requests // batch):
            held = []
            for _ in range(batch):
                began = time.monotonic_ns()
                span, token, ctx = start_call(context, request) if tracer is not None else (None, None, context)
                current = current_span()
                if span is not None:
                    span.attributes["model.name"] = "mlp"
                    span.attributes["model.version"] = "1.0.0"
                    record_queue_time(current, 0.0001)
                held.append((span, token, began, ctx, current))
            spans = [h[4] for h in held if h[0] is not None]
            if spans:
                with batch_span("mlp", "1.0.0", spans, batch, "CPUExecutionProvider"):
                    pass
            for span, token, began, ctx, _ in reversed(held):
                call._finish(span, token, began, "OK", None, ctx, request)
        return (time.thread_time() - t) / requests * 1e6

    times = sorted(block() for _ in range(blocks))
    processor.shutdown(10.0)
    tracing.deactivate(provider)
    return {"min_us": round(times[0], 3), "median_us": round(statistics.median(times), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sidecar-from", help="import sidecar from this checkout (its extensions built in place)")
    p.add_argument("--modes", default="metrics,traces_100pct,traces_1pct")
    p.add_argument("--blocks", type=int, default=25)
    p.add_argument("--requests", type=int, default=12_000, help="requests per block")
    p.add_argument("--batch", type=int, default=12, help="requests per batch span")
    p.add_argument("--name", default="request-path")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.sidecar_from:
        sys.path.insert(0, str(Path(args.sidecar_from).resolve()))
    import sidecar
    from bench.report import RESULTS_DIR, machine_info, markdown_table, save_results

    command = shlex.join(["python", "-m", "bench.request_path", *(sys.argv[1:] if argv is None else argv)])
    rows = []
    for mode in [m for m in args.modes.split(",") if m]:
        # a context of its own: the tapped metadata and the spans made current stay in it
        got = contextvars.copy_context().run(measure, mode, args.blocks, args.requests, args.batch)
        rows.append({"mode": mode, **got})
        print(f"{mode}: {got}", flush=True)
    origin = str(Path(sidecar.__file__).resolve().parents[1])
    md = "\n".join(
        [
            f"# A traced request's span work in a tight loop ({time.strftime('%Y-%m-%d %H:%M:%S')})",
            "",
            f"Command: `{command}`; sidecar from `{origin}`. Thread CPU per request, one batch span per "
            f"{args.batch} requests, {args.blocks} blocks of {args.requests:,} requests.",
            "",
            markdown_table(rows, [("mode", "mode"), ("min_us", "min us/req"), ("median_us", "median us/req")]),
        ]
    )
    print(md)
    save_results(
        args.name,
        {"command": command, "sidecar": origin, "machine": machine_info(), "rows": rows},
        md,
        args.out or RESULTS_DIR,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
