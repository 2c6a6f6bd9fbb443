"""Register servicers on a ``grpc.aio`` server as generic handlers only.

Generated ``add_*_to_server`` functions (grpcio-tools >= 1.62) register every method twice: as a
generic handler and as a *registered method*. For each registered method grpc.aio's server keeps one
pending "request call" task, and it waits on all of them (``asyncio.wait``) for every call it accepts.
With the inference service, health and reflection that is 17 tasks to arm and disarm per RPC, on the
event loop: measured (MLP, old and new side by side) at concurrency 64 as 7 % of the requests/s and
23 us of server CPU per request, at concurrency 1 as 0.02 ms of p50 (README, Performance).
A generic handler costs one task whatever the number of methods, and grpc.aio finds it by method name.

``generic_only(server)`` is what the sidecar hands to every registration function instead of the server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc


class GenericOnly:
    """The registration side of a ``grpc.aio.Server``: generic handlers pass, registered methods are
    left out (their generic handler, registered alongside, serves them)."""

    __slots__ = ("_server",)

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(handlers))

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        """Ignored: the generated code registers the same handlers as a generic handler too."""


def generic_only(server: grpc.aio.Server) -> GenericOnly:
    return GenericOnly(server)
