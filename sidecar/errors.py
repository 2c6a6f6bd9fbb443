"""The error tree. Every error the sidecar raises on a request path is one of these.

Each class names the gRPC status it maps to (as a string, so this module stays free of gRPC; the
mapping to ``grpc.StatusCode`` happens once, in ``sidecar.protocol.status``). Messages name the
model, version, tensor or field at fault so a user can act on them.

    SidecarError
    ├── InvalidArgument            INVALID_ARGUMENT
    │   ├── InvalidTensor          a tensor's datatype, shape, byte length or contents are wrong
    │   └── InvalidParameter       a request parameter has the wrong type or value
    ├── NotFound                   NOT_FOUND
    │   ├── ModelNotFound
    │   └── VersionNotFound
    ├── FailedPrecondition         FAILED_PRECONDITION
    │   └── ModelLoadError         corrupt ONNX, bad metadata, invalid version, path escape
    ├── ResourceExhausted          RESOURCE_EXHAUSTED
    │   ├── QueueFull              load shedding: the version's queue is at its limit
    │   └── MessageTooLarge
    ├── Unavailable                UNAVAILABLE
    │   ├── ModelNotReady          loading, warming up, unloading or failed
    │   ├── ServerDraining
    │   └── UpstreamUnavailable
    ├── DeadlineExceeded           DEADLINE_EXCEEDED
    ├── Cancelled                  CANCELLED
    ├── EngineError                INTERNAL: the model itself failed while running
    └── ConfigError                INVALID_ARGUMENT: configuration is invalid (raised at start)
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base class. ``status`` is the name of a ``grpc.StatusCode`` member."""

    status = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(SidecarError):
    status = "INVALID_ARGUMENT"


class InvalidTensor(InvalidArgument):
    pass


class InvalidParameter(InvalidArgument):
    pass


class NotFound(SidecarError):
    status = "NOT_FOUND"


class ModelNotFound(NotFound):
    def __init__(self, model: str) -> None:
        super().__init__(f"model '{model}' is not in the repository")
        self.model = model


class VersionNotFound(NotFound):
    def __init__(self, model: str, version: str) -> None:
        super().__init__(f"model '{model}' has no version '{version}'")
        self.model = model
        self.version = version


class FailedPrecondition(SidecarError):
    status = "FAILED_PRECONDITION"


class ModelLoadError(FailedPrecondition):
    pass


class ResourceExhausted(SidecarError):
    status = "RESOURCE_EXHAUSTED"


class QueueFull(ResourceExhausted):
    pass


class MessageTooLarge(ResourceExhausted):
    pass


class Unavailable(SidecarError):
    status = "UNAVAILABLE"


class ModelNotReady(Unavailable):
    pass


class ServerDraining(Unavailable):
    pass


class UpstreamUnavailable(Unavailable):
    pass


class DeadlineExceeded(SidecarError):
    status = "DEADLINE_EXCEEDED"


class Cancelled(SidecarError):
    status = "CANCELLED"


class EngineError(SidecarError):
    status = "INTERNAL"


class ConfigError(SidecarError):
    status = "INVALID_ARGUMENT"
