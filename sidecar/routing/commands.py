"""``sidecar route ...``: the routing verbs of the command line, and the routing part of ``sidecar status``.

    sidecar route set MODEL --weights 1.0.0=90,1.1.0=10 [--shadow 1.2.0=100] [--stable 1.0.0]
    sidecar route show [MODEL]
    sidecar route clear MODEL [--to-config]
    sidecar route history [MODEL]
    sidecar route shadows [MODEL]

Every verb talks to a running sidecar's control API (``--control HOST:PORT``, default
127.0.0.1:8003; ``--token`` or ``SIDECAR_CONTROL_TOKEN`` when it needs one).
"""

from __future__ import annotations

import argparse
import getpass
import math
import os
import socket
import sys

from sidecar.errors import InvalidArgument
from sidecar.routing.policy import parse_assignments

TOKEN_ENV = "SIDECAR_CONTROL_TOKEN"


def add_control_arguments(parser: argparse.ArgumentParser) -> None:
    from sidecar.config import DEFAULT_CONTROL  # not the client module: gRPC must not load yet

    parser.add_argument("--control", default=DEFAULT_CONTROL, help=f"control API address (default {DEFAULT_CONTROL})")
    parser.add_argument("--token", default=None, help=f"control API bearer token (default: ${TOKEN_ENV})")


def add_route_parser(sub: argparse._SubParsersAction) -> None:
    route = sub.add_parser("route", help="show and change traffic policies (canary weights, shadows)")
    verbs = route.add_subparsers(dest="route_command", required=True)

    p = verbs.add_parser("set", help="replace a model's traffic policy")
    p.add_argument("model")
    p.add_argument("--weights", default="", help="VERSION=PERCENT,... summing to 100 (0.1 %% steps)")
    p.add_argument("--shadow", default="", help="VERSION=PERCENT,...: mirror that share of traffic to each")
    p.add_argument("--stable", default="", help="the stable version (default: the heaviest weighted one)")
    p.add_argument("--reason", default="", help="why (kept in the audit trail)")
    p.add_argument("--expect-revision", type=int, default=0, help="refuse unless the policy is at this revision")
    p.add_argument("--dry-run", action="store_true", help="validate only")
    add_control_arguments(p)

    p = verbs.add_parser("show", help="show a model's traffic policy (every policy without MODEL)")
    p.add_argument("model", nargs="?", default="")
    add_control_arguments(p)

    p = verbs.add_parser("clear", help="remove a model's policy: the newest ready version takes all traffic")
    p.add_argument("model")
    p.add_argument("--to-config", action="store_true", help="go back to the config file's policy instead")
    p.add_argument("--reason", default="")
    add_control_arguments(p)

    p = verbs.add_parser("history", help="who changed which policy, when")
    p.add_argument("model", nargs="?", default="")
    add_control_arguments(p)

    p = verbs.add_parser("shadows", help="shadow versus primary comparison, per window")
    p.add_argument("model", nargs="?", default="")
    add_control_arguments(p)


def _actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _token(args: argparse.Namespace) -> str:
    return args.token if args.token is not None else os.environ.get(TOKEN_ENV, "")


def _pct(value: float) -> str:
    return f"{value:g}%"


def format_policy(p) -> list[str]:
    if not p.has_policy:
        return [f"{p.model}: no traffic policy (the newest ready version answers)"]
    weights = ", ".join(f"{s.version} {_pct(s.percent)}" for s in p.weights)
    lines = [f"{p.model}: {weights}  (stable {p.stable})"]
    if p.shadows:
        lines.append("  shadows: " + ", ".join(f"{s.version} mirrors {_pct(s.percent)}" for s in p.shadows))
    lines.append(
        f"  revision {p.revision}, from {p.source}"
        + (f", set by {p.updated_by} at {p.updated_at}" if p.updated_by else "")
        + (f" ({p.reason})" if p.reason else "")
    )
    return lines


def _num(value: float, fmt: str, unit: str = "") -> str:
    return "-" if math.isnan(value) else f"{value:{fmt}}{unit}"


