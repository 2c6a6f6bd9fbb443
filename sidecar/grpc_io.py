"""Which of gRPC's two socket I/O paths this process uses, chosen before gRPC starts.

grpcio 1.80 made gRPC's EventEngine the default for Python: sockets are read and written on
gRPC's own thread pool, and each completion is handed to the thread that polls the completion queue
(for ``grpc.aio``, then on to the event loop). The older path ("poller") does the socket I/O on the
thread that polls. Measured on this project's 2-core machine (README, Performance):

- ``poller``: a request served alone answers ~0.15 ms sooner per gRPC hop (a proxied request makes
  two), and each request costs the same or less server CPU;
- ``event_engine``: ~7 % more requests/s at concurrency 64 when the sidecar runs local models (paired: the
  I/O threads work beside the event loop, which needs the CPU for the models' requests).

``auto`` (the default) picks ``poller`` when every version in the repository at start is an upstream
(the sidecar only forwards: two gRPC hops per request, no local compute) and ``event_engine``
otherwise.

gRPC reads its experiment list (``GRPC_EXPERIMENTS``) once, when its core loads (``import grpc``), so
:func:`choose` must run before that; ``sidecar serve`` calls it right after reading its configuration.
A ``GRPC_EXPERIMENTS`` already in the environment is the operator's and is left as it is.

This module imports nothing of gRPC.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

from sidecar.engine.layout import is_upstream_version, version_dirs

MODES = ("auto", "poller", "event_engine")
POLLER_EXPERIMENTS = "-event_engine_client,-event_engine_listener"  # gRPC's names (src/core/lib/experiments)


def check(mode: str) -> None:
    """``ValueError`` naming the setting if ``mode`` is none of ``MODES``."""
    if mode not in MODES:
        raise ValueError(f"server.grpc_io must be one of {', '.join(MODES)}, not {mode!r}")


def resolve(mode: str, repository: str | os.PathLike[str] | None) -> tuple[str, str]:
    """``mode`` with ``auto`` decided for ``repository``: (poller | event_engine, why in words)."""
    check(mode)
    if mode != "auto":
        return mode, "server.grpc_io"
    versions = list(version_dirs(Path(repository))) if repository else []
    if versions and all(is_upstream_version(v) for v in versions):
        return "poller", f"auto: all {len(versions)} version(s) in the repository are upstreams"
    return "event_engine", "auto: the repository has local models" if versions else "auto: no versions at start"


def choose(
    mode: str, repository: str | os.PathLike[str] | None = None, environ: MutableMapping[str, str] | None = None
) -> str:
    """Make gRPC use ``mode``'s I/O when it loads; return what is in effect, in words, for the log.

    ``environ`` defaults to ``os.environ`` (what gRPC reads); anything else is for tests."""
    mode, why = resolve(mode, repository)
    env = os.environ if environ is None else environ
    if "GRPC_EXPERIMENTS" in env:
        return f"as GRPC_EXPERIMENTS={env['GRPC_EXPERIMENTS']!r} says ({mode} not applied)"
    if environ is None and "grpc._cython.cygrpc" in sys.modules:
        return f"gRPC's default (gRPC was loaded before {mode} could apply)"
    if mode == "poller":
        env["GRPC_EXPERIMENTS"] = POLLER_EXPERIMENTS
    return f"{mode} ({why})"
