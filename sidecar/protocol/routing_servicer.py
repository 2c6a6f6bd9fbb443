"""``sidecar.routing.v1.RoutingControl``: a thin adapter over ``sidecar.routing.control``.

Served on the control port. With ``server.control_token`` set, each call must carry the metadata
``authorization: Bearer <token>`` (compared in constant time) or gets UNAUTHENTICATED. The actor
recorded for a change is the one the caller names plus the caller's address.
"""

from __future__ import annotations

import hmac
import logging
import math

import grpc

from sidecar.errors import InvalidArgument, SidecarError
from sidecar.protocol._generated import routing_pb2 as rpb
from sidecar.protocol._generated import routing_pb2_grpc as rpb_grpc
from sidecar.protocol.status import grpc_status
from sidecar.routing.comparison import ShadowSnapshot
from sidecar.routing.control import PolicyRecord, RoutingController
from sidecar.routing.policy import TrafficPolicy, parse_percent

log = logging.getLogger(__name__)

SERVICE_NAME = rpb.DESCRIPTOR.services_by_name["RoutingControl"].full_name


def check_bearer(context: grpc.aio.ServicerContext, token: str) -> bool:
    """True when no token is configured or the call carries ``authorization: Bearer <token>``."""
    if not token:
        return True
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value if isinstance(value, str) else value.decode()
            scheme, _, given = text.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
                return True
    return False


def policy_message(record: PolicyRecord) -> rpb.Policy:
    msg = rpb.Policy(
        model=record.model,
        has_policy=record.policy is not None,
        revision=record.revision,
        source=record.source,
        updated_by=record.updated_by,
        updated_at=record.updated_at,
        reason=record.reason,
    )
    if record.policy is not None:
        msg.stable = record.policy.stable
        msg.weights.extend(rpb.Share(version=v, percent=p / 10) for v, p in record.policy.arms)
        msg.shadows.extend(rpb.Share(version=v, percent=p / 10) for v, p in record.policy.shadows)
    return msg


def window_message(s: ShadowSnapshot) -> rpb.ShadowWindow:
    return rpb.ShadowWindow(
        start_unix_s=s.start_unix_s,
        duration_s=s.duration_s,
        mirrored=s.mirrored,
        dropped=s.dropped,
        completed=s.completed,
        errors=s.errors,
        timeouts=s.timeouts,
        mismatches=s.mismatches,
        error_rate=s.error_rate,
        class_rows=s.class_rows,
        agreement=s.agreement,
        mean_abs_diff=s.mean_abs_diff,
        max_abs_diff=s.max_abs_diff,
        mean_latency_diff_ms=s.mean_latency_diff_ms,
        max_latency_diff_ms=s.max_latency_diff_ms,
        mean_shadow_latency_ms=s.mean_shadow_latency_ms,
    )


def _shares(items, where: str) -> list[tuple[str, int]]:
    out = []
    for share in items:
        if not share.version:
            raise InvalidArgument(f"{where}: an entry has no version")
        if math.isnan(share.percent):
            raise InvalidArgument(f"{where}: {share.version} has no percentage")
        out.append((share.version, parse_percent(share.percent, f"{where} {share.version}")))
    return out


class RoutingServicer(rpb_grpc.RoutingControlServicer):
    def __init__(self, controller: RoutingController, token: str = "") -> None:
        self._controller = controller
        self._token = token

    async def _guard(self, context) -> None:
        if not check_bearer(context, self._token):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "the control API needs 'authorization: Bearer <token>' (server.control_token); "
                "pass --token or set SIDECAR_CONTROL_TOKEN",
            )

    @staticmethod
    def _actor(context, named: str) -> str:
        return f"{named or 'anonymous'} ({context.peer()})"

    async def SetPolicy(self, request, context):
        await self._guard(context)
        try:
            if not request.model:
                raise InvalidArgument("model is empty: name the model whose traffic policy to set")
            policy = TrafficPolicy.build(
                request.model,
                _shares(request.weights, "weights"),
                _shares(request.shadows, "shadows"),
                request.stable,
            )
            record = await self._controller.set_policy(
                policy,
                self._actor(context, request.actor),
                request.reason,
                request.expected_revision,
                request.dry_run,
            )
        except SidecarError as exc:
            await context.abort(grpc_status(exc), exc.message)
        return rpb.PolicyResponse(policy=policy_message(record))

    async def GetPolicy(self, request, context):
        await self._guard(context)
        try:
            record = self._controller.get(request.model)
        except SidecarError as exc:
            await context.abort(grpc_status(exc), exc.message)
        return rpb.PolicyResponse(policy=policy_message(record))

    async def ListPolicies(self, request, context):
        await self._guard(context)
        return rpb.ListPoliciesResponse(policies=[policy_message(r) for r in self._controller.records()])

    async def ClearPolicy(self, request, context):
        await self._guard(context)
        try:
            if not request.model:
                raise InvalidArgument("model is empty: name the model whose traffic policy to clear")
            record = await self._controller.clear_policy(
                request.model, self._actor(context, request.actor), request.reason, request.to_config
            )
        except SidecarError as exc:
            await context.abort(grpc_status(exc), exc.message)
        return rpb.PolicyResponse(policy=policy_message(record))

    async def GetHistory(self, request, context):
        await self._guard(context)
        return rpb.GetHistoryResponse(
            changes=[
                rpb.Change(
                    at=c.at,
                    model=c.model,
                    actor=c.actor,
                    action=c.action,
                    before=c.before,
                    after=c.after,
                    revision=c.revision,
                    reason=c.reason,
                )
                for c in self._controller.history(request.model)
            ]
        )

    async def GetShadowReport(self, request, context):
        await self._guard(context)
        resp = rpb.GetShadowReportResponse()
        for r in self._controller.shadow_report(request.model):
            resp.reports.add(
                model=r.model,
                version=r.version,
                mirror_percent=r.mirror_permille / 10,
                window_s=r.window_s,
                windows=[window_message(w) for w in r.windows],
                total=window_message(r.total),
                queue_depth=r.queue_depth,
            )
        return resp


def add_routing_servicer(server: grpc.aio.Server, controller: RoutingController, token: str = "") -> str:
    """Register the routing control service on ``server``; returns its full name (for reflection)."""
    rpb_grpc.add_RoutingControlServicer_to_server(RoutingServicer(controller, token), server)
    return SERVICE_NAME
