"""Upstream engine: a model version served by another Open Inference Protocol gRPC server.

This module: the settings file (``UpstreamSettings``) and the engine (``UpstreamEngine``: pooled
connections, readiness probe, retries, deadlines, status mapping). The request/response bytes:
``sidecar.engine.upstream_wire``.

A version folder holds ``upstream.json`` (or ``upstream.toml``) instead of ``model.onnx``::

    {"target": "triton:8001",       # host:port of the upstream's gRPC API (required)
     "model": "resnet",             # the upstream's model name; default: this model's name
     "version": "",                 # the upstream's version; default: its own default
     "timeout_s": 30.0,             # per-call limit when the caller sent no deadline
     "retries": 2,                  # extra attempts, only on UNAVAILABLE (see below)
     "retry_backoff_ms": 10.0,      # first back-off, doubled per attempt
     "connections": 2,              # pooled HTTP/2 connections, used round-robin
     "max_batch_size": null,        # default: the upstream's ModelConfig (0 if it has none)
     "health_interval_s": 2.0,      # how often the upstream's ModelReady is polled
     "connect_timeout_s": 10.0,     # at load: how long to wait for the upstream to come up
     "tls": false,                  # TLS with the system's root certificates
     "headers": {}}                 # metadata sent on every call (e.g. an upstream's token)

The version becomes READY only when the upstream says the model is ready; its inputs, outputs and
platform are the upstream's ``ModelMetadata``, its batch size the upstream's ``ModelConfig``. A sidecar
that starts before its upstream waits ``connect_timeout_s`` for it; after that the version is
UNAVAILABLE with the reason, and a ``RepositoryModelLoad`` of the model tries again. While
serving, a probe polls ``ModelReady``; an unready upstream makes the version not ready (``healthy``),
so the router's fallback moves policy traffic away from it.

Each call carries the caller's deadline (``DEADLINE_NS``) or ``timeout_s``, whichever ends first.
Only UNAVAILABLE is retried: the call did not reach a model (no connection, connection reset, server
going away), and inference has no side effects, so sending it again is safe; never after
DEADLINE_EXCEEDED (the upstream may still be working on it) and never past the caller's deadline.
Requests go out as bytes on a pooled raw channel (identity serialisers). A caller's request that
runs alone (``forward``: the version's scheduler does not batch) is passed through as the caller
encoded it, with the upstream's model name and version written in (``upstream_wire.Retarget``), and
the answer comes back as the upstream's bytes (``ForwardedOutputs``: tensors decoded on first read).
Such a call can be started before the caller has checked the request (``start_forward``, then
``finish_forward``; ``StartedForward.cancel`` abandons it): ``upstream_call`` sends it before
``start_forward`` returns. An answer is parsed to check its shapes unless its head and size are those
of the last answer checked (``_answer``).
A merged batch (``run``) is written directly from the input tensors
(``RequestEncoder``); only the response is parsed. The bytes themselves are
``sidecar.engine.upstream_wire``'s: this module holds the settings and the connection.
Upstream statuses map to ours: UNAVAILABLE -> UpstreamUnavailable, DEADLINE_EXCEEDED ->
DeadlineExceeded, INVALID_ARGUMENT -> InvalidArgument, NOT_FOUND -> UpstreamUnavailable (the upstream
lost the model), RESOURCE_EXHAUSTED -> ResourceExhausted, anything else -> EngineError; every message
names the upstream and keeps the upstream's own words.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from opentelemetry import trace

from sidecar.engine.base import DEADLINE_NS
from sidecar.engine.metadata import read_table
from sidecar.engine.upstream_call import RawUnary, TracedCall
from sidecar.engine.upstream_wire import (
    ForwardedOutputs,
    RequestEncoder,
    Retarget,
    answer_head,
    decode_outputs,
    has_head,
    parse_response,
)
from sidecar.errors import (
    Cancelled,
    DeadlineExceeded,
    EngineError,
    InvalidArgument,
    ModelLoadError,
    ResourceExhausted,
    UpstreamUnavailable,
)
from sidecar.protocol._generated import grpc_service_pb2 as pb
from sidecar.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from sidecar.telemetry import tracing
from sidecar.telemetry.propagation import trace_context_metadata, unsampled_metadata
from sidecar.telemetry.spans import INVALID_SPAN, current_span
from sidecar.types import DATATYPE_TO_DTYPE, TensorSpec

log = logging.getLogger(__name__)
_tracer = tracing.SWITCH.get_tracer("sidecar.engine.upstream")  # CLIENT spans of traced upstream calls

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
MODEL_INFER_METHOD = INFER_METHOD[1:]  # as spans name it (rpc.method)
_PROBE_TIMEOUT_S = 2.0
_LOAD_TIMEOUT_S = 10.0


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """The options of each pooled channel to an upstream."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per pooled channel
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.enable_retries", 0),  # run() retries itself, only when safe; no buffering retry filter
    ]


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    target: str
    model: str
    version: str = ""
    timeout_s: float = 30.0
    retries: int = 2
    retry_backoff_ms: float = 10.0
    connections: int = 2
    max_batch_size: int | None = None
    health_interval_s: float = 2.0
    connect_timeout_s: float = 10.0
    tls: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, model: str) -> UpstreamSettings:
        raw = read_table(path, "the upstream settings")
        return cls.from_mapping(raw, model, str(path))

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], model: str, where: str) -> UpstreamSettings:
        types: dict[str, type | tuple[type, ...]] = {
            "target": str,
            "model": str,
            "version": str,
            "timeout_s": (int, float),
            "retries": int,
            "retry_backoff_ms": (int, float),
            "connections": int,
            "max_batch_size": (int, type(None)),
            "health_interval_s": (int, float),
            "connect_timeout_s": (int, float),
            "tls": bool,
            "headers": dict,
        }
        unknown = sorted(set(raw) - set(types))
        if unknown:
            raise ModelLoadError(f"{where}: unknown upstream key(s) {', '.join(unknown)} (known: {', '.join(types)})")
        for key, value in raw.items():
            tp = types[key]
            if not isinstance(value, tp) or (isinstance(value, bool) and tp is not bool):
                raise ModelLoadError(f"{where}: upstream '{key}' has the wrong type ({value!r})")
        target = raw.get("target", "")
        if not target or ":" not in target:
            raise ModelLoadError(f"{where}: upstream 'target' must be host:port, not {target!r}")
        settings = cls(
            target=target,
            model=raw.get("model") or model,
            version=raw.get("version", ""),
            timeout_s=float(raw.get("timeout_s", 30.0)),
            retries=raw.get("retries", 2),
            retry_backoff_ms=float(raw.get("retry_backoff_ms", 10.0)),
            connections=raw.get("connections", 2),
            max_batch_size=raw.get("max_batch_size"),
            health_interval_s=float(raw.get("health_interval_s", 2.0)),
            connect_timeout_s=float(raw.get("connect_timeout_s", 10.0)),
            tls=raw.get("tls", False),
            headers={str(k): str(v) for k, v in raw.get("headers", {}).items()},
        )
        if settings.timeout_s <= 0 or settings.retries < 0 or settings.connections < 1:
            raise ModelLoadError(f"{where}: timeout_s must be > 0, retries >= 0, connections >= 1")
        if settings.health_interval_s <= 0 or settings.retry_backoff_ms < 0 or settings.connect_timeout_s <= 0:
            raise ModelLoadError(f"{where}: health_interval_s and connect_timeout_s must be > 0, retry_backoff_ms >= 0")
        if settings.max_batch_size is not None and settings.max_batch_size < 0:
            raise ModelLoadError(f"{where}: max_batch_size must be >= 0")
        return settings


