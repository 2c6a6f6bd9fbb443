"""What mirroring costs the primary's request path, in process: ``Router.dispatch`` with shadows on vs off.

A real ``Router``, ``ShadowMirror`` and ``ShadowGate`` over versions that answer at once (a prebuilt
response, no model), so the figures are the routing and mirroring code alone. Modes, per request:

- **off**: the model's policy has no shadow (the mirror is inactive: the path every sidecar without
  shadows takes);
- **dropped**: one shadow mirrors 100 % but its queue is full (workers stopped), so every copy is
  dropped and counted: what a saturated server, whose gate keeps shadows off, pays per request;
- **queued**: one shadow mirrors 100 % and the queue always has room (copies queued, workers stopped,
  so their work is not counted here): the primary's share of a copy that is kept.

Each mode runs ``warm`` (back to back, caches hot; rounds alternate the modes; the median per request,
and each mode's extra over *off*) and ``cold`` (a 4 MiB buffer is rewritten before every request, as
other requests' work does in a served process, and only the dispatch is timed; the modes take turns
request by request, and the extra is the median of the paired differences).

    .venv/bin/python -m bench.shadow_path          # about 20 s
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import numpy as np

from sidecar.routing.gate import ShadowGate
from sidecar.routing.policy import CompiledPolicy, TrafficPolicy
from sidecar.routing.router import Router
from sidecar.routing.shadow import ShadowMirror
from sidecar.types import InferenceRequest, InferenceResponse

MODES = ("off", "dropped", "queued")


class _Version:
    def __init__(self, version: str) -> None:
        self.version_str = version
        self.ready = True
        self._response = InferenceResponse("mlp", version, "", {"probabilities": np.zeros((1, 10), np.float32)})

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        return self._response


class _Repository:
    def __init__(self) -> None:
        self._versions = {v: _Version(v) for v in ("1.0.0", "1.1.0")}

    def get(self, name: str, version: str = "") -> _Version:
        return self._versions[version or "1.0.0"]


# The gate times one primary request in its phase's stride, set each 100 ms cycle for about 48 samples
# per phase: at the served benchmark's ~3,400 req/s that is 1 request in 3 at share 1 (on phase 5,
# off phase 1) and 1 in 5 with the gate at its floor (on 1, off 6). This loop runs far faster than
# any server, so the stride is pinned instead (``run(gate_stride=1)``: every request timed).
GATE_STRIDE = 5


def _router(mode: str, queue_size: int, stride: int) -> Router:
    repo = _Repository()
    gate = ShadowGate(cycle_s=3600.0)  # never judges during the run: the stride stays as set
    gate.stride_on = gate.stride_off = stride
    mirror = ShadowMirror(repo.get, queue_size=queue_size, gate=gate)  # workers never started
    router = Router(repo, mirror)  # type: ignore[arg-type]
    shadows = [] if mode == "off" else [("1.1.0", 1000)]
    router.install("mlp", CompiledPolicy.compile(TrafficPolicy.build("mlp", [("1.0.0", 1000)], shadows)))
    return router


async def _setup(mode: str, n: int, stride: int) -> tuple[Router, list[InferenceRequest]]:
    """A router for ``mode``, warmed with ``n`` requests (which, for dropped, fill the queue)."""
    router = _router(mode, 64 if mode == "dropped" else 1 << 30, stride)
    requests = [InferenceRequest("mlp", "", "", {"input": np.zeros((1, 64), np.float32)}) for _ in range(256)]
    for i in range(n):
        await router.dispatch(requests[i % 256])
    return router, requests


async def _warm(mode: str, n: int, stride: int) -> float:
    """Median ns per dispatch over ``n`` requests back to back."""
    router, requests = await _setup(mode, n, stride)
    dispatch = router.dispatch
    clock = time.perf_counter_ns
    times = []
    for i in range(n):
        request = requests[i % 256]
        start = clock()
        await dispatch(request)
        times.append(clock() - start)
    _check(mode, router, n)
    return statistics.median(times)


async def _cold(n: int, stride: int) -> dict[str, list[int]]:
    """ns per dispatch, each after the caches were disturbed; the modes take turns request by request
    (paired: drift on a shared machine hits them alike)."""
    routers = {mode: await _setup(mode, 1000, stride) for mode in MODES}
    buffer = np.zeros(1 << 19, np.float64)  # 4 MiB: this machine's L2 twice over
    clock = time.perf_counter_ns
    times: dict[str, list[int]] = {mode: [] for mode in MODES}
    for i in range(n):
        for k in range(len(MODES)):
            mode = MODES[(i + k) % len(MODES)]
            router, requests = routers[mode]
            buffer += 1.0
            request = requests[i % 256]
            start = clock()
            await router.dispatch(request)
            times[mode].append(clock() - start)
    for mode, (router, _) in routers.items():
        _check(mode, router, n)
    return times


def _check(mode: str, router: Router, n: int) -> None:
    mirror = router.shadows
    if mode == "dropped" and (mirror.dropped_total < n or mirror.queue_depth > 64):
        raise RuntimeError("the dropped mode queued copies")
    if mode == "queued" and mirror.dropped_total:
        raise RuntimeError("the queued mode dropped copies")


def run(rounds: int = 5, n: int = 20_000, n_cold: int = 3_000, gate_stride: int = GATE_STRIDE) -> dict[str, Any]:
    warm: dict[str, list[float]] = {}
    cold: dict[str, list[int]] = {}

    async def main() -> None:
        for r in range(rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                warm.setdefault(mode, []).append(await _warm(mode, n, gate_stride))
        cold.update(await _cold(n_cold, gate_stride))

    asyncio.run(main())
    rows = []
    off = statistics.median(warm["off"])
    for mode in MODES:
        ns = statistics.median(warm[mode])
        rows.append({"caches": "warm", "mode": mode, "dispatch_us": ns / 1e3, "extra_us": (ns - off) / 1e3})
    for mode in MODES:
        paired = [t - o for t, o in zip(cold[mode], cold["off"], strict=True)]
        rows.append(
            {
                "caches": "cold",
                "mode": mode,
                "dispatch_us": statistics.median(cold[mode]) / 1e3,
                "extra_us": statistics.median(paired) / 1e3,
            }
        )
    return {"rows": rows, "rounds": rounds, "requests": {"warm": n, "cold": n_cold}, "gate_stride": gate_stride}


def main() -> None:
    from bench.report import markdown_table

    result = run()
    print(
        markdown_table(
            result["rows"],
            [("caches", "caches"), ("mode", "mode"), ("dispatch_us", "us/dispatch"), ("extra_us", "extra vs off us")],
        )
    )


if __name__ == "__main__":
    main()
