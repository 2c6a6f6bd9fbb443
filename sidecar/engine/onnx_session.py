"""ONNX Runtime engine: one ``InferenceSession`` per loaded version.

Providers come from configuration in order of preference (CUDA first by default); those the
installed onnxruntime lacks are skipped, CPU is always appended as the last resort, and the provider
the session actually uses is reported (``provider``), logged, and shown in model metadata.
Before the first GPU session, ``onnxruntime.preload_dlls()`` loads the CUDA and cuDNN libraries that
NVIDIA's pip packages (``nvidia-cublas``, ``nvidia-cudnn``, ...) install, so onnxruntime-gpu finds them
without ``LD_LIBRARY_PATH``.
Sessions run in a shared thread pool: ONNX Runtime releases the GIL inside ``run``.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from sidecar.errors import EngineError, ModelLoadError
from sidecar.types import TensorSpec

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_preloaded = False


def preload_gpu_libraries(ort) -> None:
    """Once per process: load CUDA/cuDNN from NVIDIA's pip packages (onnxruntime-gpu >= 1.21), if it can."""
    global _preloaded
    if _preloaded or not hasattr(ort, "preload_dlls"):
        return
    _preloaded = True
    try:
        ort.preload_dlls()
    except Exception as exc:  # missing packages: the libraries may still be on the loader's path
        log.info("onnxruntime.preload_dlls() failed (%s); relying on the system's CUDA libraries", exc)


def powers_of_two_to(limit: int) -> list[int]:
    """1, 2, 4, ... below ``limit``, then ``limit``: the batch sizes a padded batch runs at by default
    (at most twice its rows), and the benchmarks' sweep."""
    sizes, b = [], 1
    while b < limit:
        sizes.append(b)
        b *= 2
    return [*sizes, limit]


