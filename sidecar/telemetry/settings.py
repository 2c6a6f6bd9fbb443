"""Telemetry settings: the ``[telemetry]`` config section merged with the standard ``OTEL_*`` variables.

This is the one place that reads ``OTEL_*`` (once, at start, from the mapping it is given). Order,
first wins: a value set in the sidecar configuration (file, ``SIDECAR_TELEMETRY__*``, flags), then the
signal-specific ``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_*`` variable, then the general ``OTEL_*`` one,
then the OpenTelemetry default. Everything downstream receives explicit values (the SDK classes are
never left to read the environment for a setting we know).

Defaults chosen for a sidecar: traces are exported only when an exporter or an OTLP endpoint is
configured (the specification's "otlp" default would retry against a localhost collector that is
usually not there); metrics always feed the Prometheus endpoint unless it is off.
"""

from __future__ import annotations

import socket
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar import __version__
from sidecar.config import TelemetryConfig
from sidecar.errors import ConfigError

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
PROTOCOLS = ("grpc", "http/protobuf")
TRACE_EXPORTERS = ("otlp", "console", "none")
METRIC_EXPORTERS = ("otlp", "console", "prometheus", "none")
DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
DEFAULT_HTTP_ENDPOINT = "http://localhost:4318"


@dataclass(frozen=True, slots=True)
class OtlpTarget:
    """Where one signal goes over OTLP. ``endpoint`` is the full URL (HTTP: including /v1/<signal>)."""

    protocol: str
    endpoint: str
    headers: tuple[tuple[str, str], ...]
    timeout_s: float
    insecure: bool
    compression: str  # "" or "gzip"

    def describe(self) -> str:
        return f"OTLP/{'gRPC' if self.protocol == 'grpc' else 'HTTP'} {self.endpoint}"


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    enabled: bool
    resource: Mapping[str, str | int | float | bool]
    traces_otlp: OtlpTarget | None
    traces_console: bool
    metrics_otlp: OtlpTarget | None
    metrics_console: bool
    sampler: str
    sampler_ratio: float
    prometheus_host: str
    prometheus_port: int  # -1 = off
    metric_export_interval_ms: int
    metric_export_timeout_ms: int
    span_queue_size: int
    span_batch_size: int
    span_schedule_delay_ms: float
    host_metrics: bool
    gpu_metrics: bool
    gpu_sample_interval_s: float
    shutdown_timeout_s: float
    notes: tuple[str, ...] = field(default=())  # things worth one log line at start

    @property
    def tracing(self) -> bool:
        return self.enabled and (self.traces_otlp is not None or self.traces_console) and self.sampler != "always_off"

    @property
    def metrics(self) -> bool:
        return self.enabled and (self.metrics_otlp is not None or self.metrics_console or self.prometheus_port >= 0)

    def destinations(self) -> list[str]:
        """Human-readable lines: where each signal goes (for the start log and the demo)."""
        if not self.enabled:
            return ["telemetry: off"]
        out = []
        traces = [t.describe() for t in (self.traces_otlp,) if t] + (["console"] if self.traces_console else [])
        sampling = self.sampler + (f" ({self.sampler_ratio:g})" if "ratio" in self.sampler else "")
        out.append(f"traces: {', '.join(traces) + ', sampler ' + sampling if self.tracing else 'off'}")
        metrics = [t.describe() for t in (self.metrics_otlp,) if t] + (["console"] if self.metrics_console else [])
        if metrics:
            metrics[-1] += f" every {self.metric_export_interval_ms / 1000:g} s"
        if self.prometheus_port >= 0:
            metrics.append(f"Prometheus scrape endpoint http://{self.prometheus_host}:{self.prometheus_port}/metrics")
        out.append(f"metrics: {', '.join(metrics) if metrics else 'off'}")
        return out


