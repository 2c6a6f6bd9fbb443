"""A blocking client of the routing control API (``sidecar.routing.v1.RoutingControl``), for the CLI."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from sidecar.protocol._generated import routing_pb2 as rpb
from sidecar.protocol._generated import routing_pb2_grpc as rpb_grpc

DEFAULT_CONTROL = "127.0.0.1:8003"


class ControlError(Exception):
    """A control call failed; ``str()`` is a message for the user."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class RoutingClient:
    def __init__(self, target: str = DEFAULT_CONTROL, token: str = "", timeout_s: float = 10.0) -> None:
        self.target = target
        self._channel = grpc.insecure_channel(target)
        self._stub = rpb_grpc.RoutingControlStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._timeout = timeout_s

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RoutingClient:
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
                raise ControlError(f"{self.target} does not serve the routing control API", code) from None
            raise ControlError(f"{code.name}: {exc.details()}", code) from None

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
