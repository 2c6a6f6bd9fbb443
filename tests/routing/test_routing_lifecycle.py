"""A full version cycle under continuous traffic loses no request."""

from __future__ import annotations

import threading
import time
from collections import Counter

import grpc
import tritonclient.grpc as tc
from conftest import Control, mlp_input

from sidecar.protocol._generated import grpc_service_pb2 as pb
from sidecar.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from sidecar.testing.models import mlp_model, write_version
from sidecar.testing.server import ServerThread, config_for_tests


class Traffic:
    """Client threads sending requests back to back; counts versions and failures per phase."""

    def __init__(self, url: str, threads: int = 2) -> None:
        self.url = url
        self.failures: list[str] = []
        self.phase = "start"
        self.seen: dict[str, Counter] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        self._lock = threading.Lock()

    def _run(self, index: int) -> None:
        client = tc.InferenceServerClient(self.url)
        inputs, _ = mlp_input(seed=index)
        n = 0
        while not self._stop.is_set():
            n += 1
            phase = self.phase  # the phase the request was sent in (an answer may arrive after it ends)
            try:
                version = client.infer("mlp", inputs, headers={"x-routing-key": f"t{index}-{n}"}, client_timeout=10)
                version = version.get_response().model_version
                with self._lock:
                    self.seen.setdefault(phase, Counter())[version] += 1
            except Exception as exc:
                with self._lock:
                    self.failures.append(f"{phase}: {exc}")

    def in_phase(self, name: str, seconds: float) -> None:
        self.phase = name
        time.sleep(seconds)

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


def unload(url: str, model: str, version: str) -> None:
    with grpc.insecure_channel(url) as channel:
        request = pb.RepositoryModelUnloadRequest(model_name=model)
        request.parameters["version"].string_param = version
        pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(request, timeout=30)


def test_load_shift_and_unload_under_traffic_loses_nothing(tmp_path):
    repo = tmp_path / "repo"
    write_version(repo, "mlp", "1.0.0", mlp_model, hidden=32, seed=0)
    with ServerThread(config_for_tests(str(repo))) as srv:
        control = Control(srv.control_url)
        admin = tc.InferenceServerClient(srv.url)
        control.set("mlp", {"1.0.0": 100}, reason="hold 1.0.0 while 2.0.0 arrives")
        with Traffic(srv.url) as traffic:
            traffic.in_phase("v1 only", 0.5)
            write_version(repo, "mlp", "2.0.0", mlp_model, hidden=32, seed=1)
            traffic.phase = "loading v2"
            admin.load_model("mlp")  # loads and warms 2.0.0; the policy keeps it at 0 %
            assert admin.is_model_ready("mlp", "2.0.0")
            traffic.in_phase("v2 loaded", 0.5)
            # Requests sent around a policy change belong to no phase: let those of the last phase land first.
            traffic.in_phase("setting the canary", 0.2)
            control.set("mlp", {"1.0.0": 90, "2.0.0": 10})
            traffic.in_phase("canary 10%", 1.5)
            traffic.in_phase("setting 100%", 0.2)
            control.set("mlp", {"2.0.0": 100})
            traffic.in_phase("v2 100%", 0.5)
            traffic.phase = "unloading v1"
            unload(srv.url, "mlp", "1.0.0")
            traffic.in_phase("v1 gone", 0.7)
        assert traffic.failures == []
        seen = traffic.seen
        assert set(seen["v1 only"]) == {"1.0.0"}
        assert set(seen["v2 loaded"]) == {"1.0.0"}
        canary = seen["canary 10%"]
        assert canary["2.0.0"] > 0 and canary["1.0.0"] > canary["2.0.0"]
        assert set(seen["v1 gone"]) == {"2.0.0"}
        assert sum(sum(c.values()) for c in seen.values()) > 100
        assert [v.version_str for v in srv.app.repository.versions("mlp")] == ["2.0.0"]


def test_a_policy_version_that_disappears_falls_back_instead_of_failing(tmp_path):
    repo = tmp_path / "repo"
    for i, version in enumerate(("1.0.0", "2.0.0")):
        write_version(repo, "mlp", version, mlp_model, hidden=32, seed=i)
    with ServerThread(config_for_tests(str(repo))) as srv:
        Control(srv.control_url).set("mlp", {"1.0.0": 50, "2.0.0": 50})
        with Traffic(srv.url) as traffic:
            traffic.in_phase("split", 0.6)
            traffic.phase = "unloading 2.0.0"
            unload(srv.url, "mlp", "2.0.0")  # still weighted 50 % in the policy
            traffic.in_phase("2.0.0 gone", 0.6)
        assert traffic.failures == []
        assert set(traffic.seen["split"]) == {"1.0.0", "2.0.0"}
        assert set(traffic.seen["2.0.0 gone"]) == {"1.0.0"}
        assert srv.app.router.fallbacks > 0
