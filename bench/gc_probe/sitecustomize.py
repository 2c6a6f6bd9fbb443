"""Garbage-collector time of a served sidecar, from inside it: ``gc.callbacks``, per generation.

Put this folder first on ``PYTHONPATH`` of the server's process and name a file in ``SIDECAR_GC_PROBE``:
Python imports ``sitecustomize`` at start-up, and on each SIGUSR1 (and at exit) the file gets the
collections so far, their total time and what they freed, per generation, as JSON
(``{"snapshot": k, "n": [g0, g1, g2], "ns": [...], "collected": [...]}``). ``bench.bench_gc`` takes a
snapshot before and after a load window and divides by the requests served.

    env = {**os.environ, "PYTHONPATH": "bench/gc_probe", "SIDECAR_GC_PROBE": "/tmp/gc.json"}
    servers.start_sidecar(repo, models=["mlp"], env=env)
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import signal
import time

_path = os.environ.get("SIDECAR_GC_PROBE")
if _path:
    _stats = {"snapshot": 0, "n": [0, 0, 0], "ns": [0, 0, 0], "collected": [0, 0, 0]}
    _started = [0]

    def _write(*_: object) -> None:
        _stats["snapshot"] += 1
        tmp = f"{_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(_stats, f)
        os.replace(tmp, _path)

    def _on_collection(phase: str, info: dict) -> None:
        if phase == "start":
            _started[0] = time.perf_counter_ns()
            return
        g = info["generation"]
        _stats["n"][g] += 1
        _stats["ns"][g] += time.perf_counter_ns() - _started[0]
        _stats["collected"][g] += info["collected"]

    gc.callbacks.append(_on_collection)
    signal.signal(signal.SIGUSR1, _write)
    atexit.register(_write)
    _write()
