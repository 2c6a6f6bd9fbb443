"""The routing phase of ``sidecar demo``: a sticky canary split, then a shadow comparison report.

Called by ``sidecar.demo.run_demo`` with the running server and its traffic helper; everything it
prints is measured in this run, through the control API the ``sidecar route`` verbs use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from sidecar.protocol.routing_client import RoutingClient
from sidecar.routing.commands import format_policy, format_report


def run_routing_phase(
    url: str,
    control_url: str,
    model: str,
    stable: str,
    canary: str,
    rows: Any,
    labels: Any,
    requests: int,
    concurrency: int,
    send_rows: Callable[..., Any],
) -> bool:
    """Returns True when every request of the phase was answered."""
    users = [f"user-{i}" for i in range(500)]
    ok = True
    with RoutingClient(control_url) as control:
        print(f"\n== Routing: canary {canary} at 10 % beside {stable}, sticky by user id")
        print(f"  $ sidecar route set {model} --weights {stable}=90,{canary}=10 --control {control_url}")
        policy = control.set_policy(model, [(stable, 90.0), (canary, 10.0)], actor="sidecar demo", reason="canary")
        print("\n".join("  " + line for line in format_policy(policy)))
        split = asyncio.run(send_rows(url, rows, labels, requests, concurrency, routing_keys=users))
        ok = ok and split.errors == 0
        total = max(1, split.requests - split.errors)
        shares = ", ".join(f"{v} {n / total:.1%}" for v, n in sorted(split.by_version.items()))
        print(f"  {split.requests - split.errors}/{split.requests} answered; served by {shares}")
        again = asyncio.run(send_rows(url, rows, labels, 100, 4, routing_keys=users[:1]))
        print(f"  the same user 100 times: served by {again.by_version} (sticky)")
        ok = ok and again.errors == 0

        print(f"\n== Routing: {canary} as a shadow of {stable} (100 % mirrored; clients only see {stable})")
        print(f"  $ sidecar route set {model} --weights {stable}=100 --shadow {canary}=100 --control {control_url}")
        control.set_policy(model, [(stable, 100.0)], [(canary, 100.0)], actor="sidecar demo", reason="shadow")
        mirrored = asyncio.run(send_rows(url, rows, labels, requests, concurrency, routing_keys=users))
        ok = ok and mirrored.errors == 0
        print(
            f"  {mirrored.requests - mirrored.errors}/{mirrored.requests} answered, served by {mirrored.by_version}, "
            f"p95 {mirrored.p95_ms:.2f} ms (no shadow: p95 {split.p95_ms:.2f} ms)"
        )
        deadline = time.monotonic() + 10
        reports = control.shadow_report(model)
        while time.monotonic() < deadline and not _settled(reports):
            time.sleep(0.1)
            reports = control.shadow_report(model)
        print(f"  $ sidecar route shadows {model} --control {control_url}")
        for report in reports:
            print("\n".join("  " + line for line in format_report(report, windows=1)))

        print(f"  $ sidecar route clear {model}   (back to the newest ready version)")
        control.clear_policy(model, actor="sidecar demo", reason="demo done")
    return ok


def _settled(reports: list[Any]) -> bool:
    return bool(reports) and all(
        r.total.mirrored == r.total.completed + r.total.errors + r.total.timeouts for r in reports
    )
