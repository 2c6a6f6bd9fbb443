"""Benchmark reports: Markdown tables, JSON files under bench/results/, and where a result came from."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.loadgen import Result

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table from dict rows; ``columns`` are (key, heading); floats get sensible rounding."""

    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if isinstance(v, float):
            if abs(v) >= 100:
                return f"{v:,.0f}"
            if abs(v) >= 10:
                return f"{v:.1f}"
            return f"{v:.2f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    head = "| " + " | ".join(h for _, h in columns) + " |"

    def numeric(key: str) -> bool:
        values = [r.get(key) for r in rows if r.get(key) is not None]
        return bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)

    rule = "|" + "|".join("---:" if numeric(k) else "---" for k, _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def result_row(result: Result, **extra: Any) -> dict[str, Any]:
    """A flat dict of the usual table columns for one result (labels included)."""
    lat = result.latency_ms
    row: dict[str, Any] = dict(result.labels)
    row.update(
        mode=result.mode,
        load=f"c={result.concurrency}" if result.mode == "closed" else f"{result.rate_per_s:g}/s",
        rps=result.rps,
        rows_per_s=result.rows_per_s,
        p50_ms=lat.get("p50"),
        p95_ms=lat.get("p95"),
        p99_ms=lat.get("p99"),
        max_ms=lat.get("max"),
        errors=result.errors + result.dropped,
        client_us=result.client_cpu_us_per_request,
        server_us=result.cpu_us_per_request("server"),
    )
    row.update(extra)
    return row


# What a server delivered in one cell: latency percentiles, errors, and its CPU per request.
OUTCOME_COLUMNS: tuple[tuple[str, str], ...] = (
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("max_ms", "max ms"),
    ("errors", "errors"),
    ("server_us", "server CPU us/req"),
)

STANDARD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("load", "load"),
    ("rps", "req/s"),
    ("rows_per_s", "rows/s"),
    *OUTCOME_COLUMNS,
    ("client_us", "client CPU us/req"),
)


def save_results(
    name: str,
    payload: Mapping[str, Any],
    markdown: str,
    results_dir: Path | str = RESULTS_DIR,
) -> tuple[Path, Path]:
    """Write ``<results_dir>/<name>.json`` and ``<name>.md``; returns both paths."""
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    md_path = out / f"{name}.md"
    json_path.write_text(json.dumps(_clean(payload), indent=2, default=_json_default, allow_nan=False) + "\n")
    md_path.write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    return json_path, md_path


def _clean(value: Any) -> Any:
    """NaN and infinities become null, so the JSON is valid for every reader."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Result):
        return _clean(value.to_dict())
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Result):
        return value.to_dict()
    if isinstance(value, np.generic):
        return _clean(value.item())
    raise TypeError(f"cannot serialise {type(value).__name__}")


def machine_info() -> dict[str, Any]:
    """Where a result came from: CPU count and model, Python and library versions."""
    import platform

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "grpcio": grpc.__version__,
        "numpy": np.__version__,
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    return info