def format_window(w) -> str:
    return (
        f"mirrored {w.mirrored}, dropped {w.dropped}, answered {w.completed}, errors {w.errors}, "
        f"timeouts {w.timeouts}, mismatches {w.mismatches}, error rate {_num(w.error_rate * 100, '.1f', '%')}; "
        f"agreement {_num(w.agreement * 100, '.1f', '%')} of {w.class_rows} rows; "
        f"|diff| mean {_num(w.mean_abs_diff, '.4g')} max {_num(w.max_abs_diff, '.4g')}; "
        f"latency shadow-primary mean {_num(w.mean_latency_diff_ms, '+.2f', ' ms')} "
        f"max {_num(w.max_latency_diff_ms, '+.2f', ' ms')}"
    )


def format_report(r, windows: int = 3) -> list[str]:
    lines = [f"{r.model} shadow {r.version} (mirrors {_pct(r.mirror_percent)}; queue {r.queue_depth})"]
    lines.append("  total:   " + format_window(r.total))
    recent = list(r.windows)[-windows:]
    for i, w in enumerate(recent):
        label = "current" if i == len(recent) - 1 else f"-{len(recent) - 1 - i}"
        lines.append(f"  {label:>7}: [{w.duration_s:.0f} s] " + format_window(w))
    return lines


def status_section(target: str, token: str = "", timeout_s: float = 5.0) -> list[str]:
    """The routing part of ``sidecar status``: every policy and every shadow's totals."""
    from sidecar.protocol.routing_client import RoutingClient

    with RoutingClient(target, token, timeout_s) as client:
        policies = client.list_policies()
        reports = client.shadow_report()
    lines = ["Routing:"]
    if not policies:
        lines.append("  no traffic policies (each model's newest ready version answers)")
    for p in policies:
        lines.extend("  " + line for line in format_policy(p))
    for r in reports:
        lines.append(f"  shadow {r.model} {r.version}: " + format_window(r.total))
    return lines


def run_route(args: argparse.Namespace, out=None) -> int:
    from sidecar.protocol.routing_client import ControlError, RoutingClient

    out = out or sys.stdout
    try:
        with RoutingClient(args.control, _token(args)) as client:
            verb = args.route_command
            if verb == "set":
                weights = [(v, p / 10) for v, p in parse_assignments(args.weights, "--weights")]
                shadows = [(v, p / 10) for v, p in parse_assignments(args.shadow, "--shadow")]
                if not weights and not args.stable:
                    raise InvalidArgument("give --weights VERSION=PERCENT,... (or --stable VERSION for 100 %)")
                policy = client.set_policy(
                    args.model,
                    weights,
                    shadows,
                    args.stable,
                    _actor(),
                    args.reason,
                    args.expect_revision,
                    args.dry_run,
                )
                print("valid (dry run, nothing changed):" if args.dry_run else "policy set:", file=out)
                print("\n".join(format_policy(policy)), file=out)
            elif verb == "show":
                policies = [client.get_policy(args.model)] if args.model else client.list_policies()
                if not policies:
                    print("no traffic policies (each model's newest ready version answers)", file=out)
                for p in policies:
                    print("\n".join(format_policy(p)), file=out)
            elif verb == "clear":
                policy = client.clear_policy(args.model, _actor(), args.reason, args.to_config)
                print("\n".join(format_policy(policy)), file=out)
            elif verb == "history":
                changes = client.history(args.model)
                if not changes:
                    print("no policy changes recorded", file=out)
                for c in changes:
                    print(f"{c.at}  {c.model}  rev {c.revision}  {c.action} by {c.actor}", file=out)
                    print(f"    {c.before}  ->  {c.after}" + (f"  ({c.reason})" if c.reason else ""), file=out)
            elif verb == "shadows":
                reports = client.shadow_report(args.model)
                if not reports:
                    print("no shadow versions have run", file=out)
                for r in reports:
                    print("\n".join(format_report(r)), file=out)
    except InvalidArgument as exc:
        print(f"sidecar route: {exc.message}", file=sys.stderr)
        return 2
    except ControlError as exc:
        print(f"sidecar route {args.route_command}: {exc}", file=sys.stderr)
        return 1
    return 0
