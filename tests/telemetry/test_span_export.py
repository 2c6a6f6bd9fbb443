"""The span queue (sidecar.telemetry.export.BoundedSpanProcessor): batches, bounds, and what each wake-up sends."""

from __future__ import annotations

import threading
from typing import Any

from sidecar.telemetry.export import BoundedSpanProcessor, DropCounter
from sidecar.telemetry.lean_tracing import LeanSpan, LeanTracerProvider
from sidecar.telemetry.sampling import decision


class Recording:
    """An exporter that keeps each batch's span names; ``during`` runs inside the first export."""

    def __init__(self, during: Any = None) -> None:
        self.batches: list[list[str]] = []
        self._during = during
        self.shut = False

    def export(self, spans: list[LeanSpan]) -> bool:
        self.batches.append([s.name for s in spans])
        if self._during is not None:
            during, self._during = self._during, None
            during()
        return True

    def shutdown(self) -> None:
        self.shut = True


def _spans(n: int, prefix: str = "s") -> list[LeanSpan]:
    ended: list[LeanSpan] = []

    class Keep:
        def on_end(self, span: LeanSpan) -> None:
            ended.append(span)

    provider = LeanTracerProvider(decision("always_on", 1.0))
    provider.add_span_processor(Keep())
    tracer = provider.get_tracer("test")
    for i in range(n):
        tracer.start_span(f"{prefix}{i}").end()
    return ended


def _processor(exporter: Any, **kwargs: Any) -> tuple[BoundedSpanProcessor, DropCounter]:
    drops = DropCounter()
    # a schedule delay far beyond the test: only force_flush (and full batches) wake the worker
    return BoundedSpanProcessor(exporter, drops, schedule_delay_s=3600.0, **kwargs), drops


def test_a_wake_up_sends_what_was_queued_in_batches_of_the_batch_size() -> None:
    exporter = Recording()
    processor, drops = _processor(exporter, queue_size=100, batch_size=2)
    try:
        for span in _spans(5):
            processor.on_end(span)
        assert processor.force_flush(5000)
        assert exporter.batches == [["s0", "s1"], ["s2", "s3"], ["s4"]]
        assert processor.exported == 5 and drops.counts == {}
    finally:
        processor.shutdown()


def test_spans_ended_during_an_export_wait_for_the_next_wake_up() -> None:
    """Not a trail of small exports: the spans the event loop ends while one runs go out together later."""
    late = _spans(3, "late")
    processor: BoundedSpanProcessor

    def end_late_spans() -> None:
        for span in late:
            processor.on_end(span)

    exporter = Recording(during=end_late_spans)
    processor, _ = _processor(exporter, queue_size=100, batch_size=10)
    try:
        for span in _spans(2):
            processor.on_end(span)
        assert processor.force_flush(5000)
        assert exporter.batches == [["s0", "s1"]]  # the late ones were not sent in a second call
        assert processor.force_flush(5000)
        assert exporter.batches == [["s0", "s1"], ["late0", "late1", "late2"]]
        assert processor.exported == 5
    finally:
        processor.shutdown()


def test_a_full_batch_wakes_the_worker_without_waiting_for_the_schedule() -> None:
    exported = threading.Event()

    class Signalling(Recording):
        def export(self, spans: list[LeanSpan]) -> bool:
            super().export(spans)
            exported.set()
            return True

    exporter = Signalling()
    processor, _ = _processor(exporter, queue_size=100, batch_size=4)
    try:
        for span in _spans(4):
            processor.on_end(span)
        assert exported.wait(5.0), "a full batch did not wake the export worker"
        assert exporter.batches == [["s0", "s1", "s2", "s3"]]
    finally:
        processor.shutdown()


