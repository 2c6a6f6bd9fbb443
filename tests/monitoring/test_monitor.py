"""Version monitors without a server: one counting path, windows, fleet merging, bounded memory."""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np
import pytest

from sidecar.config import MonitoringConfig
from sidecar.monitoring import drift
from sidecar.monitoring.binning import ProfileCounter
from sidecar.monitoring.build import build_profile
from sidecar.monitoring.profile import CategoricalFeature, NumericFeature
from sidecar.monitoring.version_monitor import VersionMonitor
from sidecar.protocol.codec import LazyTensors
from sidecar.types import TensorSpec

INPUTS = (
    TensorSpec("x", "FP32", (-1, 3)),
    TensorSpec("code", "INT64", (-1,)),
    TensorSpec("city", "BYTES", (-1, 1)),
)
OUTPUTS = (TensorSpec("probabilities", "FP32", (-1, 2)), TensorSpec("label", "INT64", (-1,)))
CITIES = np.array([b"paris", b"lyon", b"nice", b"brest"], dtype=object)


def make_rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    x = rng.normal(0.0, 1.0, (n, 3)).astype(np.float32)
    x[:, 1] += shift
    return {
        "x": x,
        "code": rng.choice([3, 7, 9], size=n, p=[0.5, 0.3, 0.2]).astype(np.int64),
        "city": rng.choice(CITIES, size=(n, 1), p=[0.4, 0.3, 0.2, 0.1]),
    }


