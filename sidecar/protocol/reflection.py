"""gRPC server reflection over sidecar's private descriptor pool (see _generated/_pool.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from sidecar.protocol._generated._pool import POOL


def _ensure(file_descriptor) -> None:
    try:
        POOL.FindFileByName(file_descriptor.name)
    except KeyError:
        POOL.AddSerializedFile(file_descriptor.serialized_pb)


def enable_reflection(server: Any, service_names: Iterable[str], extra_files=()) -> None:
    """Serve reflection for ``service_names``; their files must be in POOL (ours are; ``extra_files`` are added)."""
    _ensure(health_pb2.DESCRIPTOR)
    for fd in extra_files:
        _ensure(fd)
    reflection.enable_server_reflection((*service_names, reflection.SERVICE_NAME), server, pool=POOL)


HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
