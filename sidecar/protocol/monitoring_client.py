"""A blocking client of the monitoring control API (``sidecar.monitoring.v1.MonitoringControl``), for the CLI."""

from __future__ import annotations

from sidecar.protocol._generated import monitoring_pb2 as mpb
from sidecar.protocol._generated import monitoring_pb2_grpc as mpb_grpc
from sidecar.protocol.control_client import DEFAULT_CONTROL, ControlClient, ControlError

__all__ = ["DEFAULT_CONTROL", "ControlError", "MonitoringClient"]


class MonitoringClient(ControlClient):
    stub_class = mpb_grpc.MonitoringControlStub
    unimplemented_hint = "does not serve the monitoring API (monitoring.enabled = false?)"

    def drift_report(self, model: str = "", version: str = "", history: bool = False) -> list[mpb.VersionReport]:
        req = mpb.GetDriftReportRequest(model=model, version=version, include_history=history)
        return list(self._call(self._stub.GetDriftReport, req).versions)

    def alerts(self, model: str = "") -> list[mpb.Alert]:
        return list(self._call(self._stub.ListAlerts, mpb.ListAlertsRequest(model=model)).alerts)
