"""A lean tracer: OpenTelemetry API spans that only record, for the request path.

The SDK's ``Span`` costs about 25 us per request span on the request path (locks, ``BoundedAttributes``
validation, span processors, ``ReadableSpan`` snapshots), and its OTLP encoder another ~25 us per span
on the export thread. A ``LeanSpan`` implements the API ``Span`` interface (``get_span_context``,
``is_recording``, ``set_attribute(s)``, ``set_status``, ``record_exception``, ``add_event``,
``add_link``, ``update_name``, ``end``, ``with``) and records into plain slots and a dict; ``end()``
hands it to the span sinks (a bounded deque, ``export.BoundedSpanProcessor``), and
``sidecar.telemetry.otlp`` encodes the OTLP protobuf straight from those slots.

Its slots and hot methods are C (``_otlp_native.SpanCore``, LeanSpan's base), as are a request span's
start (``RequestStarter``), making it current (``enter_current``/``leave_current``/``current_span``: the
API's own context variable) and, in the RPC wrapper and the span queue, its start, end, encoding and
queueing: a traced request's span work on the event loop is a few C calls. ``_PySpanCore`` and the
Python functions beside each are the twins that serve where the extension is not built, or with
``SIDECAR_LEAN_SPAN=python``; the tests run the tracer's tests on both.

    provider = LeanTracerProvider(sampling.decision("parentbased_always_on", 1.0), resource_attributes)
    provider.add_span_processor(processor)           # anything with on_end(span)
    tracer = provider.get_tracer("sidecar.protocol", "1.0")
    span = tracer.start_span("name", context=ctx, kind=SpanKind.SERVER, attributes={...}, links=[...])

API compatibility: spans are ``opentelemetry.trace.Span`` instances, so ``trace.get_current_span()``,
``trace.set_span_in_context``, ``trace.use_span`` and W3C propagation work unchanged. Unsampled spans
are the API's ``NonRecordingSpan`` with a real span context (so a child continues the trace id and an
unsampled decision propagates). Ids come from ``random.getrandbits`` like the SDK's
``RandomIdGenerator``. Not carried over from the SDK: attribute count/length limits (our own code sets
a handful per span; values are encoded as they are, unsupported types as ``str()``) and
``RECORD_ONLY`` sampling decisions (treated as not sampled).

Concurrency: a span is changed only by the code that owns it (on the event loop) until ``end()``;
``end()`` sets ``end_ns`` before the span is handed over, and every setter ignores an ended span, so the
export thread reads an ended span without a lock.
"""

from __future__ import annotations

import os
import random
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from operator import itemgetter
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT)
_NO_STATE = DEFAULT_TRACE_STATE
_NOTHING: tuple = ()  # a span's events and links until it gets one (then a list of its own)
_RECORD, _SET_STATUS = 1, 2  # on an exception leaving the span: record it, set the ERROR status


def _span_context(trace_id: int, span_id: int, state: Any) -> SpanContext:
    """``SpanContext(trace_id, span_id, False, SAMPLED, state)`` for ids known valid (from ``_new_id``).

    The API's constructor checks the ids in Python (~0.5 us); a span context is the API's tuple
    (trace_id, span_id, is_remote, trace_flags, trace_state, is_valid), built here directly. Checked
    against the constructor at import (``_check_span_context``): any difference, and the constructor
    is used.
    """
    return _tuple_new(SpanContext, (trace_id, span_id, False, _SAMPLED, state or _NO_STATE, True))


def _checked_span_context(trace_id: int, span_id: int, state: Any) -> SpanContext:
    return SpanContext(trace_id, span_id, False, _SAMPLED, state)


_tuple_new = tuple.__new__


def _check_span_context() -> Any:
    made, reference = _span_context(0xABC, 0xDEF, None), SpanContext(0xABC, 0xDEF, False, _SAMPLED)
    same = made == reference and (made.trace_id, made.span_id, made.is_valid) == (0xABC, 0xDEF, True)
    same = same and made.trace_flags.sampled and not made.is_remote and made.trace_state == reference.trace_state
    return _span_context if same else _checked_span_context


