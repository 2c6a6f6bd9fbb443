"""The one place where sidecar errors become gRPC status codes."""

from __future__ import annotations

import grpc

from sidecar.errors import SidecarError


def grpc_status(error: SidecarError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.status, grpc.StatusCode.INTERNAL)
