"""The drift monitoring phase of ``sidecar demo``.

At build time, ``write_profiles`` writes the training split to a CSV file and runs the very code of
``sidecar profile`` on it for each version, so the server loads a reference profile with each
version. During the demo, ``run_drift_phase`` (with the running server) reads the drift report of the
reference-like traffic already sent, sends traffic with two features shifted until the alerts fire
(and prints them), then reference-like traffic until they clear. Everything printed is measured in
this run, through the control API ``sidecar status`` uses.
"""

from __future__ import annotations

import asyncio
import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sidecar.monitoring.build import profile_version

# Small windows so that the demo's few thousand requests make several of them.
DEMO_SETTINGS = {
    "SIDECAR_MONITORING__WINDOW_REQUESTS": "200",
    "SIDECAR_MONITORING__ALERT_AFTER_WINDOWS": "2",
    "SIDECAR_MONITORING__CLEAR_AFTER_WINDOWS": "2",
}
SHIFT_STD = 3.0


@dataclass
class DriftOutcome:
    psi: float | None = None  # the largest input PSI of the last closed window
    feature: str = ""
    psi_threshold: float | None = None  # the alert threshold in force for that window (sample-size aware)
    window_requests: int = 0
    fired: list[str] = field(default_factory=list)  # alerts raised by the shifted traffic
    active: list[str] = field(default_factory=list)  # alerts still active at the end
    ok: bool = True


def write_profiles(repo: Path, model: str, versions: Sequence[str], x_train: np.ndarray, names: Sequence[str]) -> None:
    """``sidecar profile`` for each version, from the training split written as CSV beside the repository."""
    data = repo.parent / "train.csv"
    with data.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        writer.writerows(x_train.tolist())
    for version in versions:
        profile, path = profile_version(repo / model / version, data)
        print(
            f"  profiled {model} {version}: {profile.rows} training rows, {len(profile.features)} features "
            f"({profile.bins} quantile bins each) -> {path.name}"
        )


def _report(control_url: str, model: str, version: str):
    from sidecar.protocol.monitoring_client import MonitoringClient

    with MonitoringClient(control_url) as client:
        (report,) = client.drift_report(model, version)
    return report


def _describe(a) -> str:
    return f"{a.feature} {a.statistic}={a.value:.2f} (threshold {a.threshold:.2f}, {a.windows} windows)"


def _input_psi(report) -> list[tuple[float, float, str]]:
    """(PSI, alert threshold in force, feature) of every input feature in the last closed alert window."""
    window = next((w for w in report.windows if w.kind == report.alert_window), None)
    out = []
    for f in window.features if window else ():
        for s in f.statistics:
            if f.side == "input" and s.name == "psi" and not math.isnan(s.value):
                out.append((s.value, s.alert_threshold, f.feature))
    return sorted(out)


def _top_psi(report) -> tuple[str, float]:
    psis = _input_psi(report)
    return (psis[-1][2], psis[-1][0]) if psis else ("", float("nan"))


def run_drift_phase(
    url: str,
    control_url: str,
    model: str,
    version: str,
    x_train: np.ndarray,
    x_test: np.ndarray,
    names: Sequence[str],
    concurrency: int,
    send_rows: Callable[..., Any],
) -> DriftOutcome:
    out = DriftOutcome()
    before = _report(control_url, model, version)
    window = before.window_requests
    feature, psi = _top_psi(before)
    print(f"\n== Drift monitoring: {model} {version} against its reference profile ({before.kernel} histogram kernel)")
    print(
        f"  reference-like traffic so far: {before.requests_total} requests, windows of {window} requests, "
        f"largest input PSI in the last window {psi:.3f} ({feature}); active alerts: {len(before.alerts)}"
    )
    shifted_idx = [1, 21]  # mean texture, worst texture
    shifted = x_test.copy()
    for j in shifted_idx:
        shifted[:, j] += SHIFT_STD * x_train[:, j].std()
    what = " and ".join(f"'{names[j]}'" for j in shifted_idx)
    # Enough whole windows for the alert to be raised (and later cleared), plus the one already open.
    requests = window * (int(DEMO_SETTINGS["SIDECAR_MONITORING__ALERT_AFTER_WINDOWS"]) + 1)
    print(f"  sending {requests} requests with {what} shifted by +{SHIFT_STD:g} training standard deviations")
    sent = asyncio.run(send_rows(url, shifted, None, requests, concurrency, version=version))
    out.ok = sent.errors == 0
    during = _report(control_url, model, version)
    out.fired = [_describe(a) for a in during.alerts]
    for a in during.alerts:
        print(f"  ALERT {model} {version} {_describe(a)}")
    alerted = {a.feature for a in during.alerts if a.feature in names}
    expected = {names[j] for j in shifted_idx}
    print(f"  input features alerting: {sorted(alerted)} (shifted: {sorted(expected)})")
    out.ok = out.ok and alerted == expected
    print(f"  sending {requests} reference-like requests")
    back = asyncio.run(send_rows(url, x_test, None, requests, concurrency, version=version))
    out.ok = out.ok and back.errors == 0
    after = _report(control_url, model, version)
    out.active = [_describe(a) for a in after.alerts]
    psis = _input_psi(after)
    if psis:
        top, threshold, name = psis[-1]
        out.psi, out.feature, out.psi_threshold = float(top), name, float(threshold)
        out.window_requests = int(DEMO_SETTINGS["SIDECAR_MONITORING__WINDOW_REQUESTS"])
        median = float(np.median([p for p, _, _ in psis]))
        print(
            f"  after: {len(after.alerts)} active alert(s); last window's input PSI: median {median:.3f}, max "
            f"{top:.3f} ({name}; the sample-size aware alert threshold for this window is {threshold:.3f})"
        )
    print(
        f"  {after.schema_violations_total} schema violations, {after.dropped_total} requests not monitored (dropped)"
    )
    print(f"  $ sidecar status {model} --control {control_url}   # the same report from the command line")
    return out
