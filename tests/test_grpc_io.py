"""The choice of gRPC's socket I/O (sidecar/grpc_io.py): what it writes, auto's rule, that gRPC
accepts it, and that `sidecar serve` serves real requests on each path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc

from bench import servers
from sidecar import grpc_io
from sidecar.testing.models import mlp_model, write_version


def _upstream_version(repo: Path, model: str, version: str, target: str = "127.0.0.1:1") -> None:
    (repo / model / version).mkdir(parents=True)
    (repo / model / version / "upstream.json").write_text(json.dumps({"target": target}))


def test_poller_turns_off_the_event_engine_endpoints() -> None:
    env: dict[str, str] = {}
    assert grpc_io.choose("poller", None, env) == "poller (server.grpc_io)"
    assert env == {"GRPC_EXPERIMENTS": "-event_engine_client,-event_engine_listener"}


def test_event_engine_leaves_grpc_defaults() -> None:
    env: dict[str, str] = {}
    assert grpc_io.choose("event_engine", None, env) == "event_engine (server.grpc_io)"
    assert env == {}


def test_auto_polls_for_a_repository_of_upstreams_only(tmp_path: Path) -> None:
    _upstream_version(tmp_path, "a", "1.0.0")
    _upstream_version(tmp_path, "b", "2.0.0")
    (tmp_path / "b" / "notes").mkdir()  # not a version folder
    assert grpc_io.resolve("auto", tmp_path) == ("poller", "auto: all 2 version(s) in the repository are upstreams")


def test_auto_keeps_event_engine_when_a_model_runs_here(tmp_path: Path) -> None:
    _upstream_version(tmp_path, "a", "1.0.0")
    write_version(tmp_path, "b", "1.0.0", mlp_model, seed=0, hidden=8)
    assert grpc_io.resolve("auto", tmp_path) == ("event_engine", "auto: the repository has local models")
    # A version folder with both files runs model.onnx here (the repository's rule), so it is local too.
    (tmp_path / "b" / "1.0.0" / "upstream.json").write_text("{}")
    assert grpc_io.resolve("auto", tmp_path)[0] == "event_engine"


def test_auto_without_versions_keeps_grpc_defaults(tmp_path: Path) -> None:
    assert grpc_io.resolve("auto", tmp_path / "missing") == ("event_engine", "auto: no versions at start")
    assert grpc_io.resolve("auto", "") == ("event_engine", "auto: no versions at start")


def test_an_operators_grpc_experiments_wins() -> None:
    env = {"GRPC_EXPERIMENTS": "-event_engine_dns"}
    said = grpc_io.choose("poller", None, env)
    assert env == {"GRPC_EXPERIMENTS": "-event_engine_dns"}
    assert said == "as GRPC_EXPERIMENTS='-event_engine_dns' says (poller not applied)"


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match=re.escape("server.grpc_io must be one of auto, poller, event_engine")):
        grpc_io.choose("epoll", None, {})


def test_too_late_is_said_and_changes_nothing() -> None:
    code = (
        "import os, grpc\n"
        "from sidecar import grpc_io\n"
        "print(grpc_io.choose('poller'))\n"
        "print('GRPC_EXPERIMENTS' in os.environ)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["gRPC's default (gRPC was loaded before poller could apply)", "False"]


def test_installed_grpc_knows_the_experiments_it_is_told_to_turn_off() -> None:
    """A grpcio that dropped these experiments would log 'Unknown experiment' at every start."""
    code = (
        "from sidecar import grpc_io; assert grpc_io.choose('poller').startswith('poller')\n"
        "import asyncio, grpc\n"
        "async def main():\n"
        "    server = grpc.aio.server(); port = server.add_insecure_port('127.0.0.1:0'); await server.start()\n"
        "    async with grpc.aio.insecure_channel(f'127.0.0.1:{port}') as ch:\n"
        "        try: await ch.unary_unary('/no.Such/Method')(b'', timeout=5)\n"
        "        except grpc.aio.AioRpcError as e: print(e.code().name)\n"
        "    await server.stop(None)\n"
        "asyncio.run(main())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    env["GRPC_VERBOSITY"] = "INFO"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "UNIMPLEMENTED"
    assert "Unknown experiment" not in out.stderr


def test_the_command_line_loads_grpc_only_after_reading_the_configuration() -> None:
    code = "import sys\nfrom sidecar import cli\ncli.build_parser()\nprint('grpc._cython.cygrpc' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def _infer(target: str) -> np.ndarray:
    client = tc.InferenceServerClient(target)
    x = np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32)
    inp = tc.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("mlp", [inp]).as_numpy("probabilities")


def _serve(repo: Path, settings: dict[str, object]) -> servers.ServerProcess:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    settings = {"engine.providers": "CPUExecutionProvider", "telemetry.metrics_port": -1, **settings}
    return servers.start_sidecar(repo, models=["mlp"], settings=settings, env=env, extra_args=["--log-level", "INFO"])


@pytest.mark.parametrize("mode", ["poller", "event_engine"])
def test_sidecar_serve_serves_on_the_configured_path(mode: str, tmp_path: Path) -> None:
    write_version(tmp_path / "repo", "mlp", "1.0.0", mlp_model, seed=0, hidden=8)
    with _serve(tmp_path / "repo", {"server.grpc_io": mode}) as server:
        out = _infer(server.target)
        log = server.log_path.read_text()
    assert out.shape == (1, 10) and np.isfinite(out).all()
    assert f"gRPC I/O: {mode} (server.grpc_io)\n" in log, log


def test_a_proxy_sidecar_polls_and_forwards(tmp_path: Path) -> None:
    """auto on a repository of upstreams only: poller, and requests go through to the upstream."""
    write_version(tmp_path / "up", "mlp", "1.0.0", mlp_model, seed=0, hidden=8)
    with _serve(tmp_path / "up", {}) as upstream:
        _upstream_version(tmp_path / "proxy", "mlp", "1.0.0", upstream.target)
        with _serve(tmp_path / "proxy", {"batching.enabled": False}) as proxy:
            np.testing.assert_array_equal(_infer(proxy.target), _infer(upstream.target))
            proxy_log = proxy.log_path.read_text()
        upstream_log = upstream.log_path.read_text()
    assert "gRPC I/O: poller (auto: all 1 version(s) in the repository are upstreams)\n" in proxy_log, proxy_log
    assert "gRPC I/O: event_engine (auto: the repository has local models)\n" in upstream_log, upstream_log