def resolve(config: TelemetryConfig, environ: Mapping[str, str]) -> TelemetrySettings:
    """Merge ``config`` with the ``OTEL_*`` variables in ``environ``; raise ConfigError on bad values."""
    env = {k: v.strip() for k, v in environ.items() if k.startswith(("OTEL_", "K8S_", "POD_", "KUBERNETES_"))}
    notes: list[str] = []
    enabled = config.enabled and env.get("OTEL_SDK_DISABLED", "").lower() != "true"

    traces_exp = _exporters(config.traces_exporter or env.get("OTEL_TRACES_EXPORTER", ""), TRACE_EXPORTERS, "traces")
    metrics_exp = _exporters(
        config.metrics_exporter or env.get("OTEL_METRICS_EXPORTER", ""), METRIC_EXPORTERS, "metrics"
    )
    if traces_exp is None:
        traces_exp = {"otlp"} if _endpoint_configured(config, env, "TRACES") else set()
    if metrics_exp is None:
        metrics_exp = {"otlp"} if _endpoint_configured(config, env, "METRICS") else set()

    sampler = (config.sampler or env.get("OTEL_TRACES_SAMPLER", "") or "parentbased_always_on").lower()
    if sampler not in SAMPLERS:
        raise ConfigError(f"telemetry.sampler / OTEL_TRACES_SAMPLER {sampler!r} is not one of {', '.join(SAMPLERS)}")
    ratio_text = config.sampler_arg or env.get("OTEL_TRACES_SAMPLER_ARG", "")
    ratio = 1.0
    if "ratio" in sampler and ratio_text:
        try:
            ratio = float(ratio_text)
        except ValueError:
            raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG {ratio_text!r} must be a number in [0, 1]") from None
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG {ratio_text!r} must be in [0, 1]")

    prom_port = config.metrics_port
    prom_host = config.metrics_host
    if "prometheus" in metrics_exp and prom_port < 0:
        prom_port = _int(env.get("OTEL_EXPORTER_PROMETHEUS_PORT", "") or "9464", "OTEL_EXPORTER_PROMETHEUS_PORT")
        prom_host = env.get("OTEL_EXPORTER_PROMETHEUS_HOST", "") or "localhost"

    interval = config.metric_export_interval_ms or _int(
        env.get("OTEL_METRIC_EXPORT_INTERVAL", "") or "60000", "OTEL_METRIC_EXPORT_INTERVAL"
    )
    export_timeout = _int(env.get("OTEL_METRIC_EXPORT_TIMEOUT", "") or "30000", "OTEL_METRIC_EXPORT_TIMEOUT")
    queue = config.span_queue_size or _int(env.get("OTEL_BSP_MAX_QUEUE_SIZE", "") or "2048", "OTEL_BSP_MAX_QUEUE_SIZE")
    batch = config.span_batch_size or _int(
        env.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "") or "512", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"
    )
    delay = config.span_schedule_delay_ms or _float(
        env.get("OTEL_BSP_SCHEDULE_DELAY", "") or "5000", "OTEL_BSP_SCHEDULE_DELAY"
    )
    if queue <= 0 or batch <= 0 or interval <= 0 or delay <= 0:
        raise ConfigError("span queue/batch sizes, schedule delay and metric export interval must be positive")
    batch = min(batch, queue)

    return TelemetrySettings(
        enabled=enabled,
        resource=_resource(config, env, environ),
        traces_otlp=_target(config, env, "TRACES", "traces") if "otlp" in traces_exp else None,
        traces_console="console" in traces_exp,
        metrics_otlp=_target(config, env, "METRICS", "metrics") if "otlp" in metrics_exp else None,
        metrics_console="console" in metrics_exp,
        sampler=sampler,
        sampler_ratio=ratio,
        prometheus_host=prom_host,
        prometheus_port=prom_port,
        metric_export_interval_ms=interval,
        metric_export_timeout_ms=export_timeout,
        span_queue_size=queue,
        span_batch_size=batch,
        span_schedule_delay_ms=delay,
        host_metrics=config.host_metrics,
        gpu_metrics=config.gpu_metrics,
        gpu_sample_interval_s=config.gpu_sample_interval_s,
        shutdown_timeout_s=config.shutdown_timeout_s,
        notes=tuple(notes),
    )


def _exporters(text: str, allowed: tuple[str, ...], signal: str) -> set[str] | None:
    if not text:
        return None
    names = {n.strip().lower() for n in text.split(",") if n.strip()}
    bad = names - set(allowed)
    if bad:
        raise ConfigError(f"{signal} exporter(s) {', '.join(sorted(bad))} not supported; use {', '.join(allowed)}")
    return names - {"none"}