def test_a_full_queue_refuses_spans_and_counts_them_never_blocking() -> None:
    release = threading.Event()

    class Stuck(Recording):
        def export(self, spans: list[LeanSpan]) -> bool:
            super().export(spans)
            release.wait(10.0)  # a collector that does not answer
            return True

    exporter = Stuck()
    processor, drops = _processor(exporter, queue_size=3, batch_size=3)
    try:
        spans = _spans(7)
        for span in spans[:3]:
            processor.on_end(span)  # a full batch: the worker takes these three and gets stuck
        for _ in range(200):
            if exporter.batches:
                break
            threading.Event().wait(0.01)
        assert exporter.batches == [["s0", "s1", "s2"]]
        for span in spans[3:]:  # three fit in the queue again, the seventh does not
            processor.on_end(span)
        assert drops.counts == {("traces", "queue_full"): 1}
    finally:
        release.set()
        processor.shutdown()
    assert exporter.shut


def test_shutdown_exports_what_was_queued_during_the_last_export() -> None:
    """A shutdown while the worker exports: the spans that ended meanwhile still go out, none dropped."""
    exporting, release = threading.Event(), threading.Event()

    class Slow(Recording):
        def export(self, spans: list[LeanSpan]) -> bool:
            super().export(spans)
            if len(self.batches) == 1:
                exporting.set()
                release.wait(10.0)
            return True

    exporter = Slow()
    processor, drops = _processor(exporter, queue_size=100, batch_size=2)
    spans = _spans(5)
    processor.on_end(spans[0])
    processor.on_end(spans[1])  # a full batch: the worker takes it and is held in the export
    assert exporting.wait(5.0)
    for span in spans[2:]:
        processor.on_end(span)
    stopper = threading.Thread(target=processor.shutdown, args=(10.0,))
    stopper.start()
    threading.Event().wait(0.05)  # shutdown is waiting for the worker
    release.set()
    stopper.join(10.0)
    assert exporter.batches == [["s0", "s1"], ["s2", "s3"], ["s4"]]
    assert processor.exported == 5 and drops.counts == {}


def test_an_otlp_exporter_gets_spans_encoded_as_they_ended_with_the_same_bytes() -> None:
    """The OTLP exporters' ``at_end``: the queue keeps each span's encoded field (C encoder), not the span,
    and the request sent is byte for byte the one encoding the spans at export time makes."""
    from sidecar.telemetry import lean_tracing, otlp
    from sidecar.telemetry.otlp import TraceEncoder

    resource = {"service.name": "queue-test"}
    sent: list[bytes] = []
    kept: list[Any] = []

    class Encoding:
        def __init__(self) -> None:
            self.encoder = TraceEncoder(resource)
            self.at_end = self.encoder.at_end

        def export(self, items: list[Any]) -> bool:
            kept.extend(items)
            sent.append(self.encoder.encode(items))
            return True

        def shutdown(self) -> None:
            pass

    spans = _spans(3)
    processor, _ = _processor(Encoding(), queue_size=100, batch_size=10)
    try:
        for span in spans:
            processor.on_end(span)
        assert processor.force_flush(5000)
    finally:
        processor.shutdown()
    assert sent == [TraceEncoder(resource).encode(spans)]
    if otlp.native_span_field is not None:  # built (as in CI): the queue held encoded fields, no span objects
        if lean_tracing.native_core() is not None:  # the C sink: the field alone, its scope on the encoder
            assert all(type(item) is bytes for item in kept)
        else:
            assert all(type(item) is tuple and type(item[1]) is bytes for item in kept)
    else:
        assert kept == spans


def test_a_span_the_c_encoder_does_not_take_is_kept_and_encoded_on_export() -> None:
    from sidecar.telemetry.otlp import TraceEncoder

    (span,) = _spans(1)
    span.events = [("an event", 1, {})]  # events: the C encoder hands the span back to Python
    at_end = TraceEncoder({}).at_end
    assert at_end(span) is None
    ordinary = _spans(1)[0]
    assert at_end(ordinary) is None or at_end(ordinary)[0] is ordinary.scope
