"""A blocking client of the monitoring control API (``sidecar.monitoring.v1.MonitoringControl``), for the CLI."""

from __future__ import annotations

import grpc

from sidecar.protocol._generated import monitoring_pb2 as mpb
from sidecar.protocol._generated import monitoring_pb2_grpc as mpb_grpc
from sidecar.protocol.routing_client import DEFAULT_CONTROL, ControlError


class MonitoringClient:
    def __init__(self, target: str = DEFAULT_CONTROL, token: str = "", timeout_s: float = 10.0) -> None:
        self.target = target
        self._channel = grpc.insecure_channel(target)
        self._stub = mpb_grpc.MonitoringControlStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._timeout = timeout_s

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> MonitoringClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method, request):
        try:
            return method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.UNAVAILABLE:
                raise ControlError(
                    f"cannot reach the control API at {self.target} ({exc.details()}); is `sidecar serve` running "
                    "there (server.control_host / --control-port)?",
                    code,
                ) from None
            if code is grpc.StatusCode.UNIMPLEMENTED:
                raise ControlError(
                    f"{self.target} does not serve the monitoring API (monitoring.enabled = false?)", code
                ) from None
            raise ControlError(f"{code.name}: {exc.details()}", code) from None

    def drift_report(self, model: str = "", version: str = "", history: bool = False) -> list[mpb.VersionReport]:
        req = mpb.GetDriftReportRequest(model=model, version=version, include_history=history)
        return list(self._call(self._stub.GetDriftReport, req).versions)

    def alerts(self, model: str = "") -> list[mpb.Alert]:
        return list(self._call(self._stub.ListAlerts, mpb.ListAlertsRequest(model=model)).alerts)
