"""The ``[telemetry]`` section merged with the standard OTEL_* variables."""

from __future__ import annotations

import pytest

from sidecar.config import SidecarConfig, TelemetryConfig
from sidecar.errors import ConfigError
from sidecar.telemetry.settings import resolve


def test_defaults_metrics_on_prometheus_traces_off():
    s = resolve(TelemetryConfig(), {})
    assert s.enabled and s.metrics and not s.tracing
    assert s.prometheus_port == 8002 and s.traces_otlp is None and s.metrics_otlp is None
    assert s.sampler == "parentbased_always_on" and s.sampler_ratio == 1.0
    assert s.resource["service.name"] == "sidecar"
    assert s.resource["service.version"] and s.resource["service.instance.id"] and s.resource["host.name"]
    assert "k8s.pod.name" not in s.resource
    assert s.span_queue_size == 2048 and s.span_batch_size == 512 and s.metric_export_interval_ms == 60000


def test_otlp_endpoint_turns_on_both_signals_over_grpc():
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s%3Dcret, X-Team=ml",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.01",
        "OTEL_SERVICE_NAME": "fraud-sidecar",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=ignored",
        "POD_NAME": "fraud-7d9f",
        "POD_NAMESPACE": "ml",
        "OTEL_BSP_MAX_QUEUE_SIZE": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "15000",
    }
    s = resolve(TelemetryConfig(), env)
    assert s.tracing and s.metrics
    for target in (s.traces_otlp, s.metrics_otlp):
        assert target.protocol == "grpc" and target.endpoint == "http://collector:4317" and target.insecure
        assert target.headers == (("api-key", "s=cret"), ("x-team", "ml"))
        assert target.timeout_s == 2.5  # the specification's unit: milliseconds
    assert s.sampler == "parentbased_traceidratio" and s.sampler_ratio == 0.01
    assert s.resource["service.name"] == "fraud-sidecar"
    assert s.resource["deployment.environment"] == "prod"
    assert s.resource["k8s.pod.name"] == "fraud-7d9f" and s.resource["k8s.namespace.name"] == "ml"
    assert s.span_queue_size == 100 and s.span_batch_size == 100  # a batch never exceeds the queue
    assert s.metric_export_interval_ms == 15000


def test_http_protobuf_appends_signal_paths_but_not_to_signal_endpoints():
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://otlp.example.com:4318/",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://metrics.example.com/custom",
    }
    s = resolve(TelemetryConfig(), env)
    assert s.traces_otlp.endpoint == "https://otlp.example.com:4318/v1/traces" and not s.traces_otlp.insecure
    assert s.metrics_otlp.endpoint == "https://metrics.example.com/custom"


def test_sidecar_config_wins_over_otel_variables():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4317", "OTEL_TRACES_SAMPLER": "always_on"}
    s = resolve(TelemetryConfig(otlp_endpoint="http://file:4317", sampler="traceidratio", sampler_arg="0.5"), env)
    assert s.traces_otlp.endpoint == "http://file:4317" and s.sampler == "traceidratio" and s.sampler_ratio == 0.5


def test_exporter_lists_console_none_and_prometheus():
    s = resolve(TelemetryConfig(metrics_port=-1), {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none"})
    assert s.traces_console and s.traces_otlp is None and s.tracing
    assert not s.metrics  # no exporter and no scrape endpoint: no metrics SDK at all
    s = resolve(TelemetryConfig(metrics_port=-1), {"OTEL_METRICS_EXPORTER": "prometheus"})
    assert s.prometheus_port == 9464 and s.prometheus_host == "localhost"


def test_off_switches():
    assert not resolve(TelemetryConfig(), {"OTEL_SDK_DISABLED": "true"}).enabled
    off = resolve(TelemetryConfig(enabled=False), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    assert not off.tracing and not off.metrics
    assert off.destinations() == ["telemetry: off"]
    always_off = resolve(TelemetryConfig(traces_exporter="otlp", sampler="always_off"), {})
    assert not always_off.tracing  # nothing would ever be recorded: no tracing SDK on the hot path


@pytest.mark.parametrize(
    ("config", "env", "message"),
    [
        (TelemetryConfig(), {"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "jaeger_remote"),
        (TelemetryConfig(), {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "[0, 1]"),
        (TelemetryConfig(), {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_TRACES_EXPORTER": "otlp"}, "http/json"),
        (TelemetryConfig(traces_exporter="zipkin"), {}, "zipkin"),
        (TelemetryConfig(otlp_headers="novalue", traces_exporter="otlp"), {}, "novalue"),
    ],
)
def test_invalid_values_are_configuration_errors(config, env, message):
    with pytest.raises(ConfigError) as info:
        resolve(config, env)
    assert message in info.value.message


def test_section_loads_from_sidecar_environment_and_flags():
    cfg = SidecarConfig.load(
        None,
        overrides={"telemetry.metrics_port": 9100},
        environ={"SIDECAR_TELEMETRY__OTLP_PROTOCOL": "http/protobuf", "SIDECAR_TELEMETRY__GPU_METRICS": "false"},
    )
    assert cfg.telemetry.metrics_port == 9100
    assert cfg.telemetry.otlp_protocol == "http/protobuf" and cfg.telemetry.gpu_metrics is False
