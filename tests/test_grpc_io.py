"""The choice of gRPC's socket I/O (sidecar/grpc_io.py): what it writes, and that gRPC accepts it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import servers
from sidecar import grpc_io
from sidecar.testing.models import mlp_model, write_version
from tests.conftest import GRPC_IO


def test_poller_turns_off_the_event_engine_endpoints() -> None:
    env: dict[str, str] = {}
    assert grpc_io.choose("poller", env) == "poller"
    assert env == {"GRPC_EXPERIMENTS": "-event_engine_client,-event_engine_listener"}


def test_event_engine_leaves_grpc_defaults() -> None:
    env: dict[str, str] = {}
    assert grpc_io.choose("event_engine", env) == "event_engine"
    assert env == {}


def test_an_operators_grpc_experiments_wins() -> None:
    env = {"GRPC_EXPERIMENTS": "-event_engine_dns"}
    said = grpc_io.choose("poller", env)
    assert env == {"GRPC_EXPERIMENTS": "-event_engine_dns"}
    assert "GRPC_EXPERIMENTS='-event_engine_dns'" in said and "not applied" in said


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match=re.escape("server.grpc_io must be one of poller, event_engine, not 'epoll'")):
        grpc_io.choose("epoll", {})


def test_the_test_servers_run_on_the_chosen_path() -> None:
    """conftest chose before gRPC loaded, so in-process servers use what `sidecar serve` uses."""
    assert not GRPC_IO.startswith("gRPC's default (gRPC was loaded"), GRPC_IO


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
    assert out.stdout.splitlines() == [
        "gRPC's default (gRPC was loaded before server.grpc_io=poller could apply)",
        "False",
    ]


def test_installed_grpc_knows_the_experiments_it_is_told_to_turn_off() -> None:
    """A grpcio that dropped these experiments would log 'Unknown experiment' at every start."""
    code = (
        "from sidecar import grpc_io; assert grpc_io.choose('poller') == 'poller'\n"
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


@pytest.mark.parametrize("mode", ["poller", "event_engine"])
def test_sidecar_serve_runs_on_the_configured_path(mode: str, tmp_path: Path) -> None:
    write_version(tmp_path / "repo", "mlp", "1.0.0", mlp_model, seed=0, hidden=8)
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    settings = {"server.grpc_io": mode, "engine.providers": "CPUExecutionProvider", "telemetry.metrics_port": -1}
    with servers.start_sidecar(
        tmp_path / "repo", models=["mlp"], settings=settings, env=env, extra_args=["--log-level", "INFO"]
    ) as server:
        log = server.log_path.read_text()
    assert f"gRPC I/O: {mode}\n" in log, log