class StartedForward:
    """A forwarded request already on its way (``UpstreamEngine.start_forward``)."""

    __slots__ = ("call", "deadline_ns", "payload", "sent", "timeout_s")

    def __init__(self, payload: bytes, deadline_ns: int, call: Any, timeout_s: float) -> None:
        self.payload = payload
        self.deadline_ns = deadline_ns
        self.call = call  # the first attempt (``RawUnary.start``'s: usually sent already)
        self.sent = call.sent  # False: it goes out when the loop next turns
        self.timeout_s = timeout_s

    def cancel(self) -> None:
        """Abandon the call (the request failed its checks); nothing once it has finished."""
        self.call.cancel()


class UpstreamEngine:
    """Forwards inference to an upstream server; see the module docstring."""

    def __init__(
        self, settings: UpstreamSettings, *, label: str, max_batch_size: int, max_message_bytes: int = 64 << 20
    ) -> None:
        self.settings = settings
        self.label = label
        self.platform = "upstream"
        self.provider = f"upstream:{settings.target}"
        self.inputs: tuple[TensorSpec, ...] = ()
        self.outputs: tuple[TensorSpec, ...] = ()
        self.max_batch_size = 0
        self.healthy = False
        self._batch_limit = max_batch_size
        self._options = channel_options(max_message_bytes)
        self._metadata = tuple((k.lower(), v) for k, v in settings.headers.items()) or None
        self._channels: list[grpc.aio.Channel] = []
        self._stubs: list[pb_grpc.GRPCInferenceServiceStub] = []
        self._calls: list[RawUnary] = []  # ModelInfer, bytes in and out, one per channel
        self._next = itertools.count()
        self._encode = RequestEncoder(settings.model, settings.version).encode
        self._retarget = Retarget(settings.model, settings.version)  # a forwarded request's names
        self._output_ranks: dict[str, int] = {}  # output -> declared rank: an answer that differs is reshaped
        # The head of the last answer checked (see _answer), and the head it goes back with: the same
        # bytes, or with the shapes conformed to the declared ones; and that answer's size in bytes.
        self._checked_head = b""
        self._conformed_head = b""
        self._checked_size = -1
        self._probe: asyncio.Task | None = None
        self._where = f"upstream {settings.target} model '{settings.model}'" + (
            f" version '{settings.version}'" if settings.version else ""
        )
        host, _, port = settings.target.rpartition(":")
        self._client_attributes = {  # an upstream call's CLIENT span (OpenTelemetry's gRPC conventions)
            "rpc.system.name": "grpc",
            "rpc.method": MODEL_INFER_METHOD,
            "server.address": host.strip("[]"),
            "server.port": int(port) if port.isdigit() else port,
            "model.name": settings.model,
            **({"model.version": settings.version} if settings.version else {}),
        }

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, read readiness, metadata and batch size from the upstream, start the probe."""
        for _ in range(self.settings.connections):
            if self.settings.tls:
                channel = grpc.aio.secure_channel(
                    self.settings.target, grpc.ssl_channel_credentials(), options=self._options
                )
            else:
                channel = grpc.aio.insecure_channel(self.settings.target, options=self._options)
            self._channels.append(channel)
            self._stubs.append(pb_grpc.GRPCInferenceServiceStub(channel))
            raw = channel.unary_unary(INFER_METHOD, None, None, _registered_method=True)  # bytes in and out
            self._calls.append(RawUnary(raw, self._metadata))
        try:
            await self._load_metadata()
        except BaseException:
            await self._close_channels()
            raise
        self.healthy = True
        self._probe = asyncio.ensure_future(self._probe_loop())

    async def _load_metadata(self) -> None:
        s = self.settings
        stub = self._stubs[0]
        try:
            ready = await stub.ModelReady(
                pb.ModelReadyRequest(name=s.model, version=s.version),
                timeout=s.connect_timeout_s,
                metadata=self._metadata,
                wait_for_ready=True,
            )
            if not ready.ready:
                raise ModelLoadError(f"{self.label}: {self._where} is not ready; load it there first")
            meta = await stub.ModelMetadata(
                pb.ModelMetadataRequest(name=s.model, version=s.version),
                timeout=_LOAD_TIMEOUT_S,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise ModelLoadError(
                f"{self.label}: cannot read {self._where}: {exc.code().name}: {exc.details()}"
            ) from None
        self.platform = meta.platform or "upstream"
        self.inputs = tuple(TensorSpec(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in meta.inputs)
        self.outputs = tuple(TensorSpec(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in meta.outputs)
        if not self.inputs or not self.outputs:
            raise ModelLoadError(
                f"{self.label}: {self._where} reports no input/output metadata; the sidecar needs it to check "
                "requests (declare the model's inputs and outputs on the upstream)"
            )
        self._output_ranks = {spec.name: len(spec.shape) for spec in self.outputs}
        for spec in (*self.inputs, *self.outputs):
            if spec.datatype not in DATATYPE_TO_DTYPE:
                raise ModelLoadError(f"{self.label}: {self._where}: tensor '{spec.name}' has datatype {spec.datatype}")
        upstream_mbs = s.max_batch_size
        if upstream_mbs is None:
            upstream_mbs = 0
            try:
                config = await stub.ModelConfig(
                    pb.ModelConfigRequest(name=s.model, version=s.version),
                    timeout=_LOAD_TIMEOUT_S,
                    metadata=self._metadata,
                )
                upstream_mbs = max(0, int(config.config.max_batch_size))
            except grpc.aio.AioRpcError as exc:  # MLServer and KServe have no ModelConfig
                log.info(
                    "%s: %s has no ModelConfig (%s): no batch dimension assumed",
                    self.label,
                    self._where,
                    exc.code().name,
                )
        if upstream_mbs:
            if not all(spec.shape and spec.shape[0] == -1 for spec in (*self.inputs, *self.outputs)):
                raise ModelLoadError(
                    f"{self.label}: {self._where} has max_batch_size {upstream_mbs} but not every tensor's "
                    "first dimension is variable (-1)"
                )
            self.max_batch_size = min(upstream_mbs, self._batch_limit) if self._batch_limit else upstream_mbs
        log.info(
            "%s: forwarding to %s (%s, max_batch_size %d, %d connection(s))",
            self.label,
            self._where,
            self.platform,
            self.max_batch_size,
            len(self._channels),
        )

    async def _probe_loop(self) -> None:
        s = self.settings
        request = pb.ModelReadyRequest(name=s.model, version=s.version)
        while True:
            await asyncio.sleep(s.health_interval_s)
            try:
                response = await self._stubs[0].ModelReady(
                    request, timeout=min(_PROBE_TIMEOUT_S, s.health_interval_s), metadata=self._metadata
                )
                healthy, why = bool(response.ready), "the upstream reports the model not ready"
            except grpc.aio.AioRpcError as exc:
                healthy, why = False, f"{exc.code().name}: {exc.details()}"
            if healthy != self.healthy:
                if healthy:
                    log.info("%s: %s is ready again", self.label, self._where)
                else:
                    log.warning("%s: %s is not ready (%s)", self.label, self._where, why)
                self.healthy = healthy

    def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        self.healthy = False
        if self._channels:
            with contextlib.suppress(RuntimeError):  # no running loop: the process is ending anyway
                asyncio.get_running_loop().create_task(self._close_channels())

    async def _close_channels(self) -> None:
        channels, self._channels, self._stubs, self._calls = self._channels, [], [], []
        await asyncio.gather(*(c.close(grace=1.0) for c in channels), return_exceptions=True)

    # -- inference ------------------------------------------------------------------------------
    async def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        raw = await self._call(self._encode(inputs, output_names))
        return self._conform(decode_outputs(self._parse(raw), self.label))

    async def forward(self, encoded: bytes, names_end: int = -1) -> Mapping[str, np.ndarray]:
        """One caller's request, as the caller encoded it, passed through with only the model name and
        version rewritten to the upstream's (``Retarget``; ``names_end``: ``InferenceRequest``'s). The
        answer's outputs are decoded when first read (``ForwardedOutputs``): a caller who only needs the
        upstream's bytes back gets them as they came, unless they need reshaping to the declared shapes
        (then they are decoded at once)."""
        return self._answer(await self._call(self._retarget(encoded, names_end)))

    def start_forward(self, encoded: bytes, deadline_ns: int | None, names_end: int = -1) -> StartedForward | None:
        """``forward``'s call put on its way now, before the caller has checked the request: its answer
        is ``finish_forward``'s, and ``cancel()`` abandons it. ``deadline_ns``: the caller's (or None).
        None when no call can start here (closed, or past the deadline): ``forward`` then reports why."""
        calls = self._calls
        deadline = self._deadline_ns(deadline_ns)
        remaining = (deadline - time.monotonic_ns()) / 1e9
        if not calls or remaining <= 0:
            return None
        payload = self._retarget(encoded, names_end)
        return StartedForward(payload, deadline, self._send(calls, payload, remaining), remaining)

    async def finish_forward(self, started: StartedForward) -> Mapping[str, np.ndarray]:
        """The answer to a ``start_forward`` call (retried as ``forward`` would be)."""
        return self._answer(await self._complete(started.payload, started.deadline_ns, started))

    def _answer(self, raw: bytes) -> Mapping[str, np.ndarray]:
        """A forwarded request's answer, checked: one whose outputs' ranks differ from the declared
        shapes is reshaped (MLServer's [N] as [N, 1]: only the shapes in its head are rewritten, the
        tensors' bytes stay as they are). An answer that starts with the same bytes up to its raw
        contents as the last one checked (``answer_head``: same names, id and output descriptions)
        and the same size (same descriptions, so the same contents' sizes: a cut or padded answer is
        parsed, and refused) is not parsed again: it goes back as it came, or with that answer's
        rewritten head."""
        head = self._checked_head
        if len(raw) == self._checked_size and has_head(raw, head):
            conformed = self._conformed_head
            return ForwardedOutputs(raw if conformed is head else conformed + raw[len(head) :], self.label)
        response = self._parse(raw)
        ranks = self._output_ranks
        if all(len(t.shape) == ranks.get(t.name, -1) for t in response.outputs):
            self._checked_head = self._conformed_head = answer_head(raw, response)
            self._checked_size = len(raw)
            return ForwardedOutputs(raw, self.label, response)
        head = answer_head(raw, response)
        conformed = self._conformed_head_of(response) if head else None
        if conformed is None:  # not a [N, 1] for [N], or not raw contents last: decoded and reshaped
            return self._conform(decode_outputs(response, self.label))
        self._checked_head, self._conformed_head, self._checked_size = head, conformed, len(raw)
        return ForwardedOutputs(conformed + raw[len(head) :], self.label)

    def _conformed_head_of(self, response: pb.ModelInferResponse) -> bytes | None:
        """``response``'s head with each [..., 1] output whose declared rank is one less written without
        its last dimension (the bytes of the tensor are the same); None if any other rank differs."""
        ranks = self._output_ranks
        fixed = pb.ModelInferResponse()
        fixed.CopyFrom(response)
        del fixed.raw_output_contents[:]
        for tensor in fixed.outputs:
            rank = ranks.get(tensor.name, -1)
            if len(tensor.shape) == rank:
                continue
            if rank < 0 or not _is_column(tensor.shape, rank):
                return None
            del tensor.shape[-1]
        return fixed.SerializeToString()

    def _deadline_ns(self, caller_ns: int | None) -> int:
        """The caller's deadline or ``timeout_s`` from now, whichever ends first."""
        own = time.monotonic_ns() + int(self.settings.timeout_s * 1e9)
        return own if caller_ns is None else min(caller_ns, own)

    async def _call(self, payload: bytes) -> bytes:
        """``payload`` (a serialized ModelInferRequest) to the upstream, with retries; its answer's bytes."""
        return await self._complete(payload, self._deadline_ns(DEADLINE_NS.get()), None)

    async def _complete(self, payload: bytes, deadline: int, started: StartedForward | None) -> bytes:
        """The answer to ``payload``: the ``started`` call's if there is one, else a new call's; a call
        that fails UNAVAILABLE is sent again while retries and the deadline allow."""
        s = self.settings
        attempt = 0
        call = started.call if started is not None else None
        remaining = started.timeout_s if started is not None else 0.0
        while True:
            if call is None:
                calls = self._calls
                if not calls:
                    raise UpstreamUnavailable(f"{self.label}: the connection to {self._where} is closed")
                remaining = (deadline - time.monotonic_ns()) / 1e9
                if remaining <= 0:
                    raise DeadlineExceeded(f"{self.label}: the deadline passed before {self._where} answered")
                call = self._send(calls, payload, remaining)
            try:
                return await call
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code is grpc.StatusCode.UNAVAILABLE and attempt < s.retries:
                    backoff = s.retry_backoff_ms / 1e3 * (2**attempt)
                    if time.monotonic_ns() + backoff * 1e9 < deadline:
                        attempt += 1
                        call = None
                        await asyncio.sleep(backoff)
                        continue
                raise self._error(exc, remaining, attempt + 1) from None

    def _send(self, calls: list[Any], payload: bytes, timeout_s: float) -> Any:
        """One call of ``payload`` on the next pooled channel, on its way (``RawUnary.start``), not awaited.
        Inside a traced request (or its batch's span) the call gets a CLIENT span, and its trace context
        goes with it (``traceparent``/``tracestate``), so the upstream's spans continue the trace."""
        unary = calls[next(self._next) % len(calls)]
        parent = current_span()
        if parent is INVALID_SPAN:
            if not tracing.active():  # telemetry off: the call carries nothing of ours
                return unary.start(payload, timeout_s)
            # Not sampled here, and no caller's context (a root request, or a batch of unsampled ones):
            # that decision goes upstream too, so the upstream does not start traces of its own.
            return unary.start(payload, timeout_s, unsampled_metadata())
        span = _tracer.start_span(
            MODEL_INFER_METHOD,
            context=trace.set_span_in_context(parent),
            kind=trace.SpanKind.CLIENT,
            attributes=self._client_attributes,
        )
        carrier = trace_context_metadata(span.get_span_context())
        return TracedCall(unary.start(payload, timeout_s, carrier), span)

    def _parse(self, raw: bytes) -> pb.ModelInferResponse:
        return parse_response(raw, self.label, self._where)

    def _conform(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Match the shapes the upstream declared: MLServer's NumpyCodec answers a [N] tensor as [N, 1]."""
        for spec in self.outputs:
            array = outputs.get(spec.name)
            if array is not None and _is_column(array.shape, len(spec.shape)):
                outputs[spec.name] = array.reshape(array.shape[:-1])
        return outputs

    def _error(self, exc: grpc.aio.AioRpcError, timeout_s: float, attempts: int) -> Exception:
        code, details = exc.code(), exc.details() or ""
        where = self._where
        tries = f" after {attempts} attempt(s)" if attempts > 1 else ""
        if code is grpc.StatusCode.UNAVAILABLE:
            return UpstreamUnavailable(f"{self.label}: {where} is unavailable{tries}: {details}")
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"{self.label}: {where} did not answer within {timeout_s:.3f} s")
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidArgument(f"{self.label}: {where} refused the request: {details}")
        if code is grpc.StatusCode.NOT_FOUND:
            return UpstreamUnavailable(f"{self.label}: {where} is not found there: {details}")
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return ResourceExhausted(f"{self.label}: {where} is overloaded: {details}")
        if code is grpc.StatusCode.CANCELLED:
            return Cancelled(f"{self.label}: the call to {where} was cancelled")
        return EngineError(f"{self.label}: {where} failed: {code.name}: {details}")


def _is_column(shape: Sequence[int], rank: int) -> bool:
    """A declared rank-``rank`` tensor sent as [..., 1] (MLServer's NumpyCodec answers [N] as [N, 1])."""
    return len(shape) == rank + 1 and shape[-1] == 1