_make_context = _check_span_context()
_getrandbits = random.getrandbits
_time_ns = time.time_ns
_get_current_span = trace.get_current_span
_INTERNAL = SpanKind.INTERNAL
_ERROR = StatusCode.ERROR
_OK = StatusCode.OK
_UNSET = StatusCode.UNSET


def _api_enter(span: trace.Span) -> Any:
    return otel_context.attach(trace.set_span_in_context(span))


def _api_leave(token: Any) -> None:
    otel_context.detach(token)


def _runtime_context_var() -> ContextVar | None:
    """The context variable where the API's default runtime context keeps the current ``Context``.

    ``attach(set_span_in_context(span))`` and ``detach`` go through seven Python calls (~1.5 us, and a
    served profile gave them ~6 us a traced request); with the default runtime context they come down
    to one ``Context`` and one set/reset of this variable (``enter_span``/``leave_span``). Checked
    against the API at import (``_check_fast_enter``); any other runtime context
    (``OTEL_PYTHON_CONTEXT``), or any difference, and the API's calls are used."""
    try:
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
        from opentelemetry.trace.propagation import _SPAN_KEY  # noqa: F401
    except ImportError:
        return None
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    if type(runtime) is not ContextVarsRuntimeContext or type(var) is not ContextVar:
        return None
    return var


def _fast_enter_leave(var: ContextVar) -> tuple[Callable[[trace.Span], Any], Callable[[Any], None]]:
    from opentelemetry.trace.propagation import _SPAN_KEY

    get, set_, reset = var.get, var.set, var.reset
    context_type = otel_context.Context

    def enter(span: trace.Span) -> Any:
        current = get()
        return set_(context_type({**current, _SPAN_KEY: span}) if current else context_type({_SPAN_KEY: span}))

    def leave(token: Any) -> None:
        try:  # noqa: SIM105  (as detach: a token of another context, or one used already, is ignored)
            reset(token)
        except (ValueError, RuntimeError):
            pass

    return enter, leave


def _check_fast_enter() -> tuple[Callable[[trace.Span], Any], Callable[[Any], None]]:
    var = _runtime_context_var()
    if var is None:
        return _api_enter, _api_leave
    enter, leave = _fast_enter_leave(var)
    outer, inner = (
        NonRecordingSpan(_checked_span_context(0xA1, 0xB1, None)),
        NonRecordingSpan(_checked_span_context(0xA2, 0xB2, None)),
    )
    before = otel_context.get_current()
    same = True
    first = enter(outer)
    same = same and trace.get_current_span() is outer
    marker = otel_context.create_key("sidecar-check")
    api = otel_context.attach(otel_context.set_value(marker, 1))  # kept by the next enter
    second = enter(inner)
    same = same and trace.get_current_span() is inner and otel_context.get_value(marker) == 1
    leave(second)
    same = same and trace.get_current_span() is outer and otel_context.get_value(marker) == 1
    otel_context.detach(api)
    leave(first)
    same = same and otel_context.get_current() is before
    return (enter, leave) if same else (_api_enter, _api_leave)


# (span) -> token: ``span`` becomes the OpenTelemetry context's current span; (token) -> None undoes it.
enter_span, leave_span = _check_fast_enter()


def _fast_current(var: ContextVar) -> Callable[[], trace.Span]:
    from opentelemetry.trace.propagation import _SPAN_KEY

    get = var.get
    invalid = trace.INVALID_SPAN

    def current() -> trace.Span:
        span = get().get(_SPAN_KEY)
        return span if isinstance(span, trace.Span) else invalid

    return current


def _native_context() -> tuple[Callable[[trace.Span], Any], Callable[[Any], None], Callable[[], trace.Span]]:
    """(enter, leave, current): ``_otlp_native``'s (one C call each) where the core is C and the fast
    enter/leave passed its check against the API; else ``enter_span``, ``leave_span`` and the API's
    ``get_current_span`` (or its direct read of the same context variable)."""
    var = _runtime_context_var()
    if enter_span is _api_enter or var is None:
        return enter_span, leave_span, trace.get_current_span
    if _native is None:
        return enter_span, leave_span, _fast_current(var)
    from opentelemetry.trace.propagation import _SPAN_KEY

    _native.configure_context(var, otel_context.Context, _SPAN_KEY, trace.Span, trace.INVALID_SPAN)
    return _native.enter_current, _native.leave_current, _native.current_span


