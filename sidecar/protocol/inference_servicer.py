"""``inference.GRPCInferenceService``: a thin adapter over the router and the repository.

Each RPC decodes, awaits the core, encodes. Errors from ``sidecar.errors`` become their gRPC status
with the error's message; anything unexpected becomes INTERNAL and is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import grpc
from google.protobuf.message import DecodeError

from sidecar import __version__
from sidecar.engine.repository import ModelVersion, Repository
from sidecar.errors import InvalidArgument, ServerDraining, SidecarError
from sidecar.lifecycle import Lifecycle
from sidecar.protocol._generated import grpc_service_pb2 as pb
from sidecar.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from sidecar.protocol._generated import model_config_pb2 as mc
from sidecar.protocol.codec import decode_request, encode_response, encode_stream_response, set_parameter
from sidecar.protocol.registration import call_metadata
from sidecar.protocol.request_plans import inputs_for, learn, planned, read_head
from sidecar.protocol.status import grpc_status
from sidecar.protocol.streams import answer_in_order
from sidecar.routing.router import Router
from sidecar.types import DATATYPE_TO_DTYPE, InferenceRequest, InferenceResponse

log = logging.getLogger(__name__)

_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE = _SERVICE.full_name  # "inference.GRPCInferenceService"
EXTENSIONS = ("model_repository", "statistics", "model_configuration", "binary_tensor_data", "parameters")


def _deadline_ns(context: grpc.aio.ServicerContext) -> int | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return time.monotonic_ns() + int(remaining * 1e9)


def _parse_infer_request(encoded: bytes) -> pb.ModelInferRequest:
    try:
        return pb.ModelInferRequest.FromString(encoded)
    except DecodeError as exc:
        raise InvalidArgument(f"the request is not a valid ModelInferRequest message: {exc}") from None


def _serialize(response: object) -> bytes:
    """Responses written as bytes by the codec pass as they are; messages are serialized."""
    return response if response.__class__ is bytes else response.SerializeToString()  # type: ignore[attr-defined]


def add_to_server(servicer: object, server: grpc.aio.Server) -> None:
    """Register ``servicer``'s methods as ``inference.GRPCInferenceService`` on ``server``, as a generic
    handler only (see ``sidecar.protocol.registration``).

    As the generated ``add_GRPCInferenceServiceServicer_to_server``, except that ``ModelInfer`` takes the
    request's bytes (the servicer parses them and keeps them, so that an upstream version forwards them as
    they are), and ``ModelInfer`` and ``ModelStreamInfer`` answer bytes written by the codec (or an
    upstream's answer passed through) as well as messages."""
    handlers = {}
    for method in _SERVICE.methods:
        call = getattr(servicer, method.name)
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        if method.name == "ModelInfer":
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                call, request_deserializer=None, response_serializer=_serialize
            )
        elif method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                call, request_deserializer=request_type.FromString, response_serializer=_serialize
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                call, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def _routing_key(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in call_metadata(context):
        if key == "x-routing-key":
            return value if isinstance(value, str) else value.decode()
    return None


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, router: Router, repository: Repository, lifecycle: Lifecycle, server_name: str = "sidecar"
    ) -> None:
        self._router = router
        self._repository = repository
        self._lifecycle = lifecycle
        self._server_name = server_name

    # -- health-like ------------------------------------------------------------------------
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._lifecycle.ready)

    async def ModelReady(self, request, context):
        try:
            mv = self._repository.get(request.name, request.version)
            return pb.ModelReadyResponse(ready=mv.ready and self._lifecycle.ready)
        except SidecarError as exc:
            if exc.status in ("UNAVAILABLE", "NOT_FOUND"):  # a readiness probe: unknown is simply not ready
                return pb.ModelReadyResponse(ready=False)
            await self._abort(context, exc)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=self._server_name, version=__version__, extensions=EXTENSIONS)

    # -- model metadata -------------------------------------------------------------------------
    async def ModelMetadata(self, request, context):
        try:
            mv = self._repository.get(request.name, request.version)
            self._require_engine(mv)
            versions = [v.version_str for v in self._repository.versions(request.name) if v.ready]
        except SidecarError as exc:
            await self._abort(context, exc)
        engine = mv.engine
        resp = pb.ModelMetadataResponse(name=mv.name, versions=versions, platform=engine.platform)
        for spec in engine.inputs:
            resp.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        for spec in engine.outputs:
            resp.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        for key, value in self._version_parameters(mv).items():
            set_parameter(resp.parameters[key], value)
        return resp

    async def ModelConfig(self, request, context):
        try:
            mv = self._repository.get(request.name, request.version)
            self._require_engine(mv)
        except SidecarError as exc:
            await self._abort(context, exc)
        engine = mv.engine
        mbs = engine.max_batch_size
        cfg = mc.ModelConfig(name=mv.name, platform=engine.platform, backend="onnxruntime", max_batch_size=mbs)
        for spec in engine.inputs:
            cfg.input.add(
                name=spec.name, data_type=_config_type(spec.datatype), dims=spec.shape[1:] if mbs else spec.shape
            )
        for spec in engine.outputs:
            cfg.output.add(
                name=spec.name, data_type=_config_type(spec.datatype), dims=spec.shape[1:] if mbs else spec.shape
            )
        settings = mv.settings
        if mbs and settings is not None and settings.enabled:
            cfg.dynamic_batching.max_queue_delay_microseconds = int(settings.max_queue_delay_ms * 1000)
            cfg.dynamic_batching.preferred_batch_size.extend(settings.preferred_batch_sizes)
        for key, value in self._version_parameters(mv).items():
            cfg.parameters[key].string_value = str(value)
        return pb.ModelConfigResponse(config=cfg)

    def _version_parameters(self, mv: ModelVersion) -> dict[str, object]:
        params: dict[str, object] = dict(mv.metadata.as_parameters())
        params["version"] = mv.version_str
        params["provider"] = mv.engine.provider if mv.engine else ""
        params["warmup_ms"] = round(mv.warmup_s * 1e3, 3)
        if mv.settings is not None:
            params["max_batch_size"] = mv.engine.max_batch_size if mv.engine else 0
            params["batching"] = json.dumps(
                {"enabled": mv.settings.enabled, "max_queue_delay_ms": mv.settings.max_queue_delay_ms}
            )
        return params

    @staticmethod
    def _require_engine(mv: ModelVersion) -> None:
        if mv.engine is None:
            from sidecar.errors import ModelNotReady

            raise ModelNotReady(f"{mv.label} is {mv.state.value}")

    # -- inference ------------------------------------------------------------------------------
    def _check_accepting(self) -> None:
        if self._lifecycle.draining:
            raise ServerDraining("the server is draining and accepts no new requests")

    async def _infer(self, msg: pb.ModelInferRequest, context) -> InferenceResponse:
        """One request of a stream (ModelInfer checks and decodes its own)."""
        self._check_accepting()
        return await self._router.dispatch(self._decoded(msg, context))

    def _sticky_key(self, model_name: str, model_version: str, context) -> str | None:
        """The sticky key from the call's metadata, read only where a traffic policy will use it."""
        if model_version or self._router.policy(model_name) is None:
            return None
        return _routing_key(context)

    def _decoded(self, msg: pb.ModelInferRequest, context, encoded: bytes | None = None) -> InferenceRequest:
        # Tensors from the caller's bytes are decoded when first read (the version's signature check),
        # so that a request forwarded to an upstream is on its way first.
        key = self._sticky_key(msg.model_name, msg.model_version, context)
        return decode_request(msg, _deadline_ns(context), key, encoded, lazy_inputs=encoded is not None)

    def _decode_encoded(self, encoded: bytes, context) -> InferenceRequest:
        """The request in ``encoded`` (as it came off the wire): read by its head's plan when there is
        one (``request_plans``), else parsed and decoded, and its head planned for the next ones."""
        head = read_head(encoded)
        if head is None:
            return self._decoded(_parse_infer_request(encoded), context, encoded)
        found = planned(encoded, head)
        if found is None:
            msg = _parse_infer_request(encoded)
            plan = learn(head, msg)
            if plan is None:
                return self._decoded(msg, context, encoded)
            found = plan, msg.id, inputs_for(encoded, head, plan)
        plan, request_id, inputs = found
        return InferenceRequest(
            model_name=plan.model_name,
            model_version=plan.model_version,
            id=request_id,
            inputs=inputs,
            requested_outputs=plan.requested,
            parameters={},
            deadline_ns=_deadline_ns(context),
            routing_key=self._sticky_key(plan.model_name, plan.model_version, context),
            encoded=encoded,
            names_end=head.names_end,
        )

    async def ModelInfer(self, request, context):
        """``request``: the serialized message as it came off the wire (see ``add_to_server``), or a message."""
        self._lifecycle.enter()
        try:
            self._check_accepting()
            if request.__class__ is bytes or request.__class__ is memoryview:  # (a relayed one's: a view)
                decoded = self._decode_encoded(request, context)
            else:
                decoded = self._decoded(request, context)
            return encode_response(await self._router.dispatch(decoded))
        except SidecarError as exc:
            await self._abort(context, exc)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            log.exception("ModelInfer failed unexpectedly")
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._lifecycle.leave()

    async def ModelStreamInfer(self, request_iterator, context):
        """Requests of one stream run concurrently; responses come back in request order."""
        async for answer in answer_in_order(request_iterator, lambda msg: self._stream_answer(msg, context)):
            yield answer

    async def stream_message(self, encoded: bytes, context) -> bytes:
        """One ``ModelStreamInfer`` message as its bytes came to an ingest worker (``sidecar.ingest``),
        answered as ``ModelStreamInfer`` answers it: the serialized ``ModelStreamInferResponse``."""
        try:
            msg = _parse_infer_request(encoded)
        except InvalidArgument as exc:
            return pb.ModelStreamInferResponse(error_message=f"[{exc.status}] {exc.message}").SerializeToString()
        return _serialize(await self._stream_answer(msg, context))

    async def _stream_answer(self, msg: pb.ModelInferRequest, context) -> pb.ModelStreamInferResponse | bytes:
        """One stream message's answer; a failure is its error message (the stream goes on)."""
        self._lifecycle.enter()
        try:
            return encode_stream_response(await self._infer(msg, context))
        except SidecarError as exc:
            return pb.ModelStreamInferResponse(
                error_message=f"[{exc.status}] {exc.message}",
                infer_response=pb.ModelInferResponse(id=msg.id, model_name=msg.model_name),
            )
        except Exception as exc:
            log.exception("stream inference failed unexpectedly")
            return pb.ModelStreamInferResponse(error_message=f"[INTERNAL] {type(exc).__name__}: {exc}")
        finally:
            self._lifecycle.leave()

    # -- statistics -----------------------------------------------------------------------------
    async def ModelStatistics(self, request, context):
        try:
            if request.name:
                versions = self._repository.versions(request.name)
                if request.version:
                    versions = [self._repository.get(request.name, request.version)]
            else:
                versions = self._repository.all_versions()
        except SidecarError as exc:
            await self._abort(context, exc)
        resp = pb.ModelStatisticsResponse()
        for mv in versions:
            s = mv.stats
            ms = resp.model_stats.add(
                name=mv.name,
                version=mv.version_str,
                last_inference=s.last_inference_ms,
                inference_count=s.inference_count,
                execution_count=s.execution_count,
            )
            st = ms.inference_stats
            for field in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
                d = getattr(s, field)
                getattr(st, field).count = d.count
                getattr(st, field).ns = d.ns
            for size in sorted(s.batches):
                b = s.batches[size]
                bs = ms.batch_stats.add(batch_size=size)
                for field in ("compute_input", "compute_infer", "compute_output"):
                    d = getattr(b, field)
                    getattr(bs, field).count = d.count
                    getattr(bs, field).ns = d.ns
        return resp

    # -- repository -----------------------------------------------------------------------------
    async def RepositoryIndex(self, request, context):
        resp = pb.RepositoryIndexResponse()
        for e in self._repository.index(ready_only=request.ready):
            resp.models.add(name=e.name, version=e.version, state=e.state, reason=e.reason)
        return resp

    async def RepositoryModelLoad(self, request, context):
        try:
            await self._repository.load_model(request.model_name, _version_parameter(request))
        except SidecarError as exc:
            await self._abort(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        try:
            await self._repository.unload_model(request.model_name, _version_parameter(request))
        except SidecarError as exc:
            await self._abort(context, exc)
        return pb.RepositoryModelUnloadResponse()

    @staticmethod
    async def _abort(context, exc: SidecarError) -> None:
        await context.abort(grpc_status(exc), exc.message)


def _version_parameter(request) -> str | None:
    p = request.parameters.get("version")
    if p is None:
        return None
    which = p.WhichOneof("parameter_choice")
    if which != "string_param":
        raise InvalidArgument("parameter 'version' must be a string such as '1.2.0'")
    return p.string_param


_CONFIG_TYPES = {name: getattr(mc, "TYPE_" + ("STRING" if name == "BYTES" else name)) for name in DATATYPE_TO_DTYPE}


def _config_type(datatype: str) -> int:
    return _CONFIG_TYPES.get(datatype, mc.TYPE_INVALID)