def _endpoint_configured(config: TelemetryConfig, env: Mapping[str, str], signal: str) -> bool:
    return bool(config.otlp_endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(_var(signal, "ENDPOINT")))


def _var(signal: str, key: str) -> str:
    return f"OTEL_EXPORTER_OTLP_{signal}_{key}"


def _target(config: TelemetryConfig, env: Mapping[str, str], signal: str, path: str) -> OtlpTarget:
    def pick(key: str) -> str:
        return env.get(_var(signal, key), "") or env.get(f"OTEL_EXPORTER_OTLP_{key}", "")

    protocol = (config.otlp_protocol or pick("PROTOCOL") or "grpc").lower()
    if protocol not in PROTOCOLS:
        raise ConfigError(f"OTLP protocol {protocol!r} is not supported; use {' or '.join(PROTOCOLS)}")
    if config.otlp_endpoint:
        endpoint, specific = config.otlp_endpoint, False
    elif env.get(_var(signal, "ENDPOINT")):
        endpoint, specific = env[_var(signal, "ENDPOINT")], True
    else:
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        endpoint, specific = endpoint or (DEFAULT_GRPC_ENDPOINT if protocol == "grpc" else DEFAULT_HTTP_ENDPOINT), False
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    parsed = urllib.parse.urlparse(endpoint)
    if not parsed.hostname:
        raise ConfigError(f"OTLP endpoint {endpoint!r} has no host")
    if protocol == "http/protobuf" and not specific:
        # The general endpoint is a base URL: the specification appends the signal's path.
        endpoint = endpoint.rstrip("/") + f"/v1/{path}"
    timeout_text = pick("TIMEOUT")
    timeout_ms = config.otlp_timeout_ms or (_float(timeout_text, "OTEL_EXPORTER_OTLP_TIMEOUT") if timeout_text else 1e4)
    insecure_text = pick("INSECURE").lower()
    insecure = parsed.scheme == "http" if not insecure_text else insecure_text == "true"
    compression = pick("COMPRESSION").lower()
    if compression not in ("", "none", "gzip"):
        raise ConfigError(f"OTLP compression {compression!r} is not supported; use gzip or none")
    return OtlpTarget(
        protocol=protocol,
        endpoint=endpoint,
        headers=_headers(config.otlp_headers or pick("HEADERS")),
        timeout_s=timeout_ms / 1000.0,
        insecure=insecure,
        compression="" if compression == "none" else compression,
    )


def _headers(text: str) -> tuple[tuple[str, str], ...]:
    """W3C-baggage-like ``k1=v1,k2=v2`` with percent-encoded values (the OTEL_EXPORTER_OTLP_HEADERS format)."""
    out = []
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"OTLP header {item.strip()!r} is not key=value")
        out.append((urllib.parse.unquote(key.strip()).lower(), urllib.parse.unquote(value.strip())))
    return tuple(out)


def _resource(config: TelemetryConfig, env: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for item in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            attrs[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    attrs["service.name"] = config.service_name or env.get("OTEL_SERVICE_NAME", "") or attrs.get("service.name", "")
    attrs["service.name"] = attrs["service.name"] or "sidecar"
    attrs.setdefault("service.version", __version__)
    attrs.setdefault("service.instance.id", str(uuid.uuid4()))
    attrs.setdefault("host.name", environ.get("HOSTNAME", "") or socket.gethostname())
    pod = env.get("K8S_POD_NAME") or env.get("POD_NAME")
    namespace = env.get("K8S_NAMESPACE_NAME") or env.get("POD_NAMESPACE")
    node = env.get("K8S_NODE_NAME")
    if pod:
        attrs.setdefault("k8s.pod.name", pod)
    if namespace:
        attrs.setdefault("k8s.namespace.name", namespace)
    if node:
        attrs.setdefault("k8s.node.name", node)
    attrs.setdefault("telemetry.sdk.language", "python")
    return attrs


def _int(text: str, name: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {text!r}") from None


def _float(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {text!r}") from None
