"""Register servicers on a ``grpc.aio`` server as generic handlers only.

Generated ``add_*_to_server`` functions (grpcio-tools >= 1.62) register every method twice: as a
generic handler and as a *registered method*. For each registered method grpc.aio's server keeps one
pending "request call" task, and it waits on all of them (``asyncio.wait``) for every call it accepts.
With the inference service, health and reflection that is 17 tasks to arm and disarm per RPC, on the
event loop: measured (MLP, old and new side by side) at concurrency 64 as 7 % of the requests/s and
23 us of server CPU per request, at concurrency 1 as 0.02 ms of p50 (README, Performance).
A generic handler costs one task whatever the number of methods, and grpc.aio finds it by method name.

``generic_only(server)`` is what the sidecar hands to every registration function instead of the server.

``generic_only(server, tap_metadata=True)`` also hands each call's metadata to its handler
(``call_metadata``): grpc.aio builds the metadata tuple once to find the handler
(``handler_call_details.invocation_metadata``) and a new one on every ``invocation_metadata()`` call
(~2 us served). The tap keeps the first in a context variable of the call's task, where the RPC
wrapper (``sidecar.protocol.interceptors``: the caller's trace context) and the servicer (a sticky
routing key) read it. The sidecar taps its inference port when tracing is on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import Any

import grpc

# The metadata of the call whose task this is (set by a tapped handler's lookup, or by the ingest relay
# for a relayed call); None where nothing set it: then the call's context is asked.
CALL_METADATA: ContextVar[Any] = ContextVar("sidecar_call_metadata", default=None)
_get_metadata = CALL_METADATA.get
_set_metadata = CALL_METADATA.set


def call_metadata(context: Any) -> Any:
    """The call's invocation metadata (a tuple of (key, value)): what the tap kept, else the context's."""
    metadata = _get_metadata()
    if metadata is None:
        return context.invocation_metadata() or ()
    return metadata


class GenericOnly:
    """The registration side of a ``grpc.aio.Server``: generic handlers pass, registered methods are
    left out (their generic handler, registered alongside, serves them)."""

    __slots__ = ("_server", "_tap")

    def __init__(self, server: grpc.aio.Server, tap_metadata: bool = False) -> None:
        self._server = server
        self._tap = tap_metadata

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        if self._tap:
            handlers = [MetadataTap(handler) for handler in handlers]
        self._server.add_generic_rpc_handlers(tuple(handlers))

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        """Ignored: the generated code registers the same handlers as a generic handler too."""


class MetadataTap(grpc.GenericRpcHandler):
    """A generic handler that keeps the metadata of each call it serves in ``CALL_METADATA``.

    grpc.aio looks the handler up in the call's own task, the one that then runs the handler, so the
    variable holds that call's metadata there (and in the tasks it starts) and nowhere else."""

    __slots__ = ("_handler",)

    def __init__(self, handler: grpc.GenericRpcHandler) -> None:
        self._handler = handler

    def service(self, handler_call_details: Any) -> Any:
        found = self._handler.service(handler_call_details)
        if found is not None:
            _set_metadata(handler_call_details.invocation_metadata)
        return found


def generic_only(server: grpc.aio.Server, tap_metadata: bool = False) -> GenericOnly:
    return GenericOnly(server, tap_metadata)
