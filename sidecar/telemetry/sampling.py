"""The trace sampler named by OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG, aware of batch links.

A batch span (and a shadow call's span) starts a trace of its own and links to the request spans it
served. Under a ratio sampler its own random trace id would decide, so most batches of sampled
requests would go unrecorded. ``LinkAwareSampler`` records a root span that links to a sampled span,
and leaves every other decision to the configured sampler.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from opentelemetry.trace import Link, get_current_span


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
