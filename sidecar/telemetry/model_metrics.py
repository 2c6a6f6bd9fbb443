"""Per-version inference metrics: a ``StatisticsSink`` on each ready version, read by observable instruments.

The request path only adds to integers and records into pre-bound histogram series (see
``histograms``); counters, the queue depth and the model's freshness are observed at collection time,
on the exporter's thread. A version gets a sink when it becomes READY and loses it (and its series)
when it leaves READY, so unloaded versions stop being reported.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from sidecar.telemetry import catalog
from sidecar.telemetry.histograms import HistogramSet

log = logging.getLogger(__name__)


class VersionMetrics:
    """The statistics sink of one model version (``sidecar.engine.statistics.StatisticsSink``)."""

    __slots__ = (
        "_compute",
        "_duration_fail",
        "_duration_ok",
        "_queue",
        "_rows",
        "attributes",
        "executions",
        "failures",
        "mv",
        "rows",
        "successes",
    )

    def __init__(self, mv: Any, hists: ModelHistograms) -> None:
        self.mv = mv
        self.attributes = {"model.name": mv.name, "model.version": mv.version_str}
        self.successes = 0
        self.failures = 0
        self.rows = 0
        self.executions = 0
        a = self.attributes
        self._duration_ok = hists.duration.series(**a, outcome="success")
        self._duration_fail = hists.duration.series(**a, outcome="failure")
        self._queue = hists.queue.series(**a)
        self._compute = hists.compute.series(**a)
        self._rows = hists.rows.series(**a)

    # -- StatisticsSink (event-loop thread) -------------------------------------------------------
    def request(self, ok: bool, duration_ns: int, rows: int) -> None:
        if ok:
            self.successes += 1
            self.rows += rows
            self._duration_ok.record(duration_ns)
        else:
            self.failures += 1
            self._duration_fail.record(duration_ns)

    def queue(self, ns: int) -> None:
        self._queue.record(ns)

    def execution(self, batch_rows: int, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        self.executions += 1
        self._rows.record(batch_rows)
        self._compute.record(input_ns + infer_ns + output_ns)

    def series(self) -> tuple[Any, ...]:
        return (self._duration_ok, self._duration_fail, self._queue, self._compute, self._rows)


class ModelHistograms:
    def __init__(self, hists: HistogramSet) -> None:
        self.duration = hists.family(catalog.INFERENCE_DURATION, scale=1e-9)
        self.queue = hists.family(catalog.QUEUE_DURATION, scale=1e-9)
        self.compute = hists.family(catalog.COMPUTE_DURATION, scale=1e-9)
        self.rows = hists.family(catalog.BATCH_ROWS)

    def forget(self, sink: VersionMetrics) -> None:
        for fam in (self.duration, self.queue, self.compute, self.rows):
            for s in sink.series():
                fam.remove(s)


class ModelMetrics:
    """Attaches sinks to versions as they become ready; registers the observable model instruments."""

    def __init__(self, meter: Meter, hists: HistogramSet, today: Callable[[], dt.date] = dt.date.today) -> None:
        self._hists = ModelHistograms(hists)
        self._sinks: dict[int, VersionMetrics] = {}  # id(ModelVersion) -> sink; replaced, never mutated
        self._today = today
        self._closed = False
        observe = {
            catalog.INFERENCE_REQUESTS: self._observe_requests,
            catalog.INFERENCE_ROWS: self._observe_rows,
            catalog.BATCH_EXECUTIONS: self._observe_executions,
            catalog.QUEUE_DEPTH: self._observe_queue_depth,
            catalog.MODEL_FRESHNESS: self._observe_freshness,
        }
        for instrument, callback in observe.items():
            create_observable(meter, instrument, callback)

    def attach(self, mv: Any) -> None:
        """Repository listener: a sink while the version is READY, none otherwise."""
        if self._closed:
            return
        key = id(mv)
        if mv.ready and key not in self._sinks:
            sink = VersionMetrics(mv, self._hists)
            mv.stats.sink = sink
            self._sinks = {**self._sinks, key: sink}
        elif not mv.ready and key in self._sinks:
            sink = self._sinks[key]
            if mv.stats.sink is sink:
                mv.stats.sink = None
            self._hists.forget(sink)
            self._sinks = {k: s for k, s in self._sinks.items() if k != key}

    def detach_all(self) -> None:
        self._closed = True
        for sink in self._sinks.values():
            if sink.mv.stats.sink is sink:
                sink.mv.stats.sink = None
        self._sinks = {}

    # -- observable callbacks (exporter threads) --------------------------------------------------
    def _observe_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        for s in self._sinks.values():
            yield Observation(s.successes, {**s.attributes, "outcome": "success"})
            yield Observation(s.failures, {**s.attributes, "outcome": "failure"})

    def _observe_rows(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.rows, s.attributes) for s in self._sinks.values()]

    def _observe_executions(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.executions, s.attributes) for s in self._sinks.values()]

    def _observe_queue_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for s in self._sinks.values():
            scheduler = s.mv.scheduler
            if scheduler is not None:
                out.append(Observation(getattr(scheduler, "queue_depth", 0), s.attributes))
        return out

    def _observe_freshness(self, options: CallbackOptions) -> Iterable[Observation]:
        today = self._today()
        out = []
        for s in self._sinks.values():
            trained = s.mv.metadata.training_date
            if trained is not None:
                out.append(Observation((today - trained).days, s.attributes))
        return out


def create_observable(meter: Meter, instrument: catalog.Instrument, callback: Callable[..., Any]) -> Any:
    """Create the observable SDK instrument declared by ``instrument`` (see ``catalog``)."""
    factory = {
        "counter": meter.create_observable_counter,
        "updowncounter": meter.create_observable_up_down_counter,
        "gauge": meter.create_observable_gauge,
    }[instrument.kind]
    return factory(instrument.name, callbacks=[callback], unit=instrument.unit, description=instrument.description)
