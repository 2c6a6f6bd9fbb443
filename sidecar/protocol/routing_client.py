"""A blocking client of the routing control API (``sidecar.routing.v1.RoutingControl``), for the CLI."""

from __future__ import annotations

from collections.abc import Sequence

from sidecar.protocol._generated import routing_pb2 as rpb
from sidecar.protocol._generated import routing_pb2_grpc as rpb_grpc
from sidecar.protocol.control_client import DEFAULT_CONTROL, ControlClient, ControlError

__all__ = ["DEFAULT_CONTROL", "ControlError", "RoutingClient"]


class RoutingClient(ControlClient):
    stub_class = rpb_grpc.RoutingControlStub
    unimplemented_hint = "does not serve the routing control API"

    def set_policy(
        self,
        model: str,
        weights: Sequence[tuple[str, float]],
        shadows: Sequence[tuple[str, float]] = (),
        stable: str = "",
        actor: str = "",
        reason: str = "",
        expected_revision: int = 0,
        dry_run: bool = False,
    ) -> rpb.Policy:
        request = rpb.SetPolicyRequest(
            model=model,
            weights=[rpb.Share(version=v, percent=p) for v, p in weights],
            shadows=[rpb.Share(version=v, percent=p) for v, p in shadows],
            stable=stable,
            actor=actor,
            reason=reason,
            expected_revision=expected_revision,
            dry_run=dry_run,
        )
        return self._call(self._stub.SetPolicy, request).policy

    def get_policy(self, model: str) -> rpb.Policy:
        return self._call(self._stub.GetPolicy, rpb.GetPolicyRequest(model=model)).policy

    def list_policies(self) -> list[rpb.Policy]:
        return list(self._call(self._stub.ListPolicies, rpb.ListPoliciesRequest()).policies)

    def clear_policy(self, model: str, actor: str = "", reason: str = "", to_config: bool = False) -> rpb.Policy:
        request = rpb.ClearPolicyRequest(model=model, actor=actor, reason=reason, to_config=to_config)
        return self._call(self._stub.ClearPolicy, request).policy

    def history(self, model: str = "") -> list[rpb.Change]:
        return list(self._call(self._stub.GetHistory, rpb.GetHistoryRequest(model=model)).changes)

    def shadow_report(self, model: str = "") -> list[rpb.ShadowReport]:
        return list(self._call(self._stub.GetShadowReport, rpb.GetShadowReportRequest(model=model)).reports)
