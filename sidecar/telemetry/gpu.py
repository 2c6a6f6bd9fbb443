"""Per-GPU utilization, memory, power and temperature through NVML (``nvidia-ml-py``'s ``pynvml``).

A daemon thread samples every ``interval_s`` (one utilization+memory read is ~14 us on an H100) and
replaces an immutable snapshot; the observable instruments read that snapshot, so neither the request
path nor a slow NVML call delays a collection. No NVML library, no driver or no GPU: ``start``
returns None after one log line and the ``hw.*`` instruments are never created.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from sidecar.telemetry import catalog
from sidecar.telemetry.model_metrics import create_observable

log = logging.getLogger(__name__)
_TEMPERATURE_GPU = 0  # pynvml.NVML_TEMPERATURE_GPU


@dataclass(frozen=True, slots=True)
class GpuReading:
    attributes: dict[str, str]
    utilization: float  # 0-1
    memory_utilization: float  # 0-1
    memory_used: int  # bytes
    memory_total: int  # bytes
    power_w: float | None
    temperature_c: float | None


class GpuSampler:
    def __init__(self, nvml: Any, handles: list[tuple[Any, dict[str, str]]], interval_s: float) -> None:
        self._nvml = nvml
        self._handles = handles
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._failed_once = False
        self.readings: tuple[GpuReading, ...] = ()  # replaced, never mutated
        self.samples = 0
        self._thread = threading.Thread(target=self._run, name="sidecar-gpu-sampler", daemon=True)

    @classmethod
    def start(cls, meter: Meter, interval_s: float, nvml: ModuleType | Any | None = None) -> GpuSampler | None:
        if nvml is None:
            try:
                import pynvml as nvml  # nvidia-ml-py
            except ImportError:
                log.info("GPU metrics off: the nvidia-ml-py package (pynvml module) is not installed")
                return None
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            log.info("GPU metrics off: NVML is not available (%s)", exc or type(exc).__name__)
            return None
        try:
            handles = []
            for i in range(nvml.nvmlDeviceGetCount()):
                h = nvml.nvmlDeviceGetHandleByIndex(i)
                attrs = {"hw.id": _text(nvml.nvmlDeviceGetUUID(h)), "hw.name": _text(nvml.nvmlDeviceGetName(h))}
                attrs["hw.vendor"] = "NVIDIA"
                handles.append((h, attrs))
        except Exception as exc:
            log.info("GPU metrics off: cannot enumerate GPUs through NVML (%s)", exc)
            _shutdown(nvml)
            return None
        if not handles:
            log.info("GPU metrics off: NVML reports no GPU")
            _shutdown(nvml)
            return None
        sampler = cls(nvml, handles, interval_s)
        sampler.sample()
        sampler._register(meter)
        sampler._thread.start()
        log.info("GPU metrics on: %s, sampled every %g s", ", ".join(a["hw.name"] for _, a in handles), interval_s)
        return sampler

    def _register(self, meter: Meter) -> None:
        create_observable(meter, catalog.GPU_UTILIZATION, self._gauge("utilization"))
        create_observable(meter, catalog.GPU_MEMORY_UTILIZATION, self._gauge("memory_utilization"))
        create_observable(meter, catalog.GPU_MEMORY_USAGE, self._gauge("memory_used"))
        create_observable(meter, catalog.GPU_MEMORY_LIMIT, self._gauge("memory_total"))
        create_observable(meter, catalog.GPU_POWER, self._gauge("power_w", hw_type=True))
        create_observable(meter, catalog.GPU_TEMPERATURE, self._gauge("temperature_c", hw_type=True))

    def _gauge(self, field: str, hw_type: bool = False):
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            out = []
            for r in self.readings:
                value = getattr(r, field)
                if value is not None:
                    out.append(Observation(value, {**r.attributes, "hw.type": "gpu"} if hw_type else r.attributes))
            return out

        return observe

    def sample(self) -> None:
        nvml = self._nvml
        readings = []
        for h, attrs in self._handles:
            try:
                util = nvml.nvmlDeviceGetUtilizationRates(h)
                mem = nvml.nvmlDeviceGetMemoryInfo(h)
            except Exception as exc:
                if not self._failed_once:
                    self._failed_once = True
                    log.warning("GPU %s: NVML read failed (%s); keeping the last values", attrs["hw.name"], exc)
                return
            readings.append(
                GpuReading(
                    attributes=attrs,
                    utilization=util.gpu / 100.0,
                    memory_utilization=util.memory / 100.0,
                    memory_used=int(mem.used),
                    memory_total=int(mem.total),
                    power_w=_optional(lambda h=h: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0),
                    temperature_c=_optional(lambda h=h: float(nvml.nvmlDeviceGetTemperature(h, _TEMPERATURE_GPU))),
                )
            )
        self.readings = tuple(readings)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        _shutdown(self._nvml)


def _optional(read) -> float | None:
    try:
        return float(read())
    except Exception:  # NVML_ERROR_NOT_SUPPORTED on some boards
        return None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:
        log.debug("nvmlShutdown failed", exc_info=True)
