"""``sidecar profile`` and ``sidecar status``.

    sidecar profile --model-repository DIR --model NAME --version V --data FILE [--bins 10]
    sidecar status [MODEL] [--version V] [--all] [--control HOST:PORT] [--token T]

``profile`` writes ``DIR/NAME/V/reference_profile.json`` (see ``sidecar.monitoring.profile``); a
running sidecar picks it up when it (re)loads that version. ``status`` prints every monitored
version's drift and data-quality report and the active alerts, then the routing status, from a
running sidecar's control API.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from sidecar.errors import SidecarError

TOKEN_ENV = "SIDECAR_CONTROL_TOKEN"


def add_monitoring_parsers(sub: argparse._SubParsersAction) -> None:
    from sidecar.config import DEFAULT_CONTROL  # not the client module: gRPC must not load yet
    from sidecar.monitoring.build import DEFAULT_BINS, DEFAULT_CATEGORICAL_MAX_DISTINCT, DEFAULT_MAX_CATEGORIES

    p = sub.add_parser(
        "profile",
        help="build a model version's reference profile from its training data (for drift monitoring)",
        description="Read training data (.npy, .npz, .csv with a header, or .parquet with pyarrow), run the model "
        "version on it with the "
        "serving engine, and write <repository>/<model>/<version>/reference_profile.json: per feature quantile "
        "edges, reference bin counts, min/max, missing values; category frequencies; predicted classes and "
        "confidence.",
    )
    p.add_argument("--model-repository", required=True, help="model repository folder")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--version", required=True, help="version folder, e.g. 1.0.0")
    p.add_argument(
        "--data", required=True, help="training data: .npy, .npz (arrays by input name), .csv or .parquet (pyarrow)"
    )
    p.add_argument("--bins", type=int, default=DEFAULT_BINS, help=f"quantile bins per numeric feature ({DEFAULT_BINS})")
    p.add_argument(
        "--max-categories",
        type=int,
        default=DEFAULT_MAX_CATEGORIES,
        help=f"categories kept per categorical feature; the rest are 'other' ({DEFAULT_MAX_CATEGORIES})",
    )
    p.add_argument(
        "--categorical-max-distinct",
        type=int,
        default=DEFAULT_CATEGORICAL_MAX_DISTINCT,
        help="integer columns with at most this many distinct values are categorical "
        f"({DEFAULT_CATEGORICAL_MAX_DISTINCT})",
    )
    p.add_argument("--output", default=None, help="write the profile here instead of beside the model")

    s = sub.add_parser("status", help="drift, data quality and alerts of a running sidecar (and its routing)")
    s.add_argument("model", nargs="?", default="", help="only this model")
    s.add_argument("--version", default="", help="only this version")
    s.add_argument("--all", action="store_true", help="every feature, not only those that warn or alert")
    s.add_argument("--control", default=DEFAULT_CONTROL, help=f"control API address (default {DEFAULT_CONTROL})")
    s.add_argument("--token", default=None, help=f"control API bearer token (default: ${TOKEN_ENV})")


def run_profile(args: argparse.Namespace, out=None) -> int:
    from sidecar.monitoring.build import profile_version

    out = out or sys.stdout
    version_dir = Path(args.model_repository) / args.model / args.version
    if not version_dir.is_dir():
        print(f"sidecar profile: {version_dir} is not a model version folder", file=sys.stderr)
        return 2
    try:
        profile, path = profile_version(
            version_dir,
            Path(args.data),
            bins=args.bins,
            max_categories=args.max_categories,
            categorical_max_distinct=args.categorical_max_distinct,
            output=Path(args.output) if args.output else None,
        )
    except SidecarError as exc:
        print(f"sidecar profile: {exc.message}", file=sys.stderr)
        return 2
    numeric = sum(1 for _, f in profile.features if f.kind == "numeric")
    categorical = len(profile.features) - numeric
    print(
        f"wrote {path}: {profile.rows} rows, {numeric} numeric and {categorical} categorical feature(s), "
        f"{profile.bins} bins",
        file=out,
    )
    for source in profile.sources:
        if source.side == "output":
            print(f"  output {source.tensor} ({source.derive}): {source.features[0].name}", file=out)
    return 0


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4g}"


def format_version(r, show_all: bool = False) -> list[str]:
    """Lines for one ``monitoring_pb2.VersionReport``."""
    ref = f"profile {Path(r.profile_path).name}" if r.has_reference else "no reference profile (quality only)"
    lines = [
        f"{r.model} {r.version}: {r.status.upper()}  {ref}; kernel {r.kernel}; {r.requests_total} requests, "
        f"{r.rows_total} rows, {r.schema_violations_total} schema violations, {r.dropped_total} dropped"
    ]
    lines.append(
        f"  windows: every {r.window_requests} requests (open: {r.open_count_requests}) and every {r.window_s:g} s "
        f"(open: {r.open_time_requests}); alerts judged on {r.alert_window} windows"
    )
    for a in r.alerts:
        where = "" if a.feature == "*" else f" {a.feature}"
        lines.append(
            f"  ALERT{where} {a.statistic} = {_fmt(a.value)} >= {_fmt(a.threshold)} ({a.windows} {a.window} windows)"
        )
    for w in r.windows:
        lines.append(f"  {w.kind} window #{w.index}: {w.requests} requests, {w.rows} rows, status {w.status}")
        for s in w.statistics:
            lines.append(
                f"    * {s.name} = {_fmt(s.value)} (warn {_fmt(s.warn_threshold)}, alert {_fmt(s.alert_threshold)})"
            )
        for f in w.features:
            if not show_all and f.status not in ("warn", "alert"):
                continue
            stats = ", ".join(
                f"{s.name} {_fmt(s.value)}/{_fmt(s.alert_threshold)}" + ("!" if s.status == "alert" else "")
                for s in f.statistics
            )
            lines.append(f"    {f.feature} [{f.side} {f.kind}] {f.status}: {stats}")
    return lines


def status_lines(target: str, token: str, model: str = "", version: str = "", show_all: bool = False) -> list[str]:
    from sidecar.protocol.monitoring_client import MonitoringClient

    with MonitoringClient(target, token) as client:
        reports = client.drift_report(model, version)
    lines = ["Monitoring:"]
    if not reports:
        lines.append("  no monitored model versions")
    for r in reports:
        lines.extend("  " + line for line in format_version(r, show_all))
    return lines


def run_status(args: argparse.Namespace, out=None) -> int:
    from sidecar.protocol.control_client import ControlError

    out = out or sys.stdout
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV, "")
    try:
        lines = status_lines(args.control, token, args.model, args.version, args.all)
    except ControlError as exc:
        print(f"sidecar status: {exc}", file=sys.stderr)
        return 1
    try:
        from sidecar.routing.commands import status_section

        lines += status_section(args.control, token)
    except ControlError as exc:
        lines.append(f"Routing: unavailable ({exc})")
    print("\n".join(lines), file=out)
    return 0
