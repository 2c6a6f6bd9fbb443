"""What every blocking control-API client of the CLI shares: the channel, the bearer token, error messages."""

from __future__ import annotations

from typing import Any, ClassVar

import grpc

from sidecar.config import DEFAULT_CONTROL


class ControlError(Exception):
    """A control call failed; ``str()`` is a message for the user."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class ControlClient:
    """Base of the control clients: subclasses set ``stub_class`` and ``unimplemented_hint``."""

    stub_class: ClassVar[Any]
    unimplemented_hint: ClassVar[str] = "does not serve this control API"

    def __init__(self, target: str = DEFAULT_CONTROL, token: str = "", timeout_s: float = 10.0) -> None:
        self.target = target
        self._channel = grpc.insecure_channel(target)
        self._stub = self.stub_class(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._timeout = timeout_s

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
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
                raise ControlError(f"{self.target} {self.unimplemented_hint}", code) from None
            raise ControlError(f"{code.name}: {exc.details()}", code) from None
