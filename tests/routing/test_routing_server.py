"""Traffic policies, the control API, the CLI, persistence and shadows, through a real server."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from conftest import Control, mlp_input, write_upstream_version

from sidecar import cli
from sidecar.testing.server import ServerThread, config_for_tests
from sidecar.testing.upstream import FakeUpstream
from sidecar.types import TensorSpec

MLP_INPUTS = (TensorSpec("input", "FP32", (-1, 64)),)
MLP_OUTPUTS = (TensorSpec("probabilities", "FP32", (-1, 10)), TensorSpec("label", "INT64", (-1,)))


def served_by(client: tc.InferenceServerClient, **kw) -> str:
    inputs, _ = mlp_input()
    return client.infer("mlp", inputs, **kw).get_response().model_version


def wait_for(predicate, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.fixture
def server(mlp_repo: Path):
    with ServerThread(config_for_tests(str(mlp_repo))) as srv:
        yield srv


def test_canary_split_sticky_keys_and_pinning(server, mlp_repo, tmp_path):
    control = Control(server.control_url)
    client = tc.InferenceServerClient(server.url)
    assert served_by(client) == "1.2.0"  # no policy: newest ready version
    policy = control.set("mlp", {"1.0.0": 80, "1.1.0": 20}, actor="tester")
    assert (policy.stable, policy.revision, policy.source) == ("1.0.0", 1, "control")
    assert "tester" in policy.updated_by

    by_key = {f"user-{i}": served_by(client, headers={"x-routing-key": f"user-{i}"}) for i in range(120)}
    counts = Counter(by_key.values())
    assert set(counts) == {"1.0.0", "1.1.0"}
    assert 10 <= counts["1.1.0"] <= 40
    # Sticky: the same key lands on the same version again, by header or by request parameter.
    for key in list(by_key)[:15]:
        assert served_by(client, headers={"x-routing-key": key}) == by_key[key]
        assert served_by(client, parameters={"routing_key": key}) == by_key[key]
    # Pinning bypasses the policy (1.2.0 has no weight).
    inputs, _ = mlp_input()
    assert client.infer("mlp", inputs, model_version="1.2.0").get_response().model_version == "1.2.0"

    # Same policy on another sidecar (from its config file) -> the same answer for every key.
    other_repo = tmp_path / "other"
    shutil.copytree(mlp_repo, other_repo, ignore=shutil.ignore_patterns(".sidecar"))
    config = config_for_tests(str(other_repo), routing={"policies": {"mlp": {"weights": {"1.0.0": 80, "1.1.0": 20}}}})
    with ServerThread(config) as replica:
        rclient = tc.InferenceServerClient(replica.url)
        assert Control(replica.control_url).get("mlp").source == "config"
        for key in list(by_key)[:40]:
            assert served_by(rclient, headers={"x-routing-key": key}) == by_key[key]


def test_invalid_changes_are_refused_and_the_old_policy_stays(server):
    control = Control(server.control_url)
    control.set("mlp", {"1.0.0": 90, "1.1.0": 10})
    cases = [
        ({"1.0.0": 90, "1.1.0": 5}, "sum to 95 %"),
        ({"1.0.0": 90, "9.9.9": 10}, "version 9.9.9 is not loaded"),
        ({"1.0.0": 99.95, "1.1.0": 0.05}, "0.1 % resolution"),
    ]
    for weights, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            control.set("mlp", weights)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        control.set("mlp", {"1.0.0": 100}, {"1.0.0": 50})
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        control.set("nope", {"1.0.0": 100})
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "not loaded" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        control.get("nope")
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        control.set("mlp", {"1.0.0": 50, "1.1.0": 50}, expected_revision=7)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    current = control.get("mlp")
    assert current.revision == 1
    assert [(s.version, s.percent) for s in current.weights] == [("1.0.0", 90.0), ("1.1.0", 10.0)]


def test_control_token(mlp_repo):
    config = config_for_tests(str(mlp_repo), server={"control_token": "s3cret"})
    with ServerThread(config) as srv:
        with pytest.raises(grpc.RpcError) as err:
            Control(srv.control_url).get("mlp")
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            Control(srv.control_url, token="wrong").get("mlp")
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert Control(srv.control_url, token="s3cret").set("mlp", {"1.1.0": 100}).stable == "1.1.0"
        assert cli.main(["route", "show", "mlp", "--control", srv.control_url, "--token", "s3cret"]) == 0
        assert cli.main(["route", "show", "mlp", "--control", srv.control_url]) == 1


def test_policy_survives_a_restart_and_wins_over_the_config(mlp_repo):
    config = config_for_tests(str(mlp_repo), routing={"policies": {"mlp": {"weights": {"1.2.0": 100}}}})
    with ServerThread(config) as srv:
        control = Control(srv.control_url)
        assert control.get("mlp").source == "config"
        control.set("mlp", {"1.0.0": 70, "1.1.0": 30}, {"1.2.0": 10}, actor="alice", reason="canary")
    state = mlp_repo / ".sidecar" / "routing-state.json"
    assert state.is_file()
    with ServerThread(config) as srv:
        policy = Control(srv.control_url).get("mlp")
        assert (policy.source, policy.revision, policy.reason) == ("state", 1, "canary")
        assert [(s.version, s.percent) for s in policy.weights] == [("1.0.0", 70.0), ("1.1.0", 30.0)]
        assert [(s.version, s.percent) for s in policy.shadows] == [("1.2.0", 10.0)]
        client = tc.InferenceServerClient(srv.url)
        assert {served_by(client, headers={"x-routing-key": f"k{i}"}) for i in range(40)} == {"1.0.0", "1.1.0"}
        # Back to the config's policy, through the CLI.
        assert cli.main(["route", "clear", "mlp", "--to-config", "--control", srv.control_url]) == 0
        assert served_by(client) == "1.2.0"
    with ServerThread(config) as srv:
        policy = Control(srv.control_url).get("mlp")
        assert policy.revision == 2 and [s.version for s in policy.weights] == ["1.2.0"]


def test_cli_verbs(server, capsys):
    url = server.control_url
    argv = ["route", "set", "mlp", "--weights", "1.0.0=90,1.1.0=10", "--shadow", "1.2.0=100", "--control", url]
    assert cli.main([*argv, "--reason", "try 1.1"]) == 0
    out = capsys.readouterr().out
    assert "1.0.0 90%, 1.1.0 10%" in out and "1.2.0 mirrors 100%" in out
    client = tc.InferenceServerClient(server.url)
    for _ in range(5):
        served_by(client)
    assert cli.main(["route", "show", "--control", url]) == 0
    assert "revision 1" in capsys.readouterr().out
    assert cli.main(["route", "history", "mlp", "--control", url]) == 0
    out = capsys.readouterr().out
    assert "set by" in out and "try 1.1" in out and "no policy" in out
    wait_for(lambda: Control(url).report("mlp") and Control(url).report("mlp")[0].total.completed >= 5)
    assert cli.main(["route", "shadows", "mlp", "--control", url]) == 0
    out = capsys.readouterr().out
    assert "mlp shadow 1.2.0" in out and "agreement" in out
    assert cli.main(["route", "set", "mlp", "--weights", "1.0.0=90,1.1.0=5", "--control", url]) == 1
    assert "sum to 95 %" in capsys.readouterr().err
    assert cli.main(["route", "set", "mlp", "--weights", "1.0.0:90", "--control", url]) == 2
    assert cli.main(["route", "clear", "mlp", "--control", url]) == 0
    assert served_by(client) == "1.2.0"


def test_shadow_comparison_is_reported(server):
    control = Control(server.control_url)
    control.set("mlp", {"1.0.0": 100}, {"1.1.0": 100, "1.2.0": 50})
    client = tc.InferenceServerClient(server.url)
    for i in range(60):
        assert served_by(client, headers={"x-routing-key": f"u{i}"}) == "1.0.0"

    def done():
        reports = {r.version: r for r in control.report("mlp")}
        if set(reports) != {"1.1.0", "1.2.0"}:
            return None
        full, half = reports["1.1.0"].total, reports["1.2.0"].total
        return reports if full.completed == 60 and half.completed == half.mirrored else None

    reports = wait_for(done)
    assert reports, control.report("mlp")
    full, half = reports["1.1.0"], reports["1.2.0"]
    assert full.mirror_percent == 100 and half.mirror_percent == 50
    assert 15 <= half.total.mirrored <= 45
    t = full.total
    assert t.class_rows == 60 and 0.0 <= t.agreement <= 1.0
    assert t.mean_abs_diff > 0 and t.max_abs_diff >= t.mean_abs_diff
    assert t.errors == 0 and t.error_rate == 0.0 and t.dropped == 0
    assert not np.isnan(t.mean_latency_diff_ms)
    assert full.windows[-1].mirrored == 60


def test_shadow_comparison_is_exported_as_metrics(mlp_repo):
    """The figures of the control API's report, as Prometheus scrapes them (model.version: the shadow's)."""
    import argparse
    import io
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from sidecar.monitoring.commands import run_status

    telemetry = {"metrics_port": 0, "metrics_host": "127.0.0.1"}
    with ServerThread(config_for_tests(str(mlp_repo), telemetry=telemetry)) as srv:
        control = Control(srv.control_url)
        control.set("mlp", {"1.0.0": 100}, {"1.1.0": 100})
        client = tc.InferenceServerClient(srv.url)
        for i in range(40):
            assert served_by(client, headers={"x-routing-key": f"u{i}"}) == "1.0.0"
        assert wait_for(lambda: control.report("mlp")[0].total.completed == 40)
        total = control.report("mlp")[0].total
        # ... and as `sidecar status` shows them.
        out = io.StringIO()
        args = argparse.Namespace(control=srv.control_url, token="", model="", version="", all=False)
        assert run_status(args, out) == 0
        assert "shadow mlp 1.1.0: mirrored 40, dropped 0, answered 40, errors 0" in out.getvalue()
        text = urllib.request.urlopen(f"http://127.0.0.1:{srv.app.telemetry.prometheus_port}/metrics", timeout=5)
        samples = {}
        for family in text_string_to_metric_families(text.read().decode()):
            for sample in family.samples:
                if sample.labels.get("model_version") == "1.1.0":
                    key = (sample.name, sample.labels.get("outcome") or sample.labels.get("comparison") or "")
                    samples[(*key, sample.labels.get("statistic", ""))] = sample.value

    def value(name: str, kind: str = "", statistic: str = "") -> float:
        return samples[(name, kind, statistic)]

    assert value("sidecar_shadow_copies_total", "mirrored") == total.mirrored == 40
    assert value("sidecar_shadow_copies_total", "answered") == 40
    assert value("sidecar_shadow_copies_total", "dropped") == value("sidecar_shadow_copies_total", "error") == 0
    assert value("sidecar_shadow_rows_total", "class_compared") == total.class_rows == 40
    agreed = value("sidecar_shadow_rows_total", "class_agreed")
    assert agreed == round(total.agreement * 40) and value("sidecar_shadow_agreement") == agreed / 40
    assert value("sidecar_shadow_output_difference", "", "mean") == pytest.approx(total.mean_abs_diff)
    assert value("sidecar_shadow_output_difference", "", "max") == pytest.approx(total.max_abs_diff)
    latency = value("sidecar_shadow_latency_difference_seconds")
    assert latency == pytest.approx(total.mean_latency_diff_ms / 1e3)


def test_failing_hanging_or_garbage_shadows_never_touch_the_primary(tmp_path):
    repo = tmp_path / "repo"
    from sidecar.testing.models import mlp_model, write_version

    write_version(repo, "mlp", "1.0.0", mlp_model, hidden=32)

    def garbage(inputs):
        rows = inputs["input"].shape[0]
        return {"probabilities": np.full((rows, 10), np.nan, np.float32), "label": np.zeros(rows, np.int64)}

    broken = FakeUpstream("mlp", fail_with=grpc.StatusCode.INTERNAL, inputs=MLP_INPUTS, outputs=MLP_OUTPUTS)
    hanging = FakeUpstream("mlp", delay_s=2.0, inputs=MLP_INPUTS, outputs=MLP_OUTPUTS)
    junk = FakeUpstream("mlp", compute=garbage, inputs=MLP_INPUTS, outputs=MLP_OUTPUTS)
    with broken, hanging, junk:
        for version, up in (("2.0.0", broken), ("3.0.0", hanging), ("4.0.0", junk)):
            write_upstream_version(repo, "mlp", version, target=up.target, retries=0, connect_timeout_s=2)
        config = config_for_tests(
            str(repo), routing={"shadow_timeout_s": 0.3, "shadow_queue_size": 8, "shadow_workers": 2}
        )
        with ServerThread(config) as srv:
            control = Control(srv.control_url)
            control.set("mlp", {"1.0.0": 100}, {"2.0.0": 100, "3.0.0": 100, "4.0.0": 100})
            client = tc.InferenceServerClient(srv.url)
            inputs, _ = mlp_input()
            expected = client.infer("mlp", inputs, model_version="1.0.0").as_numpy("probabilities")
            latencies = []
            for _ in range(40):
                start = time.perf_counter()
                result = client.infer("mlp", inputs)
                latencies.append(time.perf_counter() - start)
                assert result.get_response().model_version == "1.0.0"
                np.testing.assert_array_equal(result.as_numpy("probabilities"), expected)
            # The hanging shadow holds both workers for 0.3 s per copy: the queue overflows, and the
            # primary's latency stays far below the shadow's.
            assert sorted(latencies)[len(latencies) // 2] < 0.1

            def settled():
                reports = {r.version: r.total for r in control.report("mlp")}
                return (
                    reports
                    if sum(r.mirrored for r in reports.values())
                    == sum(r.completed + r.errors + r.timeouts for r in reports.values())
                    else None
                )

            reports = wait_for(settled, 30)
            assert reports
            assert sum(r.dropped for r in reports.values()) > 0
            assert sum(r.mirrored + r.dropped for r in reports.values()) == 120
            assert reports["2.0.0"].errors == reports["2.0.0"].mirrored > 0
            assert reports["2.0.0"].error_rate == 1.0
            assert reports["3.0.0"].timeouts == reports["3.0.0"].mirrored > 0
            assert reports["4.0.0"].mismatches == reports["4.0.0"].completed > 0
