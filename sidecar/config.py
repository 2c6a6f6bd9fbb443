"""The whole configuration as frozen, validated data, read once at start.

Sources, later ones winning: defaults below < config file (TOML or YAML) < environment variables
``SIDECAR_<SECTION>__<KEY>`` (e.g. ``SIDECAR_BATCHING__MAX_QUEUE_DELAY_MS=2``) < command-line flags.
Every field carries a ``doc`` that ``sidecar serve --help`` prints, so the help is the reference.

Nothing else in the package reads ``os.environ`` for its own settings (the OpenTelemetry
``OTEL_*`` variables are read by the telemetry stage, where the standard says they belong).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar import grpc_io
from sidecar.errors import ConfigError

ENV_PREFIX = "SIDECAR_"
CUDNN_CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
SHAPE_BUCKETS = ("auto", "off", "pad", "sessions")


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"doc": text}, **kw)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    grpc_host: str = _doc("Address the inference gRPC server binds.", default="0.0.0.0")
    grpc_port: int = _doc("Port of the Open Inference Protocol gRPC API (Triton's default).", default=8001)
    max_message_bytes: int = _doc(
        "Largest gRPC message accepted or sent; larger requests get RESOURCE_EXHAUSTED.",
        default=64 * 1024 * 1024,
    )
    drain_timeout_s: float = _doc(
        "On SIGTERM/SIGINT: how long in-flight requests may take to finish before exit.", default=30.0
    )
    reflection: bool = _doc("Serve gRPC server reflection.", default=True)
    control_host: str = _doc("Address of the control API (loopback only by default).", default="127.0.0.1")
    control_port: int = _doc("Port of the sidecar control API (status, drift, routing); 0 = off.", default=8003)
    control_token: str = _doc("Bearer token required by the control API; empty = none.", default="")
    grpc_io: str = _doc(
        "gRPC's socket I/O for `sidecar serve`: poller (socket I/O on the thread that polls gRPC's completions: "
        "~0.15 ms less per gRPC hop for a lone request), event_engine (gRPC's default since grpcio 1.80, socket "
        "I/O on gRPC's threads: ~7 % more requests/s at concurrency 64 with local models on 2 cores) or auto: "
        "poller when every version in the repository at start is an upstream, else event_engine. Left to "
        "GRPC_EXPERIMENTS when that is set (sidecar/grpc_io.py).",
        default="auto",
    )
    front: str = _doc(
        "What takes the inference port's calls: native (gRPC's C++ server; each call queued for the event loop, "
        "which runs the same handlers: ~5x less gRPC CPU per request than grpc.aio, README Performance), "
        "grpc.aio, or auto: native where it was built (libgrpc++-dev at install) and no ingest workers run.",
        default="auto",
    )
    ingest_workers: int = _doc(
        "Extra processes that take gRPC calls on the inference port beside this one (SO_REUSEPORT: the kernel "
        "spreads client connections over them) and relay each call to it over a Unix socket, so that gRPC's "
        "per-call work (HTTP/2, copying each message) spreads over cores while models, batching, routing and "
        "monitoring stay in this process. For large tensors on a many-core machine where the native front end "
        "(`server.front`) is not built: on a GPU it serves image-sized requests better without workers "
        "(Performance, GPU); 0 = off (sidecar/ingest).",
        default=0,
    )
    ingest_shared_memory_bytes: int = _doc(
        "Each ingest worker's shared memory under /dev/shm (reserved at start), through which requests of "
        "64 KiB or more reach this process without a copy through the socket; 0 = socket only. A worker "
        "whose /dev/shm cannot hold it uses the socket alone.",
        default=64 * 1024 * 1024,
    )
    gc_gen0_threshold: int = _doc(
        "Allocations between the cyclic garbage collector's young-generation collections while `sidecar serve` "
        "serves (Python's default: 700). Each one walks every object of the requests in flight and finds nothing "
        "to collect (the request path makes no reference cycles): at 700 that cost 3-6 us a request at "
        "concurrency 64 on 2 cores (README Performance, garbage collection). 0 = leave Python's setting.",
        default=10_000,
    )

    def __post_init__(self) -> None:
        grpc_io.check(self.grpc_io)
        if self.gc_gen0_threshold < 0:
            raise ValueError(f"server.gc_gen0_threshold must be 0 or more, not {self.gc_gen0_threshold}")
        if self.front not in ("auto", "native", "grpc.aio"):
            raise ValueError(f"server.front must be auto, native or grpc.aio, not {self.front!r}")
        if self.ingest_shared_memory_bytes < 0:
            raise ValueError(
                f"server.ingest_shared_memory_bytes must be 0 or more, not {self.ingest_shared_memory_bytes}"
            )
        if self.ingest_workers < 0:
            raise ValueError(f"server.ingest_workers must be 0 or more, not {self.ingest_workers}")


DEFAULT_CONTROL = f"{ServerConfig().control_host}:{ServerConfig().control_port}"  # where the CLI's clients look


@dataclass(frozen=True, slots=True)
class RepositoryConfig:
    path: str = _doc("Model repository: <path>/<model>/<semver>/model.onnx [+ model.json|toml].", default="")
    load_on_start: bool = _doc("Load every model found at start (else load through the API).", default=True)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    providers: tuple[str, ...] = _doc(
        "ONNX Runtime execution providers in order of preference; unavailable ones are skipped, "
        "CPU is always the last resort.",
        default=("CUDAExecutionProvider", "CPUExecutionProvider"),
    )
    intra_op_threads: int = _doc(
        "ONNX Runtime intra-op threads per session; 0 = ONNX Runtime's default (one per core). 1 by default: a "
        "sidecar's models are small or on the GPU, and waking a CPU thread pool per run costs more server CPU "
        "per request than it saves (measured in bench/).",
        default=1,
    )
    spin_wait: bool = _doc(
        "Let ONNX Runtime's intra-op threads spin while waiting for work. Off by default: spinning burns CPU "
        "that the sidecar's own request handling needs (measured in bench/).",
        default=False,
    )
    inline_max_us: float = _doc(
        "A one-row run measured faster than this runs on the event loop itself instead of a pool thread "
        "(the hand-off to a thread and back costs about 50-100 us of CPU and latency, more than a small "
        "model's run); only when it would run alone anyway (batching off, or a batch of one). 0 = never.",
        default=100.0,
    )
    executor_threads: int = _doc(
        "Threads that run model sessions off the event loop (shared by all versions).", default=4
    )
    warmup_batch_sizes: tuple[int, ...] = _doc(
        "Batch sizes run before a version reports ready; empty = 1 and the max batch size (powers of two up to "
        "it where shape_buckets pads batches).",
        default=(),
    )
    warmup_runs: int = _doc("Warm-up inferences per batch size.", default=2)
    cudnn_conv_algo_search: str = _doc(
        "How the CUDA provider picks cuDNN convolution algorithms (Triton's onnxruntime backend parameter of the "
        "same name): EXHAUSTIVE, HEURISTIC or DEFAULT. HEURISTIC by default: its plans are as fast (ResNet-50 on "
        "an H200 at batch 128: 4,693 rows/s against 4,352 with ONNX Runtime's default, EXHAUSTIVE) and cheaper "
        "to make, which a convolution does again for every new input shape.",
        default="HEURISTIC",
    )
    shape_buckets: str = _doc(
        "Batch sizes a session runs at: off (any), pad (a batch is padded with zero rows up to the next "
        "warm-up batch size; outputs are cut back to the real rows), sessions (pad, and each of those sizes "
        "gets a session of its own, so no session ever changes shape: more memory, one copy of the weights "
        "per size) or auto: after the warm-up, runs at an unseen size decide: sessions if a run after one at "
        "another size costs over 5 ms (and twice) more than a repeated one, pad if only a first run does, "
        "else off. With pad or sessions, empty warmup_batch_sizes means powers of two up to the max batch "
        "size. Why: ONNX Runtime's CUDA convolutions plan again whenever their input shape changes "
        "(101-154 ms for ResNet-50 on an H200 against 2-3 ms for a repeated run; bench/results/gpu-h200-2.md).",
        default="auto",
    )

    def __post_init__(self) -> None:
        if self.shape_buckets not in SHAPE_BUCKETS:
            raise ValueError(
                f"engine.shape_buckets must be one of {', '.join(SHAPE_BUCKETS)}, not {self.shape_buckets!r}"
            )
        if self.cudnn_conv_algo_search not in CUDNN_CONV_ALGO_SEARCH:
            raise ValueError(
                f"engine.cudnn_conv_algo_search must be one of {', '.join(CUDNN_CONV_ALGO_SEARCH)}, "
                f"not {self.cudnn_conv_algo_search!r}"
            )


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    enabled: bool = _doc("Dynamic batching on by default for models with a batch dimension.", default=True)
    max_batch_size: int = _doc("Default rows per batch when a version's metadata sets none.", default=64)
    max_queue_delay_ms: float = _doc(
        "How long the oldest request may wait for company (Triton's max_queue_delay).", default=1.0
    )
    preferred_batch_sizes: tuple[int, ...] = _doc("Batch sizes to close a batch at, if reached.", default=())
    max_queue_size: int = _doc("Queued requests per version before load shedding.", default=2048)
    batches_in_flight: int = _doc(
        "Batches a version may run at once (a version served by an upstream: at least 64, unless its metadata sets "
        "it; the upstream runs them side by side).",
        default=2,
    )
    adaptive: bool = _doc(
        "Use the learned cost model and callers' deadlines to decide when to close a batch.", default=True
    )
    kept_merge_mb: float = _doc(
        "Memory (MiB) a version may keep for merging big batches (a merge of 1 MiB or more goes into a kept "
        "buffer, reused once nothing refers to it); a merge with no room left gets a fresh array. 0: keep none.",
        default=512.0,
    )


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """OpenTelemetry traces and metrics, and the Prometheus scrape endpoint.

    Empty / zero values fall back to the standard ``OTEL_*`` environment variables, then to the
    OpenTelemetry defaults; values set here win over ``OTEL_*`` (see the README's telemetry section).
    """

    enabled: bool = _doc("Master switch: false turns all telemetry off (no OpenTelemetry SDK objects).", default=True)
    service_name: str = _doc("Resource service.name; empty = OTEL_SERVICE_NAME, else 'sidecar'.", default="")
    traces_exporter: str = _doc(
        "otlp, console or none (comma-separated list); empty = OTEL_TRACES_EXPORTER, else otlp when an OTLP "
        "endpoint is configured, else none.",
        default="",
    )
    metrics_exporter: str = _doc(
        "otlp, console, prometheus or none (comma-separated list); empty = OTEL_METRICS_EXPORTER, else otlp "
        "when an OTLP endpoint is configured, else none (the scrape endpoint is metrics_port).",
        default="",
    )
    otlp_endpoint: str = _doc(
        "OTLP collector URL (http://host:4317 for grpc, http://host:4318 for http/protobuf); "
        "empty = OTEL_EXPORTER_OTLP_ENDPOINT (or its _TRACES_/_METRICS_ form).",
        default="",
    )
    otlp_protocol: str = _doc(
        "grpc or http/protobuf; empty = OTEL_EXPORTER_OTLP_PROTOCOL (or its _TRACES_/_METRICS_ form), else grpc.",
        default="",
    )
    otlp_headers: str = _doc(
        "Extra export headers 'k1=v1,k2=v2'; empty = OTEL_EXPORTER_OTLP_HEADERS (or its _TRACES_/_METRICS_ form).",
        default="",
    )
    otlp_timeout_ms: float = _doc("Per-export timeout; 0 = OTEL_EXPORTER_OTLP_TIMEOUT, else 10000.", default=0.0)
    sampler: str = _doc(
        "Trace sampler (OTEL_TRACES_SAMPLER names: parentbased_always_on, parentbased_traceidratio, "
        "traceidratio, always_on, always_off, parentbased_always_off); empty = OTEL_TRACES_SAMPLER, else "
        "parentbased_always_on.",
        default="",
    )
    sampler_arg: str = _doc("Sampler argument (the ratio); empty = OTEL_TRACES_SAMPLER_ARG, else 1.0.", default="")
    metrics_host: str = _doc("Address of the Prometheus scrape endpoint.", default="0.0.0.0")
    metrics_port: int = _doc(
        "Prometheus scrape endpoint port (Triton's --metrics-port, /metrics); -1 = off, 0 = any free port.",
        default=8002,
    )
    metric_export_interval_ms: int = _doc(
        "OTLP/console metric export interval; 0 = OTEL_METRIC_EXPORT_INTERVAL, else 60000.", default=0
    )
    span_queue_size: int = _doc(
        "Finished spans buffered for export before new ones are dropped (and counted); "
        "0 = OTEL_BSP_MAX_QUEUE_SIZE, else 2048.",
        default=0,
    )
    span_batch_size: int = _doc("Spans per export call; 0 = OTEL_BSP_MAX_EXPORT_BATCH_SIZE, else 512.", default=0)
    span_schedule_delay_ms: float = _doc(
        "Longest wait before queued spans are exported; 0 = OTEL_BSP_SCHEDULE_DELAY, else 5000.", default=0.0
    )
    host_metrics: bool = _doc("Export process CPU and memory (psutil).", default=True)
    gpu_metrics: bool = _doc("Export per-GPU utilization, memory, power, temperature (NVML).", default=True)
    gpu_sample_interval_s: float = _doc("How often the GPU sampler thread reads NVML.", default=5.0)
    shutdown_timeout_s: float = _doc("At stop: longest wait to flush spans and metrics.", default=5.0)


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    policies: dict[str, Any] = _doc(  # noqa: RUF009 (a field() with a doc)
        'Traffic policies by model, e.g. [routing.policies.mlp] stable = "1.0.0", weights = {"1.0.0" = 90, '
        '"1.1.0" = 10}, shadows = {"1.2.0" = 100} (percent, 0.1 % steps; weights sum to 100). The state file\'s '
        "run-time changes win over these.",
        default_factory=dict,
    )
    state_file: str = _doc(
        "Where run-time policy changes are written (atomically) so a restart keeps them; empty = "
        "<repository.path>/.sidecar/routing-state.json; 'none' = not persisted.",
        default="",
    )
    shadow_queue_size: int = _doc("Shadow copies waiting to run; beyond it copies are dropped, counted.", default=1024)
    shadow_workers: int = _doc("Shadow copies running at once (all shadow versions together).", default=2)
    shadow_timeout_s: float = _doc("A shadow copy that takes longer counts as a timeout.", default=5.0)
    shadow_window_s: float = _doc("Length of a shadow comparison window.", default=60.0)
    shadow_windows: int = _doc("Closed shadow comparison windows kept (besides the running total).", default=10)
    shadow_collect_ms: float = _doc(
        "A shadow worker that finds a copy waits this long for more before it runs them, so copies of a lightly "
        "loaded server still run joined in one request: fewer, cheaper turns, which interrupt live requests "
        "less often (shadow answers are never waited for by a client).",
        default=100.0,
    )
    shadow_max_loop_lag_ms: float = _doc(
        "Shadows run at the lowest priority: a copy starts only when the event loop answers within this "
        "(else it waits; the queue overflows and copies are dropped).",
        default=0.5,
    )
    shadow_max_primary_inflight: int = _doc(
        "Shadows run at the lowest priority: a copy starts only while at most this many live requests are "
        "being answered (a saturated server drops shadow copies instead of slowing live traffic).",
        default=4,
    )
    shadow_max_primary_slowdown: float = _doc(
        "Shadows run at the lowest priority: when live requests answered while shadow copies may start are "
        "slower (median) than those answered without by more than this fraction, the share of time shadows may "
        "start halves (down to shadow_min_share); otherwise it grows back.",
        default=0.05,
    )
    shadow_max_loop_busy: float = _doc(
        "Shadows run at the lowest priority: when the event loop's thread was on the CPU for this share of the "
        "last 100 ms or more (it is the live traffic's bottleneck), the share of time shadows may start halves "
        "(down to shadow_min_share) at once, whatever the latencies say; 0 = no such check.",
        default=0.7,
    )
    shadow_min_share: float = _doc(
        "The least share of time shadow copies may start under load (keeps the comparison and the measurement "
        "going; 0 = none until live traffic pauses). A turn takes this share of its 64 copies too: under load "
        "the share falls towards it, and each turn runs fewer copies.",
        default=0.03,
    )


@dataclass(frozen=True, slots=True)
class MonitoringConfig:
    """Drift and data-quality monitoring of every request (see the README's monitoring section)."""

    enabled: bool = _doc("Watch every request's inputs and outputs for drift and data quality.", default=True)
    profile_file: str = _doc(
        "Reference profile file in each version folder (written by `sidecar profile`); loaded with the version.",
        default="reference_profile.json",
    )
    window_requests: int = _doc("Tumbling count window: requests per window.", default=1000)
    window_s: float = _doc("Tumbling time window: seconds per window.", default=60.0)
    alert_window: str = _doc("Window kind alerts are evaluated on: count | time.", default="count")
    alert_after_windows: int = _doc(
        "An alert is raised when its statistic is at or above its threshold this many windows in a row.", default=3
    )
    clear_after_windows: int = _doc("An alert clears after this many windows in a row below its threshold.", default=3)
    alert_statistics: tuple[str, ...] = _doc(
        "Statistics that raise alerts (others are reported only): psi, js, ks, chi2, missing_rate, inf_rate, "
        "out_of_range_rate, schema_violation_rate.",
        default=("psi", "chi2", "missing_rate", "inf_rate", "out_of_range_rate", "schema_violation_rate"),
    )
    psi_warn: float = _doc("PSI warn threshold (raised to the sample-size floor for small windows).", default=0.1)
    psi_alert: float = _doc("PSI alert threshold (raised to the sample-size floor for small windows).", default=0.25)
    js_warn: float = _doc("Jensen-Shannon distance (base 2) warn threshold.", default=0.05)
    js_alert: float = _doc("Jensen-Shannon distance (base 2) alert threshold.", default=0.1)
    significance: float = _doc(
        "Alpha of the sample-size aware PSI/JS floor: chi2_isf(alpha, B-1) * (1/n + 1/m).", default=0.01
    )
    ks_warn_p: float = _doc("KS warn at this p-value (threshold = critical D).", default=0.15)
    ks_alert_p: float = _doc("KS alert at this p-value (threshold = critical D).", default=0.05)
    chi2_warn_p: float = _doc("Categorical chi-square warn at this p-value.", default=0.15)
    chi2_alert_p: float = _doc("Categorical chi-square alert at this p-value.", default=0.05)
    missing_rate_warn: float = _doc("NaN/missing rate above the reference's rate that warns.", default=0.005)
    missing_rate_alert: float = _doc("NaN/missing rate above the reference's rate that alerts.", default=0.01)
    inf_rate_warn: float = _doc("+-inf rate above the reference's rate that warns.", default=0.0005)
    inf_rate_alert: float = _doc("+-inf rate above the reference's rate that alerts.", default=0.001)
    out_of_range_rate_warn: float = _doc("Share of values outside the reference [min, max] that warns.", default=0.02)
    out_of_range_rate_alert: float = _doc("Share of values outside the reference [min, max] that alerts.", default=0.05)
    schema_violation_rate_warn: float = _doc("Share of requests rejected for their inputs that warns.", default=0.001)
    schema_violation_rate_alert: float = _doc("Share of requests rejected for their inputs that alerts.", default=0.01)
    min_window_rows: int = _doc("Windows with fewer rows report insufficient_data, leaving alerts alone.", default=50)
    history_windows: int = _doc("Closed windows of each kind kept for the drift report.", default=8)

    def __post_init__(self) -> None:
        if self.alert_window not in ("count", "time"):
            raise ValueError(f"monitoring.alert_window must be 'count' or 'time', not {self.alert_window!r}")
        if self.window_requests < 1 or self.window_s <= 0:
            raise ValueError("monitoring.window_requests and monitoring.window_s must be positive")
        if not 0.0 < self.significance < 1.0:
            raise ValueError("monitoring.significance must be between 0 and 1")
        if self.history_windows < 1:
            raise ValueError("monitoring.history_windows must be at least 1")
        known = {"psi", "js", "ks", "chi2", "missing_rate", "inf_rate", "out_of_range_rate", "schema_violation_rate"}
        unknown = sorted(set(self.alert_statistics) - known)
        if unknown:
            raise ValueError(f"monitoring.alert_statistics: unknown statistic(s) {unknown}; known: {sorted(known)}")


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    repository: RepositoryConfig = field(default_factory=RepositoryConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    log_level: str = _doc("Log level: DEBUG, INFO, WARNING, ERROR.", default="INFO")

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> SidecarConfig:
        """Build the configuration from file < environment < ``overrides`` ("section.key": value)."""
        data: dict[str, Any] = read_file(path) if path else {}
        env = os.environ if environ is None else environ
        for key, value in env.items():
            if key.startswith(ENV_PREFIX) and "__" in key:
                section, _, name = key[len(ENV_PREFIX) :].lower().partition("__")
                data.setdefault(section, {})[name] = value
            elif key == ENV_PREFIX + "LOG_LEVEL":
                data["log_level"] = value
        for dotted, value in (overrides or {}).items():
            if value is None:
                continue
            section, _, name = dotted.partition(".")
            if name:
                data.setdefault(section, {})[name] = value
            else:
                data[section] = value
        return from_mapping(cls, data, "")

    def replace(self, **sections: Any) -> SidecarConfig:
        return dataclasses.replace(self, **sections)


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            loaded = yaml.safe_load(text) or {}
        else:
            import tomllib

            loaded = tomllib.loads(text)
    except Exception as exc:
        raise ConfigError(f"config file {p} is not valid {p.suffix.lstrip('.') or 'TOML'}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p} must hold a table/mapping at the top level")
    return loaded


def from_mapping(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """Build frozen dataclass ``cls`` from a mapping, coercing strings, refusing unknown keys."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'} must be a table, not {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown configuration key(s) {', '.join(_join(where, u) for u in unknown)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, _join(where, name))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or value == "":
            return None
        return _coerce(args[0], value, where)
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, not {value!r}")
        return tuple(_coerce(item, v, where) for v in value)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table, not {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where} must be true or false, not {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, not {value!r}")
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a{'n integer' if tp is int else ' number'}, not {value!r}") from None
    if tp is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{where} must be a string, not {value!r}")
        return str(value)
    return value


def describe(cls: type = SidecarConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, doc) for every configuration field, for --help and the README."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if isinstance(default, tuple):
            default = ",".join(str(d) for d in default)
        rows.append((key, str(default), f.metadata.get("doc", "")))
    return rows
