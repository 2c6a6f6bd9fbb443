"""The trace sampler named by OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG, aware of batch links.

A batch span (and a shadow call's span) starts a trace of its own and links to the request spans it
served. Under a ratio sampler its own random trace id would decide, so most batches of sampled
requests would go unrecorded. ``LinkAwareSampler`` records a root span that links to a sampled span,
and leaves every other decision to the configured sampler.

``decision(name, ratio)`` is the same rule compiled into one small function for the lean tracer
(``lean_tracing``): no ``SamplingResult`` per span. ``configured_sampler`` (the SDK's classes) stays the
reference it is tested against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanContext, get_current_span

_TRACE_ID_LIMIT = (1 << 64) - 1


def configured_sampler(name: str, ratio: float) -> Sampler:
    base = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatioBased(ratio)),
    }[name]
    return LinkAwareSampler(base)


class LinkAwareSampler(Sampler):
    def __init__(self, inner: Sampler) -> None:
        self._inner = inner

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if links and not get_current_span(parent_context).get_span_context().is_valid:
            for link in links:
                if link.context.trace_flags.sampled:
                    return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return self._inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"LinkAware{{{self._inner.get_description()}}}"


def decision(name: str, ratio: float) -> Callable[[SpanContext | None, int, Sequence[Link] | None], bool]:
    """``configured_sampler(name, ratio)``'s decision as ``decide(parent, trace_id, links) -> sampled``.

    ``parent`` is the parent's valid span context or None (a root span). As the SDK: a ratio samples
    trace ids whose low 64 bits fall under ``round(ratio * 2**64)``; ``parentbased_*`` follow a parent's
    sampled flag (remote or local alike, the SDK's defaults); a root span linking to a sampled span is
    sampled (``LinkAwareSampler``).
    """
    if name not in ("always_on", "always_off", "traceidratio") and not name.startswith("parentbased_"):
        raise ValueError(f"unknown sampler {name!r}")
    root_name = name.removeprefix("parentbased_")
    parent_based = root_name != name
    bound = TraceIdRatioBased.get_bound_for_rate(ratio)
    always = root_name == "always_on"
    ratio_based = root_name == "traceidratio"

    def decide(parent: SpanContext | None, trace_id: int, links: Sequence[Link] | None) -> bool:
        if parent is not None:
            if parent_based:
                return parent.trace_flags.sampled
        elif links:
            for link in links:
                if link.context.trace_flags.sampled:
                    return True
        if ratio_based:
            return trace_id & _TRACE_ID_LIMIT < bound
        return always

    return decide
