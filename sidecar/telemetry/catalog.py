"""Every instrument the sidecar exports, declared once: name, kind, unit (UCUM), attributes, buckets.

These names are a public contract (dashboards and alerts are built on them): the README's metric
table is generated from this list (``python -m sidecar.telemetry.catalog``) and a test checks that
both agree. OpenTelemetry semantic-convention names are used where one exists. Prometheus shows
them with dots turned into underscores, a unit suffix and ``_total`` on counters
(``sidecar.inference.requests`` -> ``sidecar_inference_requests_total``).
"""

from __future__ import annotations

from dataclasses import dataclass

# Seconds. Inference through a sidecar lives between ~100 us and a few seconds.
DURATION_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

MODEL = ("model.name", "model.version")


@dataclass(frozen=True, slots=True)
class Instrument:
    name: str
    kind: str  # histogram | counter | updowncounter | gauge
    unit: str
    description: str
    attributes: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


RPC_DURATION = Instrument(
    "rpc.server.call.duration",
    "histogram",
    "s",
    "Duration of each gRPC call handled (semantic convention).",
    ("rpc.system.name", "rpc.method", "rpc.status_code"),
    DURATION_BUCKETS_S,
)
INFERENCE_REQUESTS = Instrument(
    "sidecar.inference.requests",
    "counter",
    "{request}",
    "Inference requests answered by a model version; outcome is success or failure.",
    (*MODEL, "outcome"),
)
INFERENCE_ROWS = Instrument(
    "sidecar.inference.rows",
    "counter",
    "{row}",
    "Rows (batch-dimension entries) inferred successfully; rate() gives rows/s.",
    MODEL,
)
INFERENCE_DURATION = Instrument(
    "sidecar.inference.duration",
    "histogram",
    "s",
    "Time from a request reaching its model version to its answer (queue + compute).",
    (*MODEL, "outcome"),
    DURATION_BUCKETS_S,
)
QUEUE_DURATION = Instrument(
    "sidecar.inference.queue.duration",
    "histogram",
    "s",
    "Time a request waited in its version's queue before its batch started.",
    MODEL,
    DURATION_BUCKETS_S,
)
COMPUTE_DURATION = Instrument(
    "sidecar.inference.compute.duration",
    "histogram",
    "s",
    "Time of one engine run (one batch): input, inference and output.",
    MODEL,
    DURATION_BUCKETS_S,
)
BATCH_ROWS = Instrument(
    "sidecar.batch.rows",
    "histogram",
    "{row}",
    "Rows in each engine run (batch size).",
    MODEL,
    ROWS_BUCKETS,
)
BATCH_EXECUTIONS = Instrument(
    "sidecar.batch.executions",
    "counter",
    "{batch}",
    "Engine runs (batches) executed.",
    MODEL,
)
QUEUE_DEPTH = Instrument(
    "sidecar.inference.queue.depth",
    "updowncounter",
    "{request}",
    "Requests waiting in a version's queue now.",
    MODEL,
)
MODEL_FRESHNESS = Instrument(
    "sidecar.model.freshness",
    "gauge",
    "d",
    "Age of the version's training data in days (from training_date in its metadata).",
    MODEL,
)
DRIFT_PSI = Instrument(
    "sidecar.drift.psi",
    "gauge",
    "1",
    "Population stability index of each feature in the last closed alert window, against the reference profile.",
    (*MODEL, "feature"),
)
DRIFT_STATISTIC = Instrument(
    "sidecar.drift.statistic",
    "gauge",
    "1",
    "Every drift and quality statistic of the last closed alert window (psi, js, ks, chi2, missing_rate, ...).",
    (*MODEL, "feature", "statistic"),
)
FEATURE_BIN_COUNT = Instrument(
    "sidecar.feature.bin.count",
    "counter",
    "{observation}",
    "Cumulative observations per feature and reference bin (sum across replicas, then compute PSI).",
    (*MODEL, "feature", "bin"),
)
FEATURE_BIN_REFERENCE = Instrument(
    "sidecar.feature.bin.reference",
    "gauge",
    "1",
    "Share of the reference (training) data in each bin: the other side of a fleet-wide PSI.",
    (*MODEL, "feature", "bin"),
)
DATA_QUALITY = Instrument(
    "sidecar.data_quality.issues",
    "counter",
    "{value}",
    "Cumulative values failing a data-quality check: missing, non_finite, out_of_range, unknown_category; "
    'schema_violation counts requests rejected for their inputs (feature "*").',
    (*MODEL, "feature", "check"),
)
ALERTS_ACTIVE = Instrument(
    "sidecar.alerts.active",
    "gauge",
    "{alert}",
    "Drift and data-quality alerts firing now, per version (0 when none).",
    MODEL,
)
DRIFT_ALERT = Instrument(
    "sidecar.drift.alert",
    "gauge",
    "{alert}",
    "1 for each (feature, statistic) whose alert is firing now.",
    (*MODEL, "feature", "statistic"),
)
SHADOW_COPIES = Instrument(
    "sidecar.shadow.copies",
    "counter",
    "{copy}",
    "Requests mirrored to a shadow version (model.version is the shadow's), by outcome: mirrored (queued), "
    "dropped (the shadow queue was full), answered, error, timeout; mismatch counts answers whose outputs "
    "did not line up with the primary's.",
    (*MODEL, "outcome"),
)
SHADOW_ROWS = Instrument(
    "sidecar.shadow.rows",
    "counter",
    "{row}",
    "Rows of shadow answers compared with the primary's: compared, class_compared (rows whose predicted "
    "class was compared), class_agreed (of those, the same class); agreement = class_agreed / class_compared.",
    (*MODEL, "comparison"),
)
SHADOW_AGREEMENT = Instrument(
    "sidecar.shadow.agreement",
    "gauge",
    "1",
    "Share of compared rows whose predicted class agrees with the primary's, since the shadow was configured.",
    MODEL,
)
SHADOW_OUTPUT_DIFFERENCE = Instrument(
    "sidecar.shadow.output.difference",
    "gauge",
    "1",
    "Absolute difference of the shadow's numeric outputs from the primary's, element-wise, since the shadow "
    "was configured: statistic mean or max.",
    (*MODEL, "statistic"),
)
SHADOW_LATENCY_DIFFERENCE = Instrument(
    "sidecar.shadow.latency.difference",
    "gauge",
    "s",
    "Mean latency of the shadow minus the primary's, over the copies it answered since it was configured.",
    MODEL,
)
TELEMETRY_DROPPED = Instrument(
    "sidecar.telemetry.dropped",
    "counter",
    "{item}",
    "Spans or metric points the sidecar could not deliver (queue full, export failed, shutdown).",
    ("signal", "reason"),
)
INGEST_RELAYED = Instrument(
    "sidecar.ingest.relayed",
    "counter",
    "{call}",
    "Calls ingest workers took and relayed to this process (server.ingest_workers), by how the request "
    "came: through shared memory or the relay socket.",
    ("transport",),
)
INGEST_WORKERS = Instrument(
    "sidecar.ingest.workers", "updowncounter", "{process}", "Ingest worker processes running.", ()
)
PROCESS_CPU_TIME = Instrument(
    "process.cpu.time", "counter", "s", "CPU seconds used by the sidecar process.", ("cpu.mode",)
)
PROCESS_CPU_UTILIZATION = Instrument(
    "process.cpu.utilization",
    "gauge",
    "1",
    "CPU used by the process since the last collection, as a share of all logical CPUs.",
)
PROCESS_MEMORY_USAGE = Instrument("process.memory.usage", "updowncounter", "By", "Resident memory of the process.")
PROCESS_MEMORY_VIRTUAL = Instrument("process.memory.virtual", "updowncounter", "By", "Virtual memory of the process.")
PROCESS_THREADS = Instrument("process.thread.count", "updowncounter", "{thread}", "Threads of the process.")
GPU = ("hw.id", "hw.name", "hw.vendor")
GPU_UTILIZATION = Instrument("hw.gpu.utilization", "gauge", "1", "Share of time the GPU was busy (0-1).", GPU)
GPU_MEMORY_UTILIZATION = Instrument(
    "hw.gpu.memory.utilization", "gauge", "1", "Share of time GPU memory was read or written (0-1).", GPU
)
GPU_MEMORY_USAGE = Instrument("hw.gpu.memory.usage", "updowncounter", "By", "GPU memory in use.", GPU)
GPU_MEMORY_LIMIT = Instrument("hw.gpu.memory.limit", "updowncounter", "By", "GPU memory in all.", GPU)
GPU_POWER = Instrument("hw.power", "gauge", "W", "GPU power draw.", (*GPU, "hw.type"))
GPU_TEMPERATURE = Instrument("hw.temperature", "gauge", "Cel", "GPU core temperature.", (*GPU, "hw.type"))

ALL: tuple[Instrument, ...] = tuple(v for v in dict(globals()).values() if isinstance(v, Instrument))


def prometheus_name(instrument: Instrument) -> str:
    """The name Prometheus shows (the exporter's rules: dots to underscores, unit suffix, _total)."""
    from opentelemetry.exporter.prometheus._mapping import map_unit, sanitize_full_name

    name = sanitize_full_name(instrument.name)
    unit = map_unit(instrument.unit)
    if unit and not name.endswith("_" + unit):
        name = f"{name}_{unit}"
    if instrument.kind == "counter":
        name += "_total"
    return name


def markdown_table() -> str:
    rows = [
        "| Name | Prometheus | Kind | Unit | Attributes | Description |",
        "|---|---|---|---|---|---|",
    ]
    for i in ALL:
        attrs = ", ".join(f"`{a}`" for a in i.attributes)
        rows.append(f"| `{i.name}` | `{prometheus_name(i)}` | {i.kind} | `{i.unit}` | {attrs} | {i.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
