"""GPU benchmark: ResNet-50 and a transformer encoder, raw ONNX Runtime vs the sidecar, plus the ingest ceiling.

Meant for one H100 machine (16 cores). For each model, in one session:

1. raw in-process ONNX Runtime on CUDA at batch sizes 1..max without IO binding, ONNX Runtime's
   default options (the ceiling: what a server that receives numpy arrays can reach); then the same
   with the sidecar's cuDNN setting (``--sidecar-conv-search``), and with IO binding, at a few sizes;
2. the ingest ceiling: a bare grpc.aio server (bench/echo_server.py) receiving the same batch-1
   requests (602 KB each for ResNet-50) and answering with the model's real response bytes; with
   ``--servers echo-native`` also the C++ one (bench/native_echo: gRPC's own cost, no Python), the
   ceiling of the sidecar's native front end (``server.front``);
3. the sidecar with batching on (and off, unless ``--servers`` says otherwise), batch-1 clients,
   closed loop at each concurrency (default 1, 16, 64, 256; ``--echo-concurrency`` and
   ``--unbatched-concurrency`` for the other two), load generator in several processes. The unbatched
   sidecar serves a Prometheus endpoint with GPU metrics on: after its last cell the ``hw_gpu_*`` lines
   it exports (NVML, sampled on the sidecar's own thread) go into the results.

``--budget-s`` bounds the whole run: once it is spent, the cells left are skipped (and listed), and
results are written after every model, so a run cut short still leaves its tables.

For every sidecar cell it also records the CPU of the sidecar's threads (the main thread runs the
event loop: gRPC ingest, decoding, batching), so the report says where the time goes; ``--profile``
samples the highest-concurrency batched cell with py-spy (bench/profiling.py) and adds the event
loop's top functions.

    python -m bench.gpu.run_gpu --export                      # on the H100: export (needs torch), then run
    python -m bench.gpu.run_gpu --repository DIR              # models already exported
    python -m bench.gpu.run_gpu --cpu-check                   # tiny models on CPU: checks the pipeline only

Results: bench/results/gpu.json and gpu.md (``--cpu-check``: gpu-cpu-check.*).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import loadgen, servers
from bench.profiling import profile_cell, render_markdown
from bench.raw_onnxruntime import batch_sizes_up_to, make_inputs, make_session
from bench.report import RESULTS_DIR, machine_info, markdown_table, result_row, save_results

RAW_KINDS = {
    "numpy": "numpy in and out, ONNX Runtime's default cuDNN search",
    "numpy_sidecar_search": "numpy in and out, the sidecar's cuDNN search setting",
    "io_binding": "IO binding: inputs copied to the GPU once, outputs left there",
}
LOG_WORDS = ("warm-up", "wanted", "preload_dlls", "front end")  # sidecar log lines the results keep
CONV_MODELS = {"resnet50"}  # where the cuDNN convolution search matters
MODELS = {
    # name: (input name, description)
    "resnet50": ("input", "ResNet-50, FP32 1x3x224x224 per request (602 KB)"),
    "encoder": ("input_ids", "transformer encoder, INT64 token ids 1x128 per request"),
}
GPU_PROVIDERS = "CUDAExecutionProvider,CPUExecutionProvider"


def export(repository: Path, tiny: bool, python: str) -> None:
    cmd = [python, "-m", "bench.gpu.export_models", "--out", str(repository)]
    if tiny:
        cmd.append("--tiny")
    subprocess.run(cmd, check=True, cwd=servers.REPO_ROOT)


def raw_sweep(
    model_path: Path,
    args: argparse.Namespace,
    io_binding: bool,
    workdir: Path,
    batch_sizes: Sequence[int],
    conv_search: str | None = None,
) -> dict[str, Any]:
    tag = f"{'iob' if io_binding else 'numpy'}-{conv_search or 'default'}"
    out = workdir / f"raw-{model_path.parent.parent.name}-{tag}.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.raw_onnxruntime",
        str(model_path),
        "--batch-sizes",
        ",".join(str(b) for b in batch_sizes),
        "--duration",
        str(args.raw_duration),
        "--providers",
        args.providers,
        "--int-high",
        "1000",
        "--json",
        str(out),
    ]
    if io_binding:
        cmd.append("--io-binding")
    if conv_search:
        cmd += ["--cudnn-conv-algo-search", conv_search]
    subprocess.run(cmd, check=True, cwd=servers.REPO_ROOT, timeout=300)
    return json.loads(out.read_text())


def request_and_response(model_path: Path, model: str, providers: Sequence[str]) -> tuple[bytes, bytes, int]:
    """A batch-1 request for ``model`` and the real response bytes; returns (request, response, request size)."""
    session = make_session(model_path, providers)
    feed = make_inputs(session, 1, int_high=1000)
    request = loadgen.make_infer_request(model, feed)
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, feed)
    response = loadgen.make_infer_response(model, dict(zip(names, outputs, strict=True)))
    return request, response, len(request)


def sidecar_settings(args: argparse.Namespace, batching: bool) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "engine.providers": args.providers,
        "batching.enabled": batching,
        "batching.max_batch_size": args.max_batch_size,
        "batching.max_queue_delay_ms": args.max_queue_delay_ms,
        "engine.cudnn_conv_algo_search": args.sidecar_conv_search,
    }  # warm-up sizes: the sidecar's own choice (powers of two where it pads batches)
    if not batching:  # the unbatched sidecar also shows the GPU metrics it exports
        settings["telemetry.gpu_metrics"] = True
        settings["telemetry.metrics_port"] = servers.free_port()
    for item in args.sidecar_setting:
        key, _, value = item.partition("=")
        settings[key] = value
    return settings


def run_cells(
    server: servers.ServerProcess,
    key: str,
    model: str,
    payload: bytes,
    args: argparse.Namespace,
    cells: list[dict[str, Any]],
    concurrency: Sequence[int],
    skipped: dict[str, str],
    profile_dir: Path | None = None,
) -> dict[str, Any] | None:
    """Closed loop at each concurrency; with ``profile_dir``, one more top-concurrency cell under py-spy."""
    for c in concurrency:
        if over_budget(args):
            skipped[f"{key}/{model}/c={c}"] = "over --budget-s"
            continue
        timings_before = servers.model_timings(server.target, model) if not key.startswith("echo") else None
        # CPU of each of the server's threads (by name) over the measured window, "main" = the event loop.
        probes: dict[str, Any] = {"server": server.cpu_seconds}
        for name in servers.thread_cpu(server.pid):
            probes[f"thread:{name}"] = lambda name=name: servers.thread_cpu(server.pid).get(name, 0.0)
        result = loadgen.run(
            server.target,
            payload,
            concurrency=c,
            duration_s=args.duration,
            warmup_s=args.warmup,
            processes=min(args.processes, c),
            channels=args.channels or None,
            cpu_probes=probes,
            timeout_s=60,
            labels={"server": key, "model": model},
        )
        timings_after = servers.model_timings(server.target, model) if timings_before else None
        mean_batch = None
        if timings_before and timings_after and timings_after["executions"] > timings_before["executions"]:
            mean_batch = (timings_after["inferences"] - timings_before["inferences"]) / (
                timings_after["executions"] - timings_before["executions"]
            )
        busy = {
            k.removeprefix("thread:"): round(v / args.duration, 3) for k, v in result.cpu_s.items() if k != "server"
        }
        busy = {k: v for k, v in sorted(busy.items(), key=lambda kv: -kv[1]) if v >= 0.01}
        row = result_row(result)
        row.update(
            server=key,
            model=model,
            mean_batch=mean_batch,
            event_loop_us=result.cpu_us_per_request("thread:main"),
            event_loop_busy=busy.get("main", 0.0),
            thread_cores=busy,
        )
        cells.append(row)
        extra = f" mean batch {mean_batch:.1f}" if mean_batch else ""
        if timings_before and timings_after:
            t = row["timings"] = servers.timings_between(timings_before, timings_after)
            extra += (
                f" | in server {t['request_ms']:.1f} ms (queue {t['queue_ms']:.1f}), per batch merge "
                f"{t['merge_ms_per_batch']:.1f} ms engine {t['engine_ms_per_batch']:.1f} ms, sizes {t['batch_sizes']}"
            )
        print(
            f"[{key}] {model} {result.summary()}{extra} event loop busy {row['event_loop_busy']:.0%}",
            flush=True,
        )
    if profile_dir is None or over_budget(args):
        return None
    c = max(concurrency)
    return profile_cell(
        server,
        payload,
        profile_dir / f"{args.name}-pyspy-{model}-c{c}.txt",
        concurrency=c,
        duration_s=args.duration,
        warmup_s=args.warmup,
        processes=min(args.processes, c),
        label=f"[{key}] {model}",
        timeout_s=60,
        top=args.profile_top,
        native=args.profile_native,
        executable=args.py_spy,
    )


def over_budget(args: argparse.Namespace) -> bool:
    return time.monotonic() - args.began > args.budget_s


def gpu_metric_lines(port: int) -> list[str]:
    """The ``hw_gpu_*`` samples on the sidecar's Prometheus endpoint (empty when there are none)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError as exc:
        return [f"# scrape failed: {exc}"]
    return [line for line in text.splitlines() if line.startswith(("hw_gpu_", "hw_power", "hw_temperature"))]


