"""How far gRPC ingest scales with processes: the design change the GPU results call for, measured.

One grpc.aio process ingests fewer 602 KB ResNet-50 requests a second than 70 % of what ONNX Runtime
runs on an H100 (bench/gpu/run_gpu.py; README "GPU"). The way past that is several ingest processes
on one port. This benchmark measures that ceiling directly: K bare grpc.aio echo servers
(``bench.echo_server``, the same server run_gpu's ingest column uses) bound to the same port, gRPC's
``SO_REUSEPORT`` spreading the load generator's connections over them, for K = 1, 2, 4, 8, with the
same batch-1 request (random float32 1x3x224x224 by default) and a response of the model's output size
(1x1000 float32). Per K: requests/s, latency, the servers' CPU per request (all K together) and how
evenly the connections spread (the busiest process's share of the servers' CPU).

It needs no model and no GPU (only the sidecar's gRPC dependencies), so it runs anywhere; the numbers
that matter come from the GPU machine, where the load generator has cores to spare.

    python -m bench.gpu.ingest_scaling                                  # K = 1,2,4,8, c=256
    python -m bench.gpu.ingest_scaling --servers 1,2 --concurrency 64 --processes 1 --duration 2

Results: bench/results/ingest-scaling.json and .md (``--name``).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import loadgen, servers
from bench.report import RESULTS_DIR, machine_info, markdown_table, save_results


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.split("x"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="1,2,4,8", help="numbers of ingest processes on the one port")
    p.add_argument("--input-shape", default="1x3x224x224", help="float32 request tensor (ResNet-50's image)")
    p.add_argument("--output-shape", default="1x1000", help="float32 response tensor")
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--processes", type=int, default=8, help="load generator processes")
    p.add_argument("--channels", type=int, default=4, help="connections per load generator process")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.5)
    p.add_argument("--parse", action="store_true", help="echo servers parse each request (protobuf)")
    p.add_argument("--name", default="ingest-scaling")
    p.add_argument("--out", default=str(RESULTS_DIR))
    args = p.parse_args(argv)
    args.servers = [int(k) for k in args.servers.split(",") if k]
    return args


def _start_group(k: int, response_file: Path, parse: bool, log_dir: Path) -> list[servers.ServerProcess]:
    """K echo servers on one port. Each start waits for a ready answer from the port, which may come
    from one started before it, so each is then checked to have bound (it logs "listening")."""
    port = servers.free_port()
    group: list[servers.ServerProcess] = []
    try:
        for i in range(k):
            group.append(
                servers.start_echo(
                    response_file=response_file,
                    parse=parse,
                    port=port,
                    name=f"echo{k}-{i}",
                    log_dir=log_dir,
                    reuse_port=True,
                )
            )
        deadline = time.monotonic() + 30
        while not all("listening" in s.log_tail() for s in group):
            failed = [s for s in group if s.proc is not None and s.proc.poll() is not None]
            if failed or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{(failed or group)[0].name} did not bind port {port}:\n{(failed or group)[0].log_tail()}"
                )
            time.sleep(0.1)
    except BaseException:
        for s in group:
            s.stop()
        raise
    return group


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "bench.gpu.ingest_scaling", *(sys.argv[1:] if argv is None else argv)])
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    work = Path(tempfile.mkdtemp(prefix="sidecar-ingest-"))
    rng = np.random.default_rng(0)
    request = loadgen.make_infer_request("resnet50", {"input": rng.random(_shape(args.input_shape), dtype=np.float32)})
    response = loadgen.make_infer_response(
        "resnet50", {"output": rng.random(_shape(args.output_shape), dtype=np.float32)}
    )
    response_file = work / "response.bin"
    response_file.write_bytes(response)
    rows: list[dict[str, Any]] = []
    for k in args.servers:
        group = _start_group(k, response_file, args.parse, work / "logs")
        with contextlib.ExitStack() as stack:
            for s in group:
                stack.callback(s.stop)
            before = [s.cpu_seconds() for s in group]
            result = loadgen.run(
                group[0].target,
                request,
                concurrency=args.concurrency,
                duration_s=args.duration,
                warmup_s=args.warmup,
                processes=args.processes,
                channels=args.channels,
                cpu_probes={"servers": lambda g=group: sum(s.cpu_seconds() for s in g)},
            )
            used = [s.cpu_seconds() - b for s, b in zip(group, before, strict=True)]
        total = sum(used) or float("nan")
        row = {
            "servers": k,
            "rps": result.rps,
            "p50_ms": result.latency_ms["p50"],
            "p99_ms": result.latency_ms["p99"],
            "errors": result.errors,
            "server_cpu_us": result.cpu_us_per_request("servers"),
            "client_cpu_us": result.client_cpu_us_per_request,
            "busiest_share": max(used) / total,
        }
        rows.append(row)
        print(
            f"[ingest] {k} process(es): {row['rps']:,.0f} req/s p50 {row['p50_ms']:.1f} ms p99 {row['p99_ms']:.1f} ms "
            f"errors {row['errors']} servers {row['server_cpu_us']:,.0f} us/req busiest {row['busiest_share']:.0%}",
            flush=True,
        )
    base = rows[0]["rps"] if rows else float("nan")
    for row in rows:
        row["vs_one"] = row["rps"] / base
    info = machine_info()
    md = [
        f"# Ingest scaling: bare grpc.aio echo processes on one port ({started})",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {info.get('cpus')} CPUs, {info.get('cpu_model', '')}, Python {info.get('python')}. "
        f"Request {len(request):,} bytes (float32 {args.input_shape}), response {len(response):,} bytes; "
        f"closed loop c={args.concurrency}, load generator in {args.processes} processes x {args.channels} "
        f"connections, {args.duration:g} s per cell after {args.warmup:g} s; servers "
        f"{'parse each request' if args.parse else 'answer fixed bytes'}.",
        "",
        markdown_table(
            rows,
            [
                ("servers", "ingest processes"),
                ("rps", "req/s"),
                ("vs_one", "x one process"),
                ("p50_ms", "p50 ms"),
                ("p99_ms", "p99 ms"),
                ("errors", "errors"),
                ("server_cpu_us", "servers' CPU us/req"),
                ("client_cpu_us", "client CPU us/req"),
                ("busiest_share", "busiest process's CPU share"),
            ],
        ),
        "",
    ]
    save_results(
        args.name,
        {"command": command, "started": started, "machine": info, "rows": rows, "args": vars(args)},
        "\n".join(md),
        args.out,
    )
    print(f"wrote {Path(args.out) / args.name}.json and .md", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