def native_core() -> Any:
    """The C module behind LeanSpan's core (``_otlp_native``), or None where the Python twin serves."""
    return _native


# (parent span context or None, trace id, links) -> sampled?  See sampling.decision().
Decide = Callable[[SpanContext | None, int, Sequence[Link] | None], bool]


class BareLink(tuple):
    """A link that carries a span context only: the batch span's link to each request span it served.

    Reads as the API's ``Link`` reads (``context``, ``attributes`` None, ``dropped_attributes`` 0), and
    ``BareLink((context,))`` makes one in a single C call (tuple's own constructor), where
    ``Link(context)`` runs two Python ``__init__``s (~0.65 us each, one per request of a traced batch)."""

    __slots__ = ()
    context = property(itemgetter(0))
    attributes = None
    dropped_attributes = 0

    def __repr__(self) -> str:
        return f"BareLink({self[0]!r})"


class Scope:
    """An instrumentation scope (the tracer's name and version); spans are grouped by it on export."""

    __slots__ = ("name", "version")

    def __init__(self, name: str, version: str | None) -> None:
        self.name = name
        self.version = version or ""


class _PySpanCore:
    """The Python twin of ``_otlp_native.SpanCore``: a lean span's slots, ``get_span_context``,
    ``is_recording`` and ``end``; LeanSpan's base where the C one is not built (or
    ``SIDECAR_LEAN_SPAN=python``)."""

    __slots__ = (
        "_context",
        "_errors",
        "_sink",
        "attributes",
        "end_ns",
        "events",
        "kind",
        "links",
        "name",
        "parent",
        "scope",
        "start_ns",
        "status_code",
        "status_message",
    )

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        links: Sequence[Link],
        scope: Scope,
        sink: Callable[[Any], None],
        start_ns: int,
        errors: int = _RECORD | _SET_STATUS,
    ) -> None:
        self.name = name
        self._context = context
        self.parent = parent  # the parent's span context (remote or local), None for a root span
        self.kind = kind
        self.attributes = attributes  # the span's own dict
        self.links: Sequence[Link] = links  # () or a list of the span's own
        self.events: Sequence[tuple[str, int, Mapping[str, Any]]] = _NOTHING  # () until the first event
        self.scope = scope
        self.start_ns = start_ns
        self.end_ns = 0  # 0 while recording
        self.status_code = _UNSET
        self.status_message = ""
        self._sink = sink
        self._errors = errors  # _RECORD | _SET_STATUS: what an exception leaving the span does

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return not self.end_ns

    def end(self, end_time: int | None = None) -> None:
        if self.end_ns:
            return
        self.end_ns = end_time or _time_ns()
        self._sink(self)


SPAN_CORE_ENV = "SIDECAR_LEAN_SPAN"


def load_native(switch: str) -> Any:
    """``_otlp_native``, configured with the API's constants, where it is built and the environment
    variable ``switch`` (read when called: at import) is not ``python``; else None."""
    if os.environ.get(switch, "auto").strip().lower() == "python":
        return None
    try:
        from sidecar.telemetry import _otlp_native
    except ImportError:
        return None
    kinds = (SpanKind.INTERNAL, SpanKind.SERVER, SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER)
    _otlp_native.configure(kinds, _UNSET, DEFAULT_TRACE_STATE)
    return _otlp_native


_native = load_native(SPAN_CORE_ENV)
SPAN_CORE = "native" if _native is not None else "python"  # which base LeanSpan has

# enter_current(span) -> token: ``span`` becomes the OpenTelemetry context's current span (as
# ``enter_span``); leave_current(token) undoes it (a token of another context, or one used, ignored);
# current_span() -> that span (``trace.get_current_span()``), in one call: the request path reads it
# (``sidecar.telemetry.spans.current_span``). Each gRPC call and each task runs in a context of its own.
enter_current, leave_current, current_span = _native_context()