def gpu_info() -> dict[str, Any]:
    """The GPU's name and driver through NVML, or nothing."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(handle)
            driver = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return {}
    text = [v.decode() if isinstance(v, bytes) else str(v) for v in (name, driver)]
    return {"gpu": text[0], "gpu_driver": text[1]}


def best_raw(raw: dict[str, Any]) -> float:
    return max((r["rows_per_s"] for r in raw.get("rows", [])), default=math.nan)


def diagnosis(rows: Sequence[dict[str, Any]], target: dict[str, Any], request_bytes: int) -> str:
    """Which limit the sidecar hit first, from the measured cells: the model, the ingest, or the sidecar."""
    goal = 0.7 * target["raw_best_rows_per_s"]
    echo = max((c for c in rows if c["server"] == "echo"), key=lambda c: c["rps"], default=None)
    side = max((c for c in rows if c["server"] == "sidecar-batching"), key=lambda c: c["rps"], default=None)
    if echo is None or side is None:
        return "Diagnosis: needs both the echo and the batched sidecar cells."
    kb = request_bytes / 1e3
    ingest = (
        f"One bare grpc.aio process ingests {echo['rps']:,.0f} req/s of {kb:,.0f} KB "
        f"({echo['server_us']:,.0f} us of CPU each, event loop busy {echo['event_loop_busy']:.2f} cores)"
    )
    native = max((c for c in rows if c["server"] == "echo-native"), key=lambda c: c["rps"], default=None)
    if native is not None:
        ingest += (
            f"; the C++ echo (the native front end's ceiling) {native['rps']:,.0f} req/s "
            f"({native['server_us']:,.0f} us of CPU each)"
        )
    if side["rps"] >= goal:
        return f"Diagnosis: the target is met. {ingest}."
    if max(echo["rps"], native["rps"] if native else 0.0) < goal:
        return (
            f"Diagnosis: ingest is the first limit. {ingest}, below the {goal:,.0f} req/s the target needs, so "
            "no single-process server can reach it whatever its batcher does. The sidecar's event loop "
            f"was busy {side['event_loop_busy']:.2f} cores at {side['load']} ({side['event_loop_us']:,.0f} us "
            "per request). Design change: several ingest processes (SO_REUSEPORT on the same port, one event "
            "loop each) passing requests through shared memory to the one process that owns the GPU session "
            "and the batcher, so ingest scales with cores while batches still form in one place: the sidecar's "
            "server.ingest_workers (measure it with --sidecar-setting server.ingest_workers=N --channels 4)."
        )
    return (
        f"Diagnosis: the sidecar itself is the limit. {ingest}, enough for the target, but the sidecar served "
        f"{side['rps']:,.0f} req/s with its event loop busy {side['event_loop_busy']:.2f} cores "
        f"({side['event_loop_us']:,.0f} us per request vs {echo['event_loop_us']:,.0f} for the echo server): "
        "see the profile for where the event loop's time goes."
    )


def render(meta: dict[str, Any], args: argparse.Namespace, data: dict[str, Any]) -> str:
    lines = [f"# GPU benchmark ({meta['started']})", ""]
    if args.cpu_check:
        lines += [
            "**CPU pipeline check with tiny models: these are not GPU numbers and say nothing about performance.**",
            "",
        ]
    lines += [
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine'].get('gpu', 'no GPU')} (driver {meta['machine'].get('gpu_driver', '-')}), "
        f"{meta['machine'].get('cpu_model', '?')}, {meta['machine']['cpus']} CPUs, "
        f"onnxruntime {meta['machine'].get('onnxruntime', '?')}, providers {args.providers}. "
        f"Batch-1 requests, closed loop, {args.duration:g} s per cell after {args.warmup:g} s warm-up, load "
        f"generator in up to {args.processes} processes; sidecar batching max batch {args.max_batch_size}, "
        f"max queue delay {args.max_queue_delay_ms:g} ms.",
        "",
    ]
    for model, entry in data["models"].items():
        lines += [f"## {model}: {MODELS[model][1]}", ""]
        lines += [f"Request {entry['request_bytes']:,} bytes; sidecar provider: {entry.get('provider') or '?'}.", ""]
        for kind, words in RAW_KINDS.items():
            raw = entry["raw"].get(kind)
            if raw:
                lines += [f"Raw ONNX Runtime ({raw['provider']}, {words}):", ""]
                lines.append(
                    markdown_table(
                        raw["rows"],
                        (("batch", "batch"), ("rows_per_s", "rows/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")),
                    )
                )
                lines.append("")
        rows = [c for c in data["cells"] if c["model"] == model]
        if rows:
            lines += ["Servers (batch-1 requests):", ""]
            lines.append(
                markdown_table(
                    rows,
                    (
                        ("server", "server"),
                        ("load", "load"),
                        ("rps", "req/s = rows/s"),
                        ("p50_ms", "p50 ms"),
                        ("p99_ms", "p99 ms"),
                        ("errors", "errors"),
                        ("server_us", "server CPU us/req"),
                        ("event_loop_us", "event loop CPU us/req"),
                        ("event_loop_busy", "event loop busy (cores)"),
                        ("mean_batch", "mean batch"),
                    ),
                )
            )
            lines.append("")
            top = max((c for c in rows if c["server"] == "sidecar-batching"), key=lambda c: c["rps"], default=None)
            if top is not None:
                cores = ", ".join(f"{k} {v:.2f}" for k, v in top["thread_cores"].items())
                lines += [f"Sidecar threads at {top['load']} (cores busy): {cores}.", ""]
        for key, log_lines in entry.get("sidecar_log", {}).items():
            if log_lines:
                lines += [f"{key} log (loading):", "", "```", *log_lines, "```", ""]
        if entry.get("gpu_metrics"):
            lines += [
                "GPU metrics the unbatched sidecar exported on its Prometheus endpoint after its last cell "
                "(NVML, sampled on the sidecar's own thread):",
                "",
                "```",
                *entry["gpu_metrics"],
                "```",
                "",
            ]
        target = entry.get("target")
        if target:
            lines += [
                f"Target: sidecar (batching) rows/s at c={target['concurrency']} vs best raw rows/s without IO "
                f"binding: {target['sidecar_rows_per_s']:,.0f} / {target['raw_best_rows_per_s']:,.0f} = "
                f"{target['ratio']:.0%} (goal >= 70%: {'met' if target['ratio'] >= 0.7 else 'NOT met'}).",
                "",
            ]
            lines += [diagnosis(rows, target, entry["request_bytes"]), ""]
        prof = entry.get("profile")
        if prof and "error" in prof:
            lines += [f"Profile: not taken ({prof['error']}).", ""]
        elif prof:
            lines += [
                f"Sidecar (batching) profile: an extra cell at {prof['load']} with py-spy attached "
                f"({prof['rps_while_profiled']:,.0f} req/s while profiled; not in the table above).",
                "",
                render_markdown(prof),
                "",
            ]
    if data.get("skipped"):
        lines += ["## Skipped", "", *[f"- {k}: {v}" for k, v in data["skipped"].items()], ""]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.run_gpu", description=__doc__.splitlines()[0])
    p.add_argument("--repository", default="bench/.models/gpu-repository", help="exported models (sidecar layout)")
    p.add_argument("--export", action="store_true", help="export the models first (needs torch)")
    p.add_argument("--torch-python", default=sys.executable, help="Python with torch, for --export")
    p.add_argument("--cpu-check", action="store_true", help="tiny models on the CPU, short cells: pipeline check")
    p.add_argument("--models", default="resnet50,encoder")
    p.add_argument(
        "--servers", default="echo,sidecar-batching,sidecar", help="echo, echo-native, sidecar-batching, sidecar"
    )
    p.add_argument("--concurrency", default="1,16,64,256", help="for the batched sidecar")
    p.add_argument("--echo-concurrency", default="64,256")
    p.add_argument("--unbatched-concurrency", default="256")
    p.add_argument("--raw-batch-sizes", default="", help="the raw sweep's (default: powers of two to the max)")
    p.add_argument("--raw-extra-batch-sizes", default="1,32,128", help="for the other two raw sweeps")
    p.add_argument("--sidecar-conv-search", default="HEURISTIC", help="engine.cudnn_conv_algo_search")
    p.add_argument("--budget-s", type=float, default=1e9, help="skip what is left after this many seconds")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--processes", type=int, default=4, help="load generator processes (at most the concurrency)")
    p.add_argument("--channels", type=int, default=0, help="connections per load generator process (0: one per 64)")
    p.add_argument("--providers", default=GPU_PROVIDERS)
    p.add_argument("--max-batch-size", type=int, default=128)
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    p.add_argument("--raw-duration", type=float, default=2.0)
    p.add_argument("--sidecar-setting", action="append", default=[], help="extra sidecar KEY=VALUE")
    p.add_argument("--profile", action="store_true", help="py-spy the batched sidecar at the top concurrency")
    p.add_argument("--profile-native", action="store_true", help="py-spy --native (C/C++ frames too)")
    p.add_argument("--profile-top", type=int, default=15)
    p.add_argument("--profile-raw-dir", help="keep py-spy's raw samples here (default: dropped with the work folder)")
    p.add_argument("--py-spy", help="path of the py-spy executable (default: PATH, then beside this Python)")
    p.add_argument("--name", default=None, help="results file stem (default gpu, or gpu-cpu-check)")
    p.add_argument("--out", default=str(RESULTS_DIR))
    args = p.parse_args(argv)
    if args.cpu_check:
        args.providers = "CPUExecutionProvider"
        args.concurrency = args.echo_concurrency = args.unbatched_concurrency = "1,16"
        args.raw_extra_batch_sizes = "1,8"
        args.duration, args.warmup, args.raw_duration = 1.5, 0.5, 0.3
        args.processes = 1
        args.max_batch_size = 8
        args.export = True
        args.repository = args.repository if args.repository != "bench/.models/gpu-repository" else ""
    args.models = [m for m in args.models.split(",") if m]
    args.servers = [s for s in args.servers.split(",") if s]
    for name in ("concurrency", "echo_concurrency", "unbatched_concurrency", "raw_extra_batch_sizes"):
        setattr(args, name, [int(c) for c in getattr(args, name).split(",") if c])
    sizes = [int(b) for b in args.raw_batch_sizes.split(",") if b]
    args.raw_batch_sizes = sizes or batch_sizes_up_to(args.max_batch_size)
    args.name = args.name or ("gpu-cpu-check" if args.cpu_check else "gpu")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    command = shlex.join(["python", "-m", "bench.gpu.run_gpu", *(sys.argv[1:] if argv is None else argv)])
    workdir = Path(tempfile.mkdtemp(prefix="sidecar-gpu-bench-"))
    repository = Path(args.repository) if args.repository else workdir / "repository"
    providers = [p for p in args.providers.split(",") if p]
    if "CUDAExecutionProvider" in providers:
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
    if args.export:
        export(repository, tiny=args.cpu_check, python=args.torch_python)
    data: dict[str, Any] = {"models": {}, "cells": [], "skipped": {}}
    args.began = began = time.monotonic()

    def save() -> None:
        meta = {
            "started": started,
            "command": command,
            "elapsed_s": round(time.monotonic() - began, 1),
            "machine": {**machine_info(), **gpu_info()},
            "cpu_check": args.cpu_check,
        }
        settings = {k: v for k, v in vars(args).items() if k not in ("out", "began")}
        json_path, md_path = save_results(
            args.name, {**meta, "settings": settings, **data}, render(meta, args, data), args.out
        )
        print(f"wrote {json_path} and {md_path}", flush=True)

    try:
        for model in args.models:
            path = repository / model / "1.0.0" / "model.onnx"
            if not path.exists():
                data["skipped"][model] = f"{path} not found (run with --export, or bench.gpu.export_models)"
                continue
            if over_budget(args):
                data["skipped"][model] = "over --budget-s"
                continue
            entry: dict[str, Any] = {"raw": {}}
            data["models"][model] = entry
            print(f"[raw onnxruntime] {model}", flush=True)
            entry["raw"]["numpy"] = raw_sweep(path, args, False, workdir, args.raw_batch_sizes)
            if "CUDAExecutionProvider" in providers and args.raw_extra_batch_sizes:
                extra = args.raw_extra_batch_sizes
                if args.sidecar_conv_search and model in CONV_MODELS:
                    entry["raw"]["numpy_sidecar_search"] = raw_sweep(
                        path, args, False, workdir, extra, args.sidecar_conv_search
                    )
                entry["raw"]["io_binding"] = raw_sweep(path, args, True, workdir, extra)
            request, response, entry["request_bytes"] = request_and_response(path, model, providers)
            response_file = workdir / f"response-{model}.bin"
            response_file.write_bytes(response)
            if "echo" in args.servers:
                with servers.start_echo(response_file=response_file, name=f"echo-{model}") as echo:
                    run_cells(echo, "echo", model, request, args, data["cells"], args.echo_concurrency, data["skipped"])
            if "echo-native" in args.servers:
                try:
                    native_echo = servers.start_native_echo(response_file=response_file, name=f"echo-native-{model}")
                except Exception as exc:
                    data["skipped"][f"echo-native/{model}"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
                    print(f"[echo-native] could not start: {exc}", flush=True)
                else:
                    with native_echo:
                        run_cells(
                            native_echo,
                            "echo-native",
                            model,
                            request,
                            args,
                            data["cells"],
                            args.echo_concurrency,
                            data["skipped"],
                        )
            for key in ("sidecar-batching", "sidecar"):
                if key not in args.servers or over_budget(args):
                    continue
                settings = sidecar_settings(args, key == "sidecar-batching")
                try:
                    server = servers.start_sidecar(
                        repository,
                        models=[model],
                        settings=settings,
                        name=key,
                        log_dir=workdir / "logs",
                        startup_timeout_s=150,
                        extra_args=["--log-level", "INFO"],
                    )
                except Exception as exc:
                    data["skipped"][f"{key}/{model}"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
                    print(f"[{key}] could not start: {exc}", flush=True)
                    continue
                with server:
                    entry["provider"] = servers.model_provider(server.target, model)
                    batched = key == "sidecar-batching"
                    kept = Path(args.profile_raw_dir) if args.profile_raw_dir else workdir
                    kept.mkdir(parents=True, exist_ok=True)
                    profile_dir = kept if (args.profile and batched) else None
                    concurrency = args.concurrency if batched else args.unbatched_concurrency
                    prof = run_cells(
                        server, key, model, request, args, data["cells"], concurrency, data["skipped"], profile_dir
                    )
                    if prof is not None:
                        entry["profile"] = prof
                    if "telemetry.metrics_port" in settings:
                        entry["gpu_metrics"] = gpu_metric_lines(settings["telemetry.metrics_port"])
                entry.setdefault("sidecar_log", {})[key] = [
                    line[:400]
                    for line in server.log_path.read_text(errors="replace").splitlines()
                    if any(word in line for word in LOG_WORDS)
                ]
            batched = [c for c in data["cells"] if c["model"] == model and c["server"] == "sidecar-batching"]
            if batched:
                top = max(batched, key=lambda c: int(c["load"].removeprefix("c=")))
                raw_best = best_raw(entry["raw"]["numpy"])
                entry["target"] = {
                    "concurrency": int(top["load"].removeprefix("c=")),
                    "sidecar_rows_per_s": top["rows_per_s"],
                    "raw_best_rows_per_s": raw_best,
                    "ratio": top["rows_per_s"] / raw_best if raw_best else math.nan,
                }
            save()
        save()
    finally:
        import shutil

        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
