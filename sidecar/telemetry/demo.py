"""The telemetry part of ``sidecar demo``: where telemetry goes, and a few values scraped from /metrics."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, list]:
    """Samples by name from the sidecar's Prometheus endpoint."""
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def _sum(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, ()) if all(s.labels.get(k) == v for k, v in labels.items()))


def run_telemetry_phase(metrics_port: int, log_path: Path, model: str) -> bool:
    print("\n== Telemetry (OpenTelemetry and Prometheus)")
    for line in log_path.read_text().splitlines():
        if "telemetry " in line and ("traces:" in line or "metrics:" in line or "GPU metrics" in line):
            print("  " + line.split(": ", 1)[-1])
    try:
        s = scrape(metrics_port)
    except OSError as exc:
        print(f"  cannot scrape http://127.0.0.1:{metrics_port}/metrics: {exc}")
        return False
    print(f"  a few of the values exported (scraped from http://127.0.0.1:{metrics_port}/metrics):")
    for sample in sorted(s.get("sidecar_inference_requests_total", ()), key=lambda x: sorted(x.labels.items())):
        if sample.labels.get("model_name") == model:
            lb = sample.labels
            print(
                f"    sidecar_inference_requests_total{{model_version={lb['model_version']}, "
                f"outcome={lb['outcome']}}} = {sample.value:.0f}"
            )
    calls = _sum(s, "rpc_server_call_duration_seconds_count", rpc_status_code="OK")
    seconds = _sum(s, "rpc_server_call_duration_seconds_sum", rpc_status_code="OK")
    if calls:
        print(f"    rpc_server_call_duration_seconds: {calls:.0f} OK calls, mean {seconds / calls * 1e3:.2f} ms")
    batches = _sum(s, "sidecar_batch_rows_count", model_name=model)
    if batches:
        rows = _sum(s, "sidecar_batch_rows_sum", model_name=model)
        print(f"    sidecar_batch_rows: {batches:.0f} batches, mean {rows / batches:.1f} rows")
    for sample in s.get("sidecar_model_freshness_days", ()):
        version = sample.labels["model_version"]
        print(f"    sidecar_model_freshness_days{{model_version={version}}} = {sample.value:.0f}")
    psi = [x for x in s.get("sidecar_drift_psi", ()) if x.labels.get("model_name") == model]
    if psi:
        top = max(psi, key=lambda x: x.value)
        where = f"{top.labels['feature']}, version {top.labels['model_version']}"
        print(f"    sidecar_drift_psi: highest {top.value:.3f} ({where})")
    print(f"    sidecar_alerts_active = {_sum(s, 'sidecar_alerts_active', model_name=model):.0f}")
    mem = _sum(s, "process_memory_usage_bytes")
    cpu = _sum(s, "process_cpu_time_seconds_total")
    print(f"    process_cpu_time_seconds_total = {cpu:.1f}, process_memory_usage_bytes = {mem / 2**20:.0f} MiB")
    gpus = [f"{g.labels['hw_name']} {g.value:.0%}" for g in s.get("hw_gpu_utilization", ())]
    print(f"    hw_gpu_utilization: {', '.join(gpus) or 'no GPU here (the hw.* metrics are absent)'}")
    return bool(s.get("sidecar_inference_requests_total"))