def answer(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    p1 = 1.0 / (1.0 + np.exp(-rows["x"][:, 0]))
    probs = np.stack([1 - p1, p1], axis=1).astype(np.float32)
    return {"probabilities": probs, "label": probs.argmax(axis=1).astype(np.int64)}


@pytest.fixture(scope="module")
def profile():
    rng = np.random.default_rng(0)
    data = make_rows(rng, 5000)
    return build_profile("m", "1.0.0", INPUTS, OUTPUTS, data, {"x": ["a", "b", "c"]}, answer(data))


def monitor(profile, **cfg) -> VersionMonitor:
    config = MonitoringConfig(**{"window_requests": 100, "window_s": 3600.0, "alert_after_windows": 2, **cfg})
    return VersionMonitor("m", "1.0.0", ProfileCounter(profile), config, has_reference=True)


def requests(rng, count: int, rows: int = 4, shift: float = 0.0, t0: float | None = None, dt: float = 0.0):
    t = time.monotonic() if t0 is None else t0
    out = []
    for i in range(count):
        inputs = make_rows(rng, rows, shift)
        out.append((inputs, answer(inputs), t + i * dt, rows))
    return out


def fold(m: VersionMonitor, items, now: float | None = None):
    """Observe each request as a batch of its own, then evaluate the closed windows (as the stage's task does)."""
    for inputs, outputs, t, rows in items:
        m.observe(inputs, outputs, (rows,), t)
    return m.tick(time.monotonic() if now is None else now)


def test_profile_features_and_reference_counts_use_the_serving_code_path(profile):
    kinds = {f.name: type(f) for _, f in profile.features}
    assert kinds == {
        "a": NumericFeature,
        "b": NumericFeature,
        "c": NumericFeature,
        "code": CategoricalFeature,
        "city": CategoricalFeature,
        "label": CategoricalFeature,
        "probabilities.confidence": NumericFeature,
    }
    a = profile.sources[0].features[0]
    assert a.bins == 10 and len(a.counts) == 14 and a.rows == 5000
    assert a.counts[0] == a.counts[-3] == 0  # edges span the reference min..max: nothing out of range
    assert all(450 <= c <= 550 for c in a.counts[1:-3])  # quantile bins hold ~10% each
    city = dict(zip(profile.sources[2].features[0].categories, profile.sources[2].features[0].counts, strict=False))
    assert list(city) == ["paris", "lyon", "nice", "brest"]  # by frequency
    code = profile.sources[1].features[0]
    assert code.categories == (3, 7, 9) and sum(code.counts[:3]) == 5000 and code.counts[3:] == (0, 0)
    # Counting the training data again with a fresh counter (what the server does) gives the same counts.
    rng = np.random.default_rng(0)
    data = make_rows(rng, 5000)
    counter = ProfileCounter(profile)
    flat = counter.zeros()
    counter.count([data], [answer(data)], flat)
    assert np.array_equal(flat, counter.reference)


def test_count_windows_close_exactly_and_reference_like_traffic_is_ok(profile):
    m = monitor(profile)
    rng = np.random.default_rng(1)
    events = fold(m, requests(rng, 250), time.monotonic())
    assert events == []
    (last,) = [w for w in m.report().windows if w.kind == "count"]
    assert last.requests == 100 and last.rows == 400 and last.index == 1
    assert m.report().open_count_requests == 50
    assert len(m.history("count")) == 2
    for f in last.features:
        psi = f.statistic("psi")
        assert psi is not None and psi.status in (drift.OK, drift.WARN), (f.feature, psi)
    assert m.alerts == ()


def test_shift_raises_alert_after_k_windows_and_clears(profile):
    m = monitor(profile, alert_after_windows=2, clear_after_windows=2)
    rng = np.random.default_rng(2)
    fold(m, requests(rng, 100), time.monotonic())
    assert m.alerts == ()
    events = fold(m, requests(rng, 100, shift=2.0), time.monotonic())
    assert events == [] and m.alerts == ()  # one window above the threshold is not enough
    events = fold(m, requests(rng, 100, shift=2.0), time.monotonic())
    raised = {(e.alert.feature, e.alert.statistic) for e in events}
    assert ("b", "psi") in raised and all(
        feature in ("b", "label", "probabilities.confidence") for feature, _ in raised
    )
    alert = next(a for a in m.alerts if a.feature == "b" and a.statistic == "psi")
    assert alert.value > 0.25 and alert.threshold >= 0.25 and alert.model == "m" and alert.version == "1.0.0"
    fold(m, requests(rng, 100), time.monotonic())
    assert any(a.feature == "b" for a in m.alerts)  # one window below does not clear
    events = fold(m, requests(rng, 100), time.monotonic())
    assert ("b", "psi") in {(e.alert.feature, e.alert.statistic) for e in events if e.kind == "cleared"}
    assert not any(a.feature == "b" for a in m.alerts)


def test_time_windows_close_on_time_even_without_traffic(profile):
    m = monitor(profile, window_requests=10_000, window_s=10.0)
    rng = np.random.default_rng(3)
    t0 = time.monotonic()
    fold(m, requests(rng, 30, t0=t0, dt=0.5), t0 + 15)  # 30 requests over 15 s: one closes at 10 s
    (w,) = [w for w in m.report().windows if w.kind == "time"]
    assert w.requests == 20 and w.end_unix - w.start_unix == pytest.approx(10.0, abs=0.05)
    assert m.report().open_time_requests == 10
    fold(m, [], t0 + 45)  # no traffic: the open window closes; empty ones are skipped
    assert [h.requests for h in m.history("time")] == [20, 10]
    # the window started when the monitor was made, just before t0 (an absolute tolerance: a relative one
    # shrinks with the machine's uptime, which time.monotonic counts from)
    assert m.next_time_boundary() == pytest.approx(t0 + 50, abs=0.05)


def test_fleet_merge_sums_counts_to_exactly_one_monitors_statistics(profile):
    rng = np.random.default_rng(4)
    stream = requests(rng, 300, shift=0.5)
    whole = monitor(profile)
    fold(whole, stream, time.monotonic())
    parts = [monitor(profile) for _ in range(3)]
    for i, part in enumerate(parts):
        fold(part, stream[i::3], time.monotonic())  # a load balancer spreading requests over 3 sidecars
    merged = sum(p.cumulative_counts() for p in parts)
    assert np.array_equal(merged, whole.cumulative_counts())
    counter = whole.counter
    for slot in counter.slots:
        fleet = drift.psi(slot.distribution(counter.reference), slot.distribution(merged))
        single = whole.report().window("cumulative").feature(slot.name).statistic("psi").value
        assert fleet == single
    # The snapshot (the telemetry read API) exposes the same cumulative counters.
    snap = {f.feature: f for f in whole.snapshot().features}
    slot = counter.slots[0]
    assert snap[slot.name].cumulative == tuple(int(c) for c in merged[slot.start : slot.stop])
    assert len(snap[slot.name].bins) == len(snap[slot.name].cumulative) == 14


def test_quality_statistics_missing_inf_out_of_range_unknown_category(profile):
    m = monitor(profile)
    rng = np.random.default_rng(5)
    items = requests(rng, 100, rows=4)
    for inputs, _, _, _ in items[:20]:
        inputs["x"][0, 0] = np.nan
        inputs["x"][1, 2] = np.inf
        inputs["x"][2, 1] = 1e6
        inputs["city"][0, 0] = b""
        inputs["city"][1, 0] = b"atlantis"
    for _ in range(7):
        m.rejected()
    # A batch of 3 requests whose tensors cannot be counted (10 values for 3 columns): dropped, counted.
    m.observe({"x": np.zeros((2, 5), np.float32)}, {}, (1, 1, 1))
    fold(m, items, time.monotonic())
    w = m.report().window("count")
    assert w.feature("a").statistic("missing_rate").value == pytest.approx(20 / 400)
    assert w.feature("a").statistic("missing_rate").status == drift.ALERT
    assert w.feature("c").statistic("inf_rate").value == pytest.approx(20 / 400)
    assert w.feature("b").statistic("out_of_range_rate").value >= 20 / 400
    assert w.feature("city").statistic("missing_rate").value == pytest.approx(20 / 400)
    assert w.schema_violations == 7 and w.dropped == 3
    viol = w.statistics[0]
    assert viol.name == "schema_violation_rate" and viol.value == pytest.approx(7 / 110)
    assert viol.status == drift.ALERT
    snap = {f.feature: f for f in m.snapshot().features}
    assert snap["city"].cumulative[-2] == 20  # "other": the unseen category
    assert snap["city"].bins[-2:] == ("other", "missing")


def test_missing_outputs_are_not_counted(profile):
    m = monitor(profile)
    rng = np.random.default_rng(6)
    items = [(i, {"label": o["label"]}, t, r) for i, o, t, r in requests(rng, 100)]
    fold(m, items, time.monotonic())
    w = m.report().window("count")
    assert w.feature("probabilities.confidence").values == 0
    assert w.feature("label").values == 400


def merged(items):
    """One batch of several requests, as the dynamic batcher hands it over (arrays concatenated)."""
    inputs = {k: np.concatenate([i[k] for i, _, _, _ in items]) for k in items[0][0]}
    outputs = {k: np.concatenate([o[k] for _, o, _, _ in items]) for k in items[0][1]}
    return inputs, outputs, [r for _, _, _, r in items]


def test_batches_are_split_at_the_count_window_boundary_exactly_like_single_requests(profile):
    rng = np.random.default_rng(7)
    items = []
    for k in range(230):
        inputs = make_rows(rng, 1 + k % 5, shift=0.5 * (k // 100))
        items.append((inputs, answer(inputs), 0.0, 1 + k % 5))
    one_by_one = monitor(profile)
    fold(one_by_one, items)
    batched = monitor(profile)
    woken = []
    batched._wake = lambda: woken.append(1)
    sizes = [7, 64, 1, 93, 35, 30]  # batches straddling the boundaries at 100 and 200 requests
    assert sum(sizes) == len(items)
    i = 0
    for size in sizes:
        batched.observe(*merged(items[i : i + size]))
        i += size
    assert batched._closed and len(woken) == 2  # two windows closed, queued for evaluation, the stage woken
    batched.tick()
    for a, b in zip(one_by_one.history("count"), batched.history("count"), strict=True):
        assert (a.index, a.requests, a.rows, a.features) == (b.index, b.requests, b.rows, b.features)
    assert [w.requests for w in batched.history("count")] == [100, 100]
    assert np.array_equal(one_by_one.cumulative_counts(), batched.cumulative_counts())
    assert batched.report().open_count_requests == 30 and batched.report().rows_total == sum(r for *_, r in items)


def test_held_batches_are_counted_on_read_and_a_bad_one_is_dropped_alone(profile, caplog):
    m = monitor(profile)
    rng = np.random.default_rng(9)
    good = [make_rows(rng, 4) for _ in range(3)]
    bad = {"x": np.zeros((2, 5), np.float32), "code": np.zeros(2, np.int64), "city": CITIES[:2]}
    m.observe(good[0], answer(good[0]), (4,))
    m.observe(bad, {}, (1, 1))
    m.observe(good[1], answer(good[1]), (2, 2))
    m.observe(good[2], answer(good[2]), (4,))
    assert m._held  # small batches wait to be counted together
    r = m.report()  # reading counts them first
    assert (r.requests_total, r.rows_total, r.dropped_total, r.errors_total) == (4, 12, 2, 1)
    alone = monitor(profile)
    for x in good:
        alone.observe(x, answer(x), (4,))
    np.testing.assert_array_equal(m.cumulative_counts(), alone.cumulative_counts())
    assert "could not count" in caplog.text


def test_a_batch_that_cannot_be_counted_is_logged_not_raised(profile, caplog):
    m = monitor(profile)
    bad = {"x": np.zeros((2, 5), np.float32), "code": np.zeros(2, np.int64), "city": CITIES[:2]}
    m.observe(bad, {}, (1, 1))  # 10 values for 3 columns
    m.observe(bad, {}, None)  # not even a list of rows: still no exception
    assert m.tick() == []
    r = m.report()
    assert r.errors_total == 2 and r.dropped_total == 2 and r.requests_total == 0
    assert "could not count" in caplog.text


def test_profile_counter_rejects_nothing_it_built_itself(profile):
    # Round trip through JSON keeps every count (fleet collectors read profiles from disk).
    from sidecar.monitoring.profile import parse_profile, profile_to_dict

    again = parse_profile(profile_to_dict(profile), "mem")
    assert again.sources == profile.sources
    bad = dataclasses.replace(profile, bins=3)
    with pytest.raises(Exception, match="edges"):
        parse_profile(profile_to_dict(bad), "mem")


@pytest.mark.parametrize("n", [1, 2, 64, 65, 300])
def test_category_counts_of_small_batches_equal_the_vectorized_counts(n):
    from sidecar.monitoring.binning import CategoryLookup

    rng = np.random.default_rng(n)
    cases = [
        (CategoricalFeature("code", (7, 3, -2), (1, 1, 1, 0, 0)), "int", rng.choice([3, 7, 9, -2, 0], n)),
        (CategoricalFeature("codef", (7, 3), (1, 1, 0, 0)), "int", rng.choice([3.0, 7.0, 7.9, -1.0], n)),
        (
            CategoricalFeature("city", ("paris", "lyon"), (1, 1, 0, 0)),
            "bytes",
            rng.choice(np.array([b"paris", "lyon", b"", b"nice", None], dtype=object), n),
        ),
    ]
    for feature, kind, column in cases:
        lookup = CategoryLookup(feature, kind)
        flat = np.zeros(lookup.size + 3, np.int64)
        lookup.add(column, flat, 2)
        expected = np.bincount(lookup.codes(column), minlength=lookup.size)
        assert flat[:2].tolist() == [0, 0] and flat[-1] == 0
        assert flat[2 : 2 + lookup.size].tolist() == expected.tolist(), (feature.name, column)
        assert flat.sum() == n


@pytest.mark.parametrize("n", [0, 1, 5, 9, 64, 65, 300])
def test_batch_counter_counts_exactly_what_the_profile_path_counts(profile, n):
    from sidecar.monitoring.histogram import implementations

    rng = np.random.default_rng(100 + n)
    inputs = make_rows(rng, n, shift=0.7)
    if n:
        inputs["x"][0, 1] = np.nan
        inputs["city"][-1, 0] = b"atlantis"
    outputs = answer(inputs)
    if n > 2:
        outputs["probabilities"][1, 0] = np.nan  # a NaN confidence
    for update in implementations().values():
        counter = ProfileCounter(profile, update)
        expected = counter.zeros()
        counter.count([inputs], [outputs], expected)
        flat = counter.zeros()
        count = counter.batch_counter(flat)
        count([inputs], [outputs])
        np.testing.assert_array_equal(flat, expected)
        assert flat.sum() == n * len(counter.slots)
        cut = [0, n // 3, n // 2, n]  # the same rows as three batches held and counted together
        parts = [{k: a[i:j] for k, a in d.items()} for d in (inputs, outputs) for i, j in itertools.pairwise(cut)]
        flat[:] = 0
        count(parts[:3], parts[3:])
        np.testing.assert_array_equal(flat, expected)
        with pytest.raises(ValueError):  # an output unreadable (9 values, rows of 2): raises, counting nothing
            count([inputs], [{**outputs, "probabilities": np.zeros((3, 3), np.float32)}])
        np.testing.assert_array_equal(flat, expected)


def test_unbatched_tensors_held_together_are_counted_like_one_by_one():
    # A version without a batch dimension: each request's tensor is one row, scalars included.
    from sidecar.monitoring.build import build_profile

    rng = np.random.default_rng(12)
    train = {"v": rng.normal(size=(500, 3)).astype(np.float32), "s": rng.normal(size=(500, 1)).astype(np.float32)}
    specs = (TensorSpec("v", "FP32", (3,)), TensorSpec("s", "FP32", ()))
    prof = build_profile("u", "1.0.0", specs, (), train, {}, {})
    together, alone = monitor(prof), monitor(prof)
    for i in range(40):
        inputs = {"v": train["v"][i], "s": train["s"][i, 0].reshape(())}
        together.observe(inputs, {}, (1,))
        alone.observe(inputs, {}, (1,))
        alone.cumulative_counts()  # a read counts what is held: one request at a time
    assert together._held and together.report().errors_total == 0
    np.testing.assert_array_equal(together.cumulative_counts(), alone.cumulative_counts())
    assert together.report().rows_total == 40 and together.cumulative_counts().sum() == 40 * 4


class UnalignedLazy(LazyTensors):
    """A request's tensors as ``PlannedInputs`` gives them: decoded on first read, numeric ones as
    unaligned views of the request's bytes (``aligned()`` copies those)."""

    __slots__ = ("decodes", "rows")

    def __init__(self, rows: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.rows = rows
        self.decodes = 0

    def _decode(self) -> dict[str, np.ndarray]:
        self.decodes += 1
        out = {}
        for name, array in self.rows.items():
            if array.dtype == object:
                out[name] = array
                continue
            raw = bytearray(1) + array.tobytes()
            out[name] = np.ndarray(array.shape, array.dtype, bytes(raw), 1)  # one byte in: unaligned
        return out

    def __len__(self) -> int:
        return len(self.rows)


@pytest.mark.parametrize("count", [1, 5])
def test_a_request_s_tensors_are_decoded_only_when_counted_and_unaligned_ones_count_alike(profile, count):
    """The unbatched scheduler hands the monitor a request's lazy tensors: nothing is decoded when it is
    observed; held together they are merged (which aligns), held alone (or split at a window's end)
    they are aligned first: the counts are those of plain arrays."""
    rng = np.random.default_rng(11)
    rows = [make_rows(rng, 3) for _ in range(count)]
    lazy = [UnalignedLazy(r) for r in rows]
    assert not lazy[0]["x"].flags.aligned
    lazy = [UnalignedLazy(r) for r in rows]  # (fresh: none decoded yet)
    m, plain = monitor(profile), monitor(profile)
    seen = []  # what reached the counter: one batch's arrays must be aligned (the kernel reads them)
    count_batch = m._count_batch

    def recording(inputs, outputs):
        if len(inputs) == 1:
            seen.extend(a.flags.aligned for a in inputs[0].values() if a.dtype != object)
        return count_batch(inputs, outputs)

    m._count_batch = recording
    for x, r in zip(lazy, rows, strict=True):
        m.observe(x, answer(r), (3,))
        plain.observe(r, answer(r), (3,))
    assert all(x.decodes == 0 for x in lazy)  # held, not read
    assert m.report().rows_total == 3 * count  # reading counts the held ones
    assert all(x.decodes == 1 for x in lazy)
    assert all(seen) and (len(seen) > 0) == (count == 1)
    np.testing.assert_array_equal(m.cumulative_counts(), plain.cumulative_counts())
    # A batch of lazy tensors that crosses the count window's boundary is split after aligning.
    crossing = monitor(profile, window_requests=2)
    big = make_rows(rng, 3)
    crossing.observe(UnalignedLazy(big), answer(big), (1, 1, 1))
    reference = monitor(profile, window_requests=2)
    reference.observe(big, answer(big), (1, 1, 1))
    np.testing.assert_array_equal(crossing.cumulative_counts(), reference.cumulative_counts())


def test_image_sized_rows_are_counted_batch_by_batch_and_small_ones_held_together(profile):
    """Held rows keep their batch's memory alive (a kept merge buffer, an ingest worker's shared memory):
    at most HOLD_BYTES of inputs are held; a version's hold comes from its input signature."""
    from sidecar.monitoring.version_monitor import HOLD_BYTES, HOLD_ROWS, hold_rows
    from sidecar.types import row_bytes

    image = (TensorSpec("image", "FP32", (-1, 3, 224, 224)),)
    assert row_bytes(image) == 3 * 224 * 224 * 4 and hold_rows(row_bytes(image)) == 1
    assert hold_rows(row_bytes((TensorSpec("x", "FP32", (-1, 64)),))) == HOLD_ROWS
    assert hold_rows(row_bytes((TensorSpec("x", "FP32", (-1, -1)),))) == HOLD_ROWS  # variable: unknown
    assert hold_rows(row_bytes(INPUTS)) == HOLD_ROWS  # a BYTES input: unknown
    assert hold_rows(HOLD_BYTES // 8) == 8
    rng = np.random.default_rng(5)
    batches = [make_rows(rng, 4) for _ in range(3)]
    held, at_once = (
        monitor(profile),
        VersionMonitor(
            "m",
            "1.0.0",
            ProfileCounter(profile),
            MonitoringConfig(window_requests=100, window_s=3600.0),
            has_reference=True,
            hold=4,
        ),
    )
    for rows in batches:
        held.observe(rows, answer(rows), (4,))
        at_once.observe(rows, answer(rows), (4,))
        assert not at_once._held  # 4 rows reach its hold: counted at once, nothing kept
    assert len(held._held) == 3
    np.testing.assert_array_equal(held.cumulative_counts(), at_once.cumulative_counts())


def test_a_loaded_version_s_monitor_holds_by_its_input_signature(tmp_path):
    from types import SimpleNamespace

    from sidecar.monitoring.monitor import Monitoring
    from sidecar.monitoring.version_monitor import HOLD_ROWS

    stage = Monitoring(MonitoringConfig())
    holds = {}
    for name, shape in (("image", (-1, 3, 224, 224)), ("tabular", (-1, 64))):
        mv = SimpleNamespace(name=name, version_str="1.0.0", path=str(tmp_path), observer=None)
        engine = SimpleNamespace(
            max_batch_size=8,
            inputs=(TensorSpec("x", "FP32", shape),),
            outputs=(TensorSpec("y", "FP32", (-1, 2)),),
        )
        stage.prepare(mv, engine)
        holds[name] = mv.observer._hold_rows
    assert holds == {"image": 1, "tabular": HOLD_ROWS}