class LeanSpan(_native.SpanCore if _native is not None else _PySpanCore, trace.Span):  # type: ignore[misc]
    """A sampled span: records, nothing else. Read by the exporters through its public slots.

    ``LeanSpan(name, context, parent, kind, attributes, links, scope, sink, start_ns, errors=3)``: the
    slots, ``get_span_context``, ``is_recording`` and ``end`` are its base's (C, ``_otlp_native.SpanCore``,
    or its Python twin ``_PySpanCore``); the rest of the API is here."""

    __slots__ = ()

    # -- the API ------------------------------------------------------------------------------------
    def set_attribute(self, key: str, value: Any) -> None:
        if not self.end_ns and value is not None:
            self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if not self.end_ns:
            for key, value in attributes.items():
                if value is not None:
                    self.attributes[key] = value

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if isinstance(status, Status):
            code, description = status.status_code, status.description
        else:
            code = status
        # As the SDK: UNSET never overrides, and an OK status is final.
        if self.end_ns or code is _UNSET or self.status_code is _OK:
            return
        self.status_code = code
        self.status_message = (description or "") if code is _ERROR else ""

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        if not self.end_ns:
            if self.events is _NOTHING:
                self.events = []
            self.events.append((name, timestamp or _time_ns(), dict(attributes) if attributes else {}))  # type: ignore[union-attr]

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        if not self.end_ns and context.is_valid:
            if self.links is _NOTHING:
                self.links = []
            self.links.append(Link(context, attributes))  # type: ignore[union-attr]

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        if self.end_ns:
            return
        kind = type(exception)
        module = kind.__module__
        attrs: dict[str, Any] = {
            "exception.type": f"{module}.{kind.__qualname__}" if module and module != "builtins" else kind.__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            attrs.update(attributes)
        self.add_event("exception", attrs, timestamp)

    def update_name(self, name: str) -> None:
        if not self.end_ns:
            self.name = name

    def __enter__(self) -> LeanSpan:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, Exception):
            self._on_error(exc, bool(self._errors & _RECORD), bool(self._errors & _SET_STATUS))
        self.end()

    def _on_error(self, exc: BaseException, record: bool, set_status: bool) -> None:
        if not self.end_ns:
            if record:
                self.record_exception(exc, escaped=True)
            if set_status:
                self.set_status(_ERROR, f"{type(exc).__name__}: {exc}")

    def __repr__(self) -> str:
        ctx = self._context
        return f"LeanSpan({self.name!r}, trace_id=0x{ctx.trace_id:032x}, span_id=0x{ctx.span_id:016x})"


class UseSpan:
    """``start_as_current_span``'s context manager: the span is current inside, ended on exit."""

    __slots__ = ("_end", "_record", "_set_status", "_span", "_token")

    def __init__(self, span: trace.Span, end_on_exit: bool, record: bool, set_status: bool) -> None:
        self._span = span
        self._end = end_on_exit
        self._record = record
        self._set_status = set_status
        self._token: Any = None

    def __enter__(self) -> trace.Span:
        span = self._span
        self._token = enter_current(span)
        return span

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        leave_current(self._token)
        span = self._span
        if isinstance(exc, Exception) and isinstance(span, LeanSpan):
            span._on_error(exc, self._record, self._set_status)
        if self._end:
            span.end()


