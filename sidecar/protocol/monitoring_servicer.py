"""``sidecar.monitoring.v1.MonitoringControl``: a thin adapter over ``sidecar.monitoring.monitor.Monitoring``.

Served on the control port. With ``server.control_token`` set, each call must carry the metadata
``authorization: Bearer <token>`` or gets UNAUTHENTICATED. Reports are frozen values converted once,
here, to protobuf.
"""

from __future__ import annotations

import grpc

from sidecar.errors import NotFound
from sidecar.monitoring.alerts import Alert
from sidecar.monitoring.drift import StatisticValue
from sidecar.monitoring.monitor import Monitoring
from sidecar.monitoring.report import VersionReport, WindowReport
from sidecar.protocol._generated import monitoring_pb2 as mpb
from sidecar.protocol._generated import monitoring_pb2_grpc as mpb_grpc
from sidecar.protocol.routing_servicer import check_bearer
from sidecar.protocol.status import grpc_status

SERVICE_NAME = mpb.DESCRIPTOR.services_by_name["MonitoringControl"].full_name


def statistic_message(s: StatisticValue) -> mpb.Statistic:
    return mpb.Statistic(
        name=s.name,
        value=s.value,
        warn_threshold=s.warn,
        alert_threshold=s.alert,
        status=s.status,
        p_value=s.p_value,
    )


def window_message(w: WindowReport) -> mpb.Window:
    msg = mpb.Window(
        kind=w.kind,
        index=w.index,
        start_unix_s=w.start_unix,
        end_unix_s=w.end_unix,
        requests=w.requests,
        rows=w.rows,
        schema_violations=w.schema_violations,
        dropped=w.dropped,
        reference_rows=w.reference_rows,
        status=w.status,
        statistics=[statistic_message(s) for s in w.statistics],
    )
    for f in w.features:
        msg.features.add(
            feature=f.feature,
            side=f.side,
            kind=f.kind,
            derive=f.derive,
            values=f.values,
            status=f.status,
            statistics=[statistic_message(s) for s in f.statistics],
        )
    return msg


def alert_message(a: Alert) -> mpb.Alert:
    return mpb.Alert(
        model=a.model,
        version=a.version,
        feature=a.feature,
        statistic=a.statistic,
        value=a.value,
        threshold=a.threshold,
        window=a.window,
        raised_unix_s=a.raised_unix,
        windows=a.windows,
    )


def version_message(r: VersionReport, history: tuple[WindowReport, ...] = ()) -> mpb.VersionReport:
    return mpb.VersionReport(
        model=r.model,
        version=r.version,
        has_reference=r.has_reference,
        profile_path=r.profile_path,
        kernel=r.kernel,
        window_requests=r.window_requests,
        window_s=r.window_s,
        alert_window=r.alert_window,
        requests_total=r.requests_total,
        rows_total=r.rows_total,
        schema_violations_total=r.schema_violations_total,
        dropped_total=r.dropped_total,
        errors_total=r.errors_total,
        open_count_requests=r.open_count_requests,
        open_time_requests=r.open_time_requests,
        status=r.status,
        windows=[window_message(w) for w in r.windows],
        alerts=[alert_message(a) for a in r.alerts],
        history=[window_message(w) for w in history],
    )


class MonitoringServicer(mpb_grpc.MonitoringControlServicer):
    def __init__(self, monitoring: Monitoring, token: str = "") -> None:
        self._monitoring = monitoring
        self._token = token

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if not check_bearer(context, self._token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong 'authorization: Bearer' token")

    async def GetDriftReport(self, request, context):
        await self._authorize(context)
        await self._monitoring.flush()  # fold what has been observed so far: the report is current
        monitors = [
            m
            for m in self._monitoring.monitors()
            if (not request.model or m.model == request.model) and (not request.version or m.version == request.version)
        ]
        if (request.model or request.version) and not monitors:
            what = f"model '{request.model}'" + (f" version '{request.version}'" if request.version else "")
            err = NotFound(f"{what} is not monitored (not loaded, or monitoring.enabled is false)")
            await context.abort(grpc_status(err), err.message)
        resp = mpb.GetDriftReportResponse()
        for m in monitors:
            history = m.history("count") + m.history("time") if request.include_history else ()
            resp.versions.append(version_message(m.report(), history))
        return resp

    async def ListAlerts(self, request, context):
        await self._authorize(context)
        await self._monitoring.flush()
        alerts = [a for a in self._monitoring.alerts() if not request.model or a.model == request.model]
        return mpb.ListAlertsResponse(alerts=[alert_message(a) for a in alerts])


def add_monitoring_servicer(server: grpc.aio.Server, monitoring: Monitoring, token: str = "") -> str:
    mpb_grpc.add_MonitoringControlServicer_to_server(MonitoringServicer(monitoring, token), server)
    return SERVICE_NAME