def choose_providers(preferred: Sequence[str], available: Sequence[str]) -> list[str]:
    chosen = [p for p in preferred if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class OnnxEngine:
    platform = "onnxruntime_onnx"

    def __init__(
        self,
        path: Path,
        *,
        providers: Sequence[str],
        executor: Executor,
        max_batch_size: int,
        intra_op_threads: int = 0,
        spin_wait: bool = False,
        inline_max_us: float = 0.0,
        cudnn_conv_algo_search: str = "HEURISTIC",
        label: str = "",
    ) -> None:
        import onnxruntime as ort

        self._executor = executor
        self.label = label or str(path)
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        if not spin_wait:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3
        requested = choose_providers(providers, ort.get_available_providers())
        if any(p in GPU_PROVIDERS for p in requested):
            preload_gpu_libraries(ort)
        cuda_options = {"cudnn_conv_algo_search": cudnn_conv_algo_search}
        provider_list = [(p, cuda_options) if p == "CUDAExecutionProvider" else p for p in requested]
        self._new_session = lambda: ort.InferenceSession(str(path), sess_options=options, providers=provider_list)
        try:
            self._session = self._new_session()
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt graphs
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load the model: {_first_line(exc)}") from exc
        in_use = self._session.get_providers()
        self.provider = in_use[0] if in_use else "CPUExecutionProvider"
        if requested[0] != self.provider:
            log.warning("%s: wanted %s, running on %s", self.label, requested[0], self.provider)
        self._string_inputs: set[str] = set()
        self.inputs = tuple(self._spec(arg, is_input=True) for arg in self._session.get_inputs())
        self.outputs = tuple(self._spec(arg, is_input=False) for arg in self._session.get_outputs())
        batchable = bool(self.inputs) and all(s.shape and s.shape[0] == -1 for s in (*self.inputs, *self.outputs))
        self.max_batch_size = max_batch_size if batchable else 0
        self._output_names = [s.name for s in self.outputs]
        self._inline_max_ns = inline_max_us * 1e3
        self._single_ns = math.inf  # EWMA of a one-row run's wall time (unbatched models: any run)
        self.batch_buckets: tuple[int, ...] = ()  # batch sizes a batch is padded up to (use_batch_buckets)
        self._by_rows: dict[int, object] = {}  # batch size -> the session that runs only that size
        self._seen_rows: set[int] = set()  # batch sizes warmed up

    def use_batch_buckets(self, sizes: Sequence[int], own_sessions: bool = False, warmup_runs: int = 1) -> None:
        """From now on the batcher pads each batch up to the next of ``sizes`` (the max batch size is
        always one), so the session sees only the shapes it was warmed with. ``own_sessions``: each
        size also gets a session of its own (warmed here, ``warmup_runs`` runs; the largest size keeps
        this engine's first session), so no session ever sees two shapes: ONNX Runtime's CUDA
        convolutions keep one plan, for the last input shape, and plan again whenever it changes.
        Not for string inputs. Blocking: call it off the event loop."""
        if not self.max_batch_size or self._string_inputs:
            return
        limit = self.max_batch_size
        buckets = tuple(sorted({s for s in sizes if 0 < s <= limit} | {limit}))
        if own_sessions:
            by_rows = {}
            try:
                for rows in buckets[:-1]:
                    session = by_rows[rows] = self._new_session()
                    feed = {s.name: dummy_tensor(s, rows) for s in self.inputs}
                    for _ in range(max(1, warmup_runs)):
                        session.run(self._output_names, feed)
            except Exception as exc:  # out of device memory, say: padding alone still avoids new shapes
                log.warning(
                    "%s: cannot make a session per batch size (%s); batches are padded, on one session",
                    self.label,
                    _first_line(exc),
                )
            else:
                self._by_rows = by_rows
        self.batch_buckets = buckets

    @property
    def shape_buckets(self) -> str:
        """What ``use_batch_buckets`` put in place: off, pad or sessions."""
        return "sessions" if self._by_rows else "pad" if self.batch_buckets else "off"

    def probe_shapes(self) -> tuple[float, float, float]:
        """Milliseconds of runs at batch sizes the warm-up skipped: (first, repeated, switched). ``first``:
        a first run at an unseen size (the lesser of two such sizes where there are two); ``repeated``:
        the faster of two runs at the size just run; ``switched``: the faster of two runs each right after
        a run at another size. A large first says a new shape stalls; a large switched, that any change
        of shape does. Taking the lesser of two keeps a one-off hiccup from passing for a stall.
        (0, 0, 0) if the warm-up left no size from 2 up."""
        unseen = [b for b in range(2, self.max_batch_size + 1) if b not in self._seen_rows][:2]
        if not unseen:
            return 0.0, 0.0, 0.0
        a, b = unseen[0], unseen[1] if len(unseen) > 1 else 1
        feeds = {rows: {s.name: dummy_tensor(s, rows) for s in self.inputs} for rows in (a, b)}

        def timed(rows: int) -> float:
            start = time.perf_counter()
            self.run_sync(feeds[rows], self._output_names)
            return (time.perf_counter() - start) * 1e3

        t = [timed(rows) for rows in (a, a, a, b, a, b, a)]
        first = min(t[0], t[3]) if len(unseen) > 1 else t[0]
        return first, min(t[1], t[2]), min(t[4], t[6])

    def padded_rows(self, rows: int) -> int:
        """The rows a batch of ``rows`` runs at: the next bucket, or ``rows`` (no buckets, or too big)."""
        buckets = self.batch_buckets
        if not buckets:
            return rows
        i = bisect.bisect_left(buckets, rows)
        return buckets[i] if i < len(buckets) else rows

    def _spec(self, arg, *, is_input: bool) -> TensorSpec:
        kind = "input" if is_input else "output"
        datatype = _ORT_TYPES.get(arg.type)
        if datatype is None:
            hint = (
                " (for scikit-learn classifiers convert with options={'zipmap': False})"
                if "map" in arg.type or "seq" in arg.type
                else ""
            )
            raise ModelLoadError(
                f"{self.label}: {kind} '{arg.name}' has type {arg.type}, "
                f"which the Open Inference Protocol cannot carry{hint}"
            )
        if datatype == "BYTES" and is_input:
            self._string_inputs.add(arg.name)
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
        return TensorSpec(arg.name, datatype, shape)

    async def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_sync, inputs, output_names)

    def run_inline(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray] | None:
        """Run on the caller's thread (the event loop) if this is a one-row run and one-row runs were
        measured faster than ``inline_max_us``: handing such a run to a pool thread and back costs more
        CPU and latency than the run itself. None otherwise: use ``run``."""
        if self._single_ns > self._inline_max_ns or (self.max_batch_size and _rows(inputs) != 1):
            return None
        return self.run_sync(inputs, output_names)

    def run_sync(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        feed = dict(inputs)
        for name in self._string_inputs:
            if name in feed:
                feed[name] = _to_str_array(feed[name])
        names = list(output_names) or self._output_names
        start = time.perf_counter_ns()
        by_rows = self._by_rows
        session = by_rows.get(_rows(feed), self._session) if by_rows else self._session
        try:
            results = session.run(names, feed)
        except Exception as exc:
            raise EngineError(f"{self.label}: model failed while running: {_first_line(exc)}") from exc
        if not self.max_batch_size or _rows(feed) == 1:
            took = time.perf_counter_ns() - start
            single = self._single_ns
            self._single_ns = took if single == math.inf else single + (took - single) * 0.125
        return dict(zip(names, results, strict=True))

    def warm_up(self, batch_sizes: Sequence[int], runs: int) -> float:
        """Run dummy inferences at each batch size; returns the seconds it took."""
        start = time.perf_counter()
        sizes = [b for b in batch_sizes if b > 0] if self.max_batch_size else [0]
        self._seen_rows.update(sizes)
        for b in sizes:
            feed = {s.name: dummy_tensor(s, b) for s in self.inputs}
            for _ in range(runs):
                self.run_sync(feed, self._output_names)
        return time.perf_counter() - start

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]
        self._by_rows = {}


def dummy_tensor(spec: TensorSpec, batch: int) -> np.ndarray:
    """Zeros of the spec's shape; ``batch`` replaces the leading -1 when > 0, other -1 become 1."""
    from sidecar.types import DATATYPE_TO_DTYPE

    shape = list(spec.shape)
    if batch and shape:
        shape[0] = batch
    shape = [d if d >= 0 else 1 for d in shape]
    if spec.datatype == "BYTES":
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=DATATYPE_TO_DTYPE[spec.datatype])


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    for array in inputs.values():
        return array.shape[0] if array.ndim else 1
    return 1


def _to_str_array(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "U":
        return array
    flat = [v.decode("utf-8", "replace") if isinstance(v, bytes | bytearray) else str(v) for v in array.ravel()]
    return np.array(flat, dtype=object).reshape(array.shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]