class LeanTracer(trace.Tracer):
    __slots__ = ("_decide", "_provider", "scope", "start_request_span")

    def __init__(self, provider: LeanTracerProvider, scope: Scope) -> None:
        self._provider = provider
        self._decide = provider.decide
        self.scope = scope
        # (name, parent, kind, attributes) -> LeanSpan | None: ``_start_request_span``, in one C call
        # where the span core is C and the span context the API's tuple (``_make_context``)
        self.start_request_span: Callable[[str, SpanContext | None, SpanKind, Mapping[str, Any]], LeanSpan | None] = (
            _native.RequestStarter(
                LeanSpan, SpanContext, _SAMPLED, _NO_STATE, _getrandbits, provider.decide, scope, provider
            ).start
            if _native is not None and _make_context is _span_context
            else self._start_request_span
        )

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = _INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent: SpanContext | None = _get_current_span(context).get_span_context()
        if parent.is_valid:  # type: ignore[union-attr]
            trace_id = parent.trace_id  # type: ignore[union-attr]
            state = parent.trace_state  # type: ignore[union-attr]
        else:
            parent = None
            trace_id = _getrandbits(128) or 1
            state = None
        if not self._decide(parent, trace_id, links):
            return NonRecordingSpan(SpanContext(trace_id, _getrandbits(64) or 1, False, _UNSAMPLED, state))
        kept = [link for link in links if link.context.is_valid] if links else _NOTHING
        return LeanSpan(
            name,
            _make_context(trace_id, _getrandbits(64) or 1, state),
            parent,
            kind,
            {k: v for k, v in attributes.items() if v is not None} if attributes else {},
            kept,
            self.scope,
            self._provider.sink,
            start_time or _time_ns(),
            (_RECORD if record_exception else 0) | (_SET_STATUS if set_status_on_exception else 0),
        )

    def start_linked_span(self, name: str, spans: Sequence[LeanSpan], attributes: dict[str, Any]) -> LeanSpan | None:
        """A root span linked to ``spans`` (recording sidecar spans: sampled, valid), or None if unsampled.

        The batch span's fast path (``sidecar.telemetry.spans.batch_span``): the sampler is asked as
        ``start_span`` would ask it, without the checks its general arguments need; the span keeps
        ``attributes`` (the caller's fresh dict, no None values).
        """
        links = [BareLink((span._context,)) for span in spans]
        trace_id = _getrandbits(128) or 1
        if not self._decide(None, trace_id, links):
            return None
        return LeanSpan(
            name,
            _make_context(trace_id, _getrandbits(64) or 1, None),
            None,
            _INTERNAL,
            attributes,
            links,
            self.scope,
            self._provider.sink,
            _time_ns(),
        )

    def _start_request_span(
        self, name: str, parent: SpanContext | None, kind: SpanKind, attributes: Mapping[str, Any]
    ) -> LeanSpan | None:
        """``start_request_span``: a request's span, or None when the sampler does not sample it: no span object at all.

        The request path's fast path (``sidecar.protocol.interceptors``): an unsampled request costs one
        random draw and the sampler's test. ``parent``: the caller's valid span context, or None for a
        root span; ``attributes`` (no None values) are copied into the span.
        """
        if parent is not None:
            trace_id = parent.trace_id
            state = parent.trace_state
        else:
            trace_id = _getrandbits(128) or 1
            state = None
        if not self._decide(parent, trace_id, None):
            return None
        return LeanSpan(
            name,
            _make_context(trace_id, _getrandbits(64) or 1, state),
            parent,
            kind,
            dict(attributes),
            _NOTHING,
            self.scope,
            self._provider.sink,
            _time_ns(),
        )

    def start_as_current_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = _INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Any:
        span = self.start_span(
            name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception
        )
        return UseSpan(span, end_on_exit, record_exception, set_status_on_exception)


class LeanTracerProvider(trace.TracerProvider):
    """Hands out ``LeanTracer``s; ended spans go to every added processor's ``on_end``."""

    def __init__(self, decide: Decide, resource: Mapping[str, Any] | None = None) -> None:
        self.decide = decide
        self.resource = dict(resource or {})
        self._processors: tuple[Any, ...] = ()  # replaced, never mutated
        self.sink: Callable[[LeanSpan], None] = _discard
        self._tracers: dict[tuple[str, str], LeanTracer] = {}

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> LeanTracer:
        key = (instrumenting_module_name, instrumenting_library_version or "")
        tracer = self._tracers.get(key)
        if tracer is None:
            tracer = LeanTracer(self, Scope(*key))
            self._tracers = {**self._tracers, key: tracer}
        return tracer

    def add_span_processor(self, processor: Any) -> None:
        """Add processors before the first span: each span takes the sink current when it starts."""
        self._processors = (*self._processors, processor)
        if len(self._processors) == 1:
            self.sink = processor.on_end
        else:
            processors = self._processors

            def fan_out(span: LeanSpan) -> None:
                for p in processors:
                    p.on_end(span)

            self.sink = fan_out

    @property
    def processors(self) -> Iterator[Any]:
        return iter(self._processors)


def _discard(span: LeanSpan) -> None:
    pass
