"""Composition root: builds the stages in path order and owns their lifecycle.

    protocol (gRPC servicers, health, reflection)
      -> routing (Router)
        -> batching (per-version scheduler)
          -> engine (ONNX Runtime sessions in a thread pool)

``start()`` returns once the ports are bound and the repository's models are loaded and warm;
``drain()`` turns health NOT_SERVING, refuses new work and waits for in-flight requests;
``stop()`` closes the servers, the versions (flushing their batchers) and the engines.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sidecar.batching.dynamic import DynamicBatcher
from sidecar.batching.scheduler import BatchSettings, DirectScheduler, Scheduler
from sidecar.config import ServerConfig, SidecarConfig
from sidecar.engine.base import Engine
from sidecar.engine.repository import ModelVersion, Repository
from sidecar.engine.statistics import VersionStatistics
from sidecar.errors import ConfigError
from sidecar.ingest.relay import IngestWorkers
from sidecar.lifecycle import Lifecycle
from sidecar.monitoring.monitor import Monitoring
from sidecar.protocol import native_front
from sidecar.protocol.inference_servicer import SERVICE as INFERENCE_SERVICE
from sidecar.protocol.inference_servicer import InferenceServicer
from sidecar.protocol.inference_servicer import add_to_server as add_inference_servicer
from sidecar.protocol.interceptors import observed
from sidecar.protocol.monitoring_servicer import add_monitoring_servicer
from sidecar.protocol.native_front import NativeFront
from sidecar.protocol.reflection import HEALTH_SERVICE, enable_reflection
from sidecar.protocol.registration import generic_only
from sidecar.protocol.routing_servicer import add_routing_servicer
from sidecar.routing import build_routing
from sidecar.telemetry.settings import resolve as resolve_telemetry
from sidecar.telemetry.stage import Telemetry

log = logging.getLogger(__name__)


def make_scheduler(
    engine: Engine, settings: BatchSettings, stats: VersionStatistics, model: str, version: str
) -> Scheduler:
    """Dynamic batching for versions with a batch dimension when enabled; otherwise straight through."""
    if settings.enabled and engine.max_batch_size > 1:
        return DynamicBatcher(engine, settings, stats, model, version)
    return DirectScheduler(engine, stats, model, version)


class Sidecar:
    def __init__(self, config: SidecarConfig, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self._environ = os.environ if environ is None else environ  # OTEL_* are read at start()
        self.telemetry: Telemetry | None = None
        self.lifecycle = Lifecycle()
        self.executor = ThreadPoolExecutor(max(1, config.engine.executor_threads), thread_name_prefix="engine")
        self.repository = Repository(config, self.executor, make_scheduler)
        self.router, self.routing = build_routing(config, self.repository)
        self.health = health.aio.HealthServicer()
        self.repository.on_change(self._on_version_change)
        self._server: grpc.aio.Server | None = None  # the inference port on grpc.aio, or
        self._native: NativeFront | None = None  # on the native front end (server.front)
        self.front = ""  # which of the two (start)
        self._control: grpc.aio.Server | None = None
        self.ingest: IngestWorkers | None = None  # server.ingest_workers > 0
        self._control_registrations: list[Callable[[grpc.aio.Server], str]] = []
        self._background: set[asyncio.Future] = set()
        self.grpc_port = 0
        self.control_port = 0
        self.add_control_service(lambda server: add_routing_servicer(server, self.routing, config.server.control_token))
        # Drift and data-quality monitoring: attaches to every version before it reports READY.
        self.monitoring = Monitoring(config.monitoring, self.repository)
        if config.monitoring.enabled:
            self.add_control_service(
                lambda server: add_monitoring_servicer(server, self.monitoring, config.server.control_token)
            )

    def add_control_service(self, register: Callable[[grpc.aio.Server], str]) -> None:
        """Stages add their control-API servicers here before start(); ``register`` returns the service name."""
        self._control_registrations.append(register)

    async def start(self) -> None:
        cfg = self.config.server
        options = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a port clash must fail...
        ]
        self.front, why = choose_front(cfg)
        self.telemetry = Telemetry(resolve_telemetry(self.config.telemetry, self._environ))
        self.telemetry.start(self.repository)
        self.telemetry.observe_monitoring(self.monitoring)  # drift, data-quality and alert metrics
        self.telemetry.observe_shadows(self.router.shadows)  # shadow versions against their primaries
        servicer = InferenceServicer(self.router, self.repository, self.lifecycle)
        inference = observed(servicer, INFERENCE_SERVICE, self.telemetry.tracer, self.telemetry.rpc_durations)

        def register(target: object) -> None:  # the inference port's services (relayed ones too)
            add_inference_servicer(inference, target)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, target)

        self.register_inference = register  # what ingest workers relay to (sidecar.ingest)
        self.stream_message = servicer.stream_message  # ... and each message of their streams
        address = f"{_host(cfg.grpc_host)}:{cfg.grpc_port}"
        if self.front == "native":  # gRPC's C++ server takes the calls (sidecar.protocol.native_front)
            native = NativeFront()
            register(native)
            if cfg.reflection:
                enable_reflection(native, (INFERENCE_SERVICE, HEALTH_SERVICE))
            await self._set_server_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            self.grpc_port = await native.start(address, cfg.max_message_bytes)  # OSError: cannot bind
            self._native = native
        else:
            # ... except where ingest workers share the inference port with this process.
            server = grpc.aio.server(options=[*options[:2], ("grpc.so_reuseport", int(cfg.ingest_workers > 0))])
            # every registered method would cost every call; traced calls read their metadata once (registration)
            registrar = generic_only(server, tap_metadata=self.telemetry.tracer is not None)
            register(registrar)
            if cfg.reflection:
                enable_reflection(registrar, (INFERENCE_SERVICE, HEALTH_SERVICE))
            try:  # grpcio raises RuntimeError ("Failed to bind to address ...") where the port is taken
                self.grpc_port = server.add_insecure_port(address)
            except RuntimeError:
                self.grpc_port = 0
            if self.grpc_port == 0:
                raise OSError(f"cannot bind the gRPC port {cfg.grpc_host}:{cfg.grpc_port}")
            await self._set_server_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            await server.start()
            self._server = server
        log.info(
            "Open Inference Protocol gRPC API listening on %s:%d (front end: %s, %s)",
            cfg.grpc_host,
            self.grpc_port,
            self.front,
            why,
        )
        if cfg.ingest_workers:
            self.ingest = IngestWorkers(
                cfg.ingest_workers,
                register,
                servicer.stream_message,
                cfg.grpc_host,
                cfg.max_message_bytes,
                shared_memory_bytes=cfg.ingest_shared_memory_bytes,
            )
            await self.ingest.start(self.grpc_port)
            self.telemetry.observe_ingest(self.ingest)
        if self._control_registrations and cfg.control_port >= 0:
            control = grpc.aio.server(options=options)
            control_registrar = generic_only(control)
            names = [register(control_registrar) for register in self._control_registrations]
            if cfg.reflection:
                enable_reflection(control_registrar, names)
            self.control_port = control.add_insecure_port(f"{_host(cfg.control_host)}:{cfg.control_port}")
            await control.start()
            self._control = control
            log.info("control API listening on %s:%d", cfg.control_host, self.control_port)
        await self.monitoring.start()
        if self.config.repository.load_on_start and self.repository.root is not None:
            await self.repository.load_all()
        self.routing.start()  # traffic policies: state file, then config (after the models are loaded)
        self.router.start()
        for entry in self.repository.index():
            if entry.state != "READY":
                log.warning("not serving %s %s: %s", entry.name, entry.version or "-", entry.reason)
        self.lifecycle.started = True
        await self._set_server_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "sidecar ready: %d model version(s) serving", sum(1 for e in self.repository.index() if e.state == "READY")
        )

    async def _set_server_health(self, status: int) -> None:
        await self.health.set("", status)
        await self.health.set(INFERENCE_SERVICE, status)

    def _on_version_change(self, mv: ModelVersion) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        try:
            any_ready = any(v.ready for v in self.repository.versions(mv.name))
        except Exception:
            any_ready = False
        for service, status in ((f"{mv.name}/{mv.version_str}", mv.ready), (mv.name, any_ready)):
            task = asyncio.ensure_future(self.health.set(service, serving if status else not_serving))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Refuse new requests, report NOT_SERVING, wait for in-flight requests. True if all finished."""
        timeout = self.config.server.drain_timeout_s if timeout_s is None else timeout_s
        self.lifecycle.draining = True
        if self.ingest is not None:
            self.ingest.draining = True
        await self.health.enter_graceful_shutdown()
        log.info("draining: %d request(s) in flight", self.lifecycle.inflight)
        done = await self.lifecycle.wait_idle(timeout)
        if not done:
            log.warning("drain timeout after %.1f s with %d request(s) in flight", timeout, self.lifecycle.inflight)
        return done

    async def stop(self, grace_s: float = 1.0) -> None:
        if self.ingest is not None:  # first: they finish the calls they hold, relayed to this process
            await self.ingest.stop()
        if self._server is not None:
            await self._server.stop(grace_s)
        if self._native is not None:
            await self._native.stop(grace_s)
        if self._control is not None:
            await self._control.stop(grace_s)
        await self.router.stop()  # shadow copies are dropped, never waited for
        await self.repository.close()
        await self.monitoring.close()  # evaluates the windows closed so far, stops its task
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.telemetry is not None:
            await asyncio.to_thread(self.telemetry.shutdown)  # flush spans and metrics, bounded
        log.info("sidecar stopped")

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
        if self._native is not None:
            await self._native.wait_for_termination()


def choose_front(cfg: ServerConfig) -> tuple[str, str]:
    """("native" or "grpc.aio", why) for ``server.front``: auto is native where it is built and no ingest
    workers share the port (they need grpc.aio's port sharing)."""
    if cfg.front == "grpc.aio":
        return "grpc.aio", "server.front"
    if cfg.ingest_workers > 0:
        return "grpc.aio", "ingest workers share the port"
    if not native_front.AVAILABLE:
        if cfg.front == "native":
            raise ConfigError("server.front = native, but the native front end is not built (needs libgrpc++-dev)")
        return "grpc.aio", "the native front end is not built (libgrpc++-dev was missing at install)"
    return "native", "server.front" if cfg.front == "native" else "auto: built"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
