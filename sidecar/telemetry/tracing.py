"""The process-wide tracer provider, switchable so that each sidecar's tracing stage can own its own.

Modules on the request path take their tracer once, before any provider exists: from ``SWITCH``
itself (``spans``: batch spans) or from the OpenTelemetry API (``trace.get_tracer("sidecar.routing")``).
The telemetry stage installs ``SWITCH`` as the API's global provider (the API allows that once per
process) and points it at its own tracer provider (``lean_tracing.LeanTracerProvider``) while it runs;
after ``stop()`` the tracers fall back to non-recording spans. So a second sidecar in the same process
(tests, benchmarks) gets its own provider, and a stopped one leaves nothing recording.
One sidecar's tracing is active at a time.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import trace

log = logging.getLogger(__name__)
_NOOP = trace.NoOpTracer()


class _State:
    provider: Any = None
    generation = 0


_state = _State()


class SwitchingTracer(trace.Tracer):
    __slots__ = ("_generation", "_name", "_tracer", "_version")

    def __init__(self, name: str, version: str | None) -> None:
        self._name = name
        self._version = version
        self._generation = -1
        self._tracer: trace.Tracer = _NOOP

    def resolve(self) -> trace.Tracer:
        """The tracer of the provider active now (a non-recording one when none is)."""
        if self._generation != _state.generation:
            provider = _state.provider
            self._tracer = provider.get_tracer(self._name, self._version) if provider is not None else _NOOP
            self._generation = _state.generation
        return self._tracer

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self.resolve().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve().start_as_current_span(*args, **kwargs)


class SwitchingTracerProvider(trace.TracerProvider):
    def get_tracer(self, instrumenting_module_name: str, instrumenting_library_version: str | None = None, *a, **k):
        return SwitchingTracer(instrumenting_module_name, instrumenting_library_version)


SWITCH = SwitchingTracerProvider()


def active() -> bool:
    """Whether a sidecar's tracing is on (a provider is installed)."""
    return _state.provider is not None


def activate(provider: Any) -> None:
    """Route every API tracer of the process to ``provider`` (any API TracerProvider)."""
    if trace.get_tracer_provider() is not SWITCH:
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(SWITCH)
        else:
            log.warning("telemetry: another global tracer provider is set; shadow spans go through it")
    _state.provider = provider
    _state.generation += 1


def deactivate(provider: Any) -> None:
    if _state.provider is provider:
        _state.provider = None
        _state.generation += 1
