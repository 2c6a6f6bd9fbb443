"""The README's metric table is the catalog's, and the catalog's Prometheus names are the exporter's."""

from __future__ import annotations

from pathlib import Path

from sidecar.telemetry import catalog

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- telemetry-metrics:start -->", "<!-- telemetry-metrics:end -->"


def test_readme_metric_table_is_current():
    text = README.read_text()
    table = text[text.index(START) + len(START) : text.index(END)].strip()
    assert table == catalog.markdown_table(), "run: python -m sidecar.telemetry.catalog, paste between the markers"


def test_required_names_and_units_are_declared():
    by_name = {i.name: i for i in catalog.ALL}
    assert len(by_name) == len(catalog.ALL)  # every instrument declared once
    required = {
        "rpc.server.call.duration": ("histogram", "s"),
        "sidecar.inference.requests": ("counter", "{request}"),
        "sidecar.inference.queue.duration": ("histogram", "s"),
        "sidecar.inference.compute.duration": ("histogram", "s"),
        "sidecar.batch.rows": ("histogram", "{row}"),
        "sidecar.drift.psi": ("gauge", "1"),
        "sidecar.feature.bin.count": ("counter", "{observation}"),
        "sidecar.alerts.active": ("gauge", "{alert}"),
        "sidecar.model.freshness": ("gauge", "d"),
        "hw.gpu.utilization": ("gauge", "1"),
        "hw.gpu.memory.usage": ("updowncounter", "By"),
    }
    for name, (kind, unit) in required.items():
        assert (by_name[name].kind, by_name[name].unit) == (kind, unit), name
    assert catalog.prometheus_name(by_name["sidecar.inference.requests"]) == "sidecar_inference_requests_total"
    assert catalog.prometheus_name(by_name["sidecar.inference.queue.duration"]) == (
        "sidecar_inference_queue_duration_seconds"
    )
    assert by_name["sidecar.inference.requests"].attributes == ("model.name", "model.version", "outcome")
