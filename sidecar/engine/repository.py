"""The model repository: ``<repository>/<model>/<semver>/model.onnx`` (+ ``model.json|toml``).

Each version is loaded into its own engine, pre-warmed, and only then reported READY. A model or
version that fails to load is kept in the index as UNAVAILABLE with its reason; the others serve on.

Concurrency: ``_models`` maps model name -> {version string -> ModelVersion}; both levels are
replaced, never mutated, so request paths read them without a lock. Loads and unloads of one model
are serialised by a per-model asyncio lock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from sidecar.batching.scheduler import BatchSettings, DirectScheduler, InferenceObserver, Scheduler, WorkItem
from sidecar.config import SidecarConfig
from sidecar.engine.base import Engine
from sidecar.engine.layout import MODEL_FILE, UPSTREAM_FILES, find_upstream_file
from sidecar.engine.metadata import VersionMetadata, load_metadata
from sidecar.engine.onnx_session import powers_of_two_to
from sidecar.engine.semver import SemVer
from sidecar.engine.statistics import VersionStatistics
from sidecar.engine.upstream import UpstreamEngine, UpstreamSettings
from sidecar.engine.validation import check_request
from sidecar.errors import (
    InvalidArgument,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    SidecarError,
    VersionNotFound,
)
from sidecar.telemetry.lean_tracing import LeanSpan
from sidecar.telemetry.spans import INVALID_SPAN, current_span
from sidecar.types import InferenceRequest, InferenceResponse

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# Batches an upstream version sends at once unless its metadata says otherwise (``batching.batches_in_flight``
# is for local sessions, which share this machine's cores; an upstream runs what it is sent side by side).
UPSTREAM_BATCHES_IN_FLIGHT = 64


class VersionState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


# (engine, settings, statistics, model name, version string) -> scheduler
SchedulerFactory = Callable[[Engine, BatchSettings, VersionStatistics, str, str], Scheduler]


def direct_scheduler(
    engine: Engine, settings: BatchSettings, stats: VersionStatistics, model: str, version: str
) -> Scheduler:
    return DirectScheduler(engine, stats, model, version)


# engine.shape_buckets = auto: a run that costs this much more than a repeated run at the same size (and
# more than twice it) stalls. ONNX Runtime's CUDA convolutions (cuDNN frontend) keep one plan per node,
# for the last input shape, and plan again (~100-150 ms for ResNet-50 on an H200) whenever it changes:
# behind a batcher whose batches vary in size, nearly every run.
SHAPE_STALL_MS = 5.0


class ModelVersion:
    """One version of one model: its engine, scheduler, statistics and state."""

    def __init__(self, name: str, version: SemVer, path: Path, metadata: VersionMetadata) -> None:
        self.name = name
        self.version = version
        self.version_str = str(version)
        self.path = path
        self.metadata = metadata
        self.label = f"model '{name}' version '{version}'"
        self.state = VersionState.LOADING
        self.reason = ""
        self.engine: Engine | None = None
        self.scheduler: Scheduler | None = None
        self.settings: BatchSettings | None = None
        self.stats = VersionStatistics()
        self.warmup_s = 0.0
        self.loaded_at = time.time()
        self.observer: InferenceObserver | None = None  # set by the monitoring stage before READY
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def ready(self) -> bool:
        # An upstream engine is only ready while its upstream says so (engine.upstream's probe).
        return self.state is VersionState.READY and getattr(self.engine, "healthy", True)

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        scheduler = self.scheduler
        if self.state is not VersionState.READY or self.engine is None or scheduler is None:
            raise ModelNotReady(
                f"{self.label} is not ready ({self.state.value}{': ' + self.reason if self.reason else ''})"
            )
        arrival = time.monotonic_ns()
        self._inflight += 1
        if self._inflight == 1:
            self._idle.clear()
        ok = False
        rows = 1
        started = None
        try:
            # A request forwarded as it came (an unbatched upstream) goes out first (``begin`` sends it:
            # engine.upstream_call); it is checked while the upstream works, and abandoned if the check
            # fails (see DirectScheduler.begin).
            begin = scheduler.begin
            if begin is not None and request.encoded is not None:
                started = begin(request)
                if started is not None and not started.sent:
                    await asyncio.sleep(0)  # the call's own task sends it
            engine = self.engine
            observer = self.observer
            rows, outputs = check_request(
                self.label, request.inputs, request.requested_outputs, engine, observer.rejected if observer else None
            )
            span = current_span()
            if span is not INVALID_SPAN:
                if type(span) is LeanSpan:  # the request's span names the model and version that served it
                    if not span.end_ns:
                        attributes = span.attributes
                        attributes["model.name"] = self.name
                        attributes["model.version"] = self.version_str
                elif not span.is_recording():  # (a caller's unsampled context)
                    span = INVALID_SPAN
            result = await scheduler.submit(WorkItem(request, rows, outputs, arrival, span, started))
            ok = True
        except BaseException:
            if started is not None:
                started.cancel()  # nothing once it has answered
            raise
        finally:
            self.stats.record_request(ok, time.monotonic_ns() - arrival, rows)
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()
        return InferenceResponse(self.name, self.version_str, request.id, result)

    async def wait_idle(self, timeout_s: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    async def close(self, timeout_s: float | None = None) -> None:
        """Stop taking requests, let the ones in flight finish, release the engine."""
        if self.state is VersionState.READY:
            self.state = VersionState.UNLOADING
        if self.scheduler is not None:
            await self.scheduler.close()
        if not await self.wait_idle(timeout_s):
            log.warning("%s: %d requests still in flight at unload", self.label, self._inflight)
        if self.engine is not None:
            self.engine.close()
        self.state = VersionState.UNAVAILABLE
        self.reason = self.reason or "unloaded"


@dataclass(frozen=True, slots=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


class Repository:
    def __init__(
        self,
        config: SidecarConfig,
        executor: Executor,
        scheduler_factory: SchedulerFactory = direct_scheduler,
    ) -> None:
        self._config = config
        self._root = Path(config.repository.path).resolve() if config.repository.path else None
        self._executor = executor
        self._scheduler_factory = scheduler_factory
        self._models: dict[str, dict[str, ModelVersion]] = {}
        # model -> (its versions dict when computed, the newest ready version). Valid while that dict is
        # still the published one (publishing replaces it) and the version is still ready.
        self._defaults: dict[str, tuple[dict[str, ModelVersion], ModelVersion]] = {}
        self._failures: dict[tuple[str, str], str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._listeners: list[Callable[[ModelVersion], None]] = []
        self._preparers: list[Callable[[ModelVersion, Engine], None]] = []

    # -- listeners (health, telemetry) --------------------------------------------------------
    def on_change(self, callback: Callable[[ModelVersion], None]) -> None:
        """Called (on the event loop) whenever a version changes state."""
        self._listeners.append(callback)

    def before_ready(self, callback: Callable[[ModelVersion, Engine], None]) -> None:
        """Called (on the event loop) with a loaded, warmed-up version and its engine just before it reports
        READY; a SidecarError raised there fails the load with its message (a malformed reference profile)."""
        self._preparers.append(callback)

    def _changed(self, mv: ModelVersion) -> None:
        for cb in self._listeners:
            try:
                cb(mv)
            except Exception:
                log.exception("state listener failed for %s", mv.label)

    # -- discovery ------------------------------------------------------------------------------
    @property
    def root(self) -> Path | None:
        return self._root

    def model_names_on_disk(self) -> list[str]:
        if self._root is None or not self._root.is_dir():
            return []
        return sorted(p.name for p in self._root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _model_dir(self, name: str) -> Path:
        if self._root is None:
            raise ModelNotFound(name)
        if not _NAME.match(name) or name in (".", ".."):
            raise InvalidArgument(f"model name {name!r} is not a valid repository folder name")
        path = (self._root / name).resolve()
        if not path.is_relative_to(self._root):
            raise InvalidArgument(f"model name {name!r} escapes the model repository")
        if not path.is_dir():
            raise ModelNotFound(name)
        return path

    # -- loading --------------------------------------------------------------------------------
    async def load_all(self) -> None:
        names = self.model_names_on_disk()
        await asyncio.gather(*(self.load_model(n, raise_errors=False) for n in names))

    async def load_model(self, name: str, version: str | None = None, *, raise_errors: bool = True) -> list[str]:
        """Load the versions of ``name`` found on disk that are not loaded yet (or just ``version``).

        Returns the versions now ready. With ``raise_errors`` a failure of a requested version raises
        ModelLoadError (other versions of the model still load).
        """
        model_dir = self._model_dir(name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            found = self._scan_versions(name, model_dir)
            if version is not None:
                if version not in found and (name, version) not in self._failures:
                    raise VersionNotFound(name, version)
                found = {version: found[version]} if version in found else {}
            current = self._models.get(name, {})
            todo = {v: p for v, p in found.items() if v not in current or not current[v].ready}
            results = await asyncio.gather(*(self._load_version(name, v, p) for v, p in todo.items()))
            failures = [r for r in results if isinstance(r, str)]
            if raise_errors and failures and (version is not None or len(failures) == len(todo)):
                raise ModelLoadError("; ".join(failures))
            if raise_errors and version is not None and not found:
                raise ModelLoadError(self._failures.get((name, version), f"{name} {version}: failed to load"))
            return sorted(v for v, mv in self._models.get(name, {}).items() if mv.ready)

    def _scan_versions(self, name: str, model_dir: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for key in [k for k in self._failures if k[0] == name]:
            del self._failures[key]
        for entry in sorted(model_dir.iterdir()):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            try:
                semver = SemVer.parse(entry.name)
            except ValueError as exc:
                self._fail(name, entry.name, str(exc))
                continue
            resolved = entry.resolve()
            if not resolved.is_relative_to(self._root):  # type: ignore[arg-type]
                self._fail(name, entry.name, f"{entry} resolves to {resolved}, outside the model repository")
                continue
            onnx = entry / MODEL_FILE
            if onnx.exists() and not onnx.resolve().is_relative_to(self._root):  # type: ignore[arg-type]
                self._fail(name, entry.name, f"{onnx} resolves outside the model repository")
                continue
            if not onnx.is_file() and find_upstream_file(entry) is None:
                self._fail(name, entry.name, f"{entry} has no {MODEL_FILE} (nor {' or '.join(UPSTREAM_FILES)})")
                continue
            found[str(semver)] = entry
        if not found and not any(k[0] == name for k in self._failures):
            self._fail(name, "", f"{model_dir} holds no version folders (<model>/<semver>/{MODEL_FILE})")
        return found

    async def _shape_buckets(self, engine: Engine, warmup_runs: int) -> str:
        """``engine.shape_buckets`` for this engine: off, pad or sessions; auto decides from the engine's
        ``probe_shapes`` (see ``SHAPE_STALL_MS``), unless the version's warm-up is switched off."""
        mode = self._config.engine.shape_buckets
        if mode == "off" or engine.max_batch_size < 2 or not hasattr(engine, "use_batch_buckets"):
            return "off"
        if mode == "auto" and not warmup_runs:  # no warm-up wanted: no probing runs either
            return "off"
        if mode != "auto":
            return mode
        probe = getattr(engine, "probe_shapes", None)
        if probe is None:
            return "off"
        first_ms, again_ms, switched_ms = await asyncio.get_running_loop().run_in_executor(self._executor, probe)
        stall_ms = max(SHAPE_STALL_MS, 2 * again_ms)
        chosen = "sessions" if switched_ms - again_ms > stall_ms else "pad" if first_ms - again_ms > stall_ms else "off"
        log.info(
            "%s: runs at a batch size the warm-up skipped took %.1f ms (first), %.1f ms (next), %.1f ms (after "
            "a run at another size): %s",
            getattr(engine, "label", "engine"),
            first_ms,
            again_ms,
            switched_ms,
            {
                "sessions": "a change of shape stalls, so batches are padded to the warm-up sizes, each with a "
                "session of its own",
                "pad": "a new shape stalls, so batches are padded to the warm-up sizes",
                "off": "batches run at their own sizes",
            }[chosen],
        )
        return chosen

    def _fail(self, name: str, version: str, reason: str) -> None:
        self._failures[(name, version)] = reason
        log.error("model '%s' version '%s' failed to load: %s", name, version or "-", reason)

    async def _load_version(self, name: str, version: str, path: Path) -> ModelVersion | str:
        loop = asyncio.get_running_loop()
        try:
            metadata = load_metadata(path)
        except ModelLoadError as exc:
            self._fail(name, version, exc.message)
            return exc.message
        mv = ModelVersion(name, SemVer.parse(version), path, metadata)
        self._publish(mv)
        try:
            settings = BatchSettings.resolve(self._config.batching, metadata.batching)
            engine = await loop.run_in_executor(self._executor, self._build_engine, mv, settings)
            start = getattr(engine, "start", None)  # engines with async set-up (the upstream proxy)
            if start is not None:
                await start()
            if isinstance(engine, UpstreamEngine) and "batches_in_flight" not in metadata.batching:
                settings = dataclasses.replace(
                    settings, batches_in_flight=max(settings.batches_in_flight, UPSTREAM_BATCHES_IN_FLIGHT)
                )
            configured = metadata.warmup_batch_sizes or self._config.engine.warmup_batch_sizes
            sizes = configured or tuple(sorted({1, engine.max_batch_size or 1}))
            runs = metadata.warmup_runs if metadata.warmup_runs is not None else self._config.engine.warmup_runs
            warm_up = getattr(engine, "warm_up", None)
            if warm_up is not None and runs:
                mv.warmup_s = await loop.run_in_executor(self._executor, warm_up, sizes, runs)
            shapes = await self._shape_buckets(engine, runs)
            if shapes != "off":  # powers of two: a padded batch runs at most twice its rows
                buckets = configured or tuple(powers_of_two_to(engine.max_batch_size))
                more = [b for b in buckets if b not in sizes]
                began = time.perf_counter()
                if more and warm_up is not None:
                    await loop.run_in_executor(self._executor, warm_up, more, max(1, runs))
                use = engine.use_batch_buckets
                await loop.run_in_executor(self._executor, use, buckets, shapes == "sessions", max(1, runs))
                mv.warmup_s += time.perf_counter() - began
                sizes = tuple(sorted({*sizes, *buckets}))
                shapes = engine.shape_buckets  # what it could do: string inputs, memory for the sessions
            log.info(
                "%s loaded from %s on %s; warm-up %s x%d took %.1f ms%s",
                mv.label,
                path,
                engine.provider,
                list(sizes) if engine.max_batch_size else "[unbatched]",
                runs,
                mv.warmup_s * 1e3,
                {
                    "pad": "; batches padded to those sizes",
                    "sessions": "; batches padded to those sizes, a session each",
                }.get(shapes, ""),
            )
            for prepare in self._preparers:
                prepare(mv, engine)
        except SidecarError as exc:
            mv.state, mv.reason = VersionState.UNAVAILABLE, exc.message
            self._unpublish(mv)
            self._fail(name, version, exc.message)
            return exc.message
        except Exception as exc:  # a model that crashes its runtime must not take the server down
            reason = f"{mv.label}: {type(exc).__name__}: {exc}"
            mv.state, mv.reason = VersionState.UNAVAILABLE, reason
            self._unpublish(mv)
            self._fail(name, version, reason)
            return reason
        mv.engine = engine
        mv.settings = settings
        mv.scheduler = self._scheduler_factory(engine, settings, mv.stats, mv.name, mv.version_str)
        mv.scheduler.observer = mv.observer  # the scheduler tells the monitor of every run
        previous = self._models.get(name, {}).get(version)
        mv.state = VersionState.READY
        self._publish(mv)
        self._changed(mv)
        if previous is not None and previous is not mv:
            await previous.close(self._config.server.drain_timeout_s)
        return mv

    def _build_engine(self, mv: ModelVersion, settings: BatchSettings) -> Engine:
        from sidecar.engine.onnx_session import OnnxEngine

        upstream = find_upstream_file(mv.path)
        if upstream is not None and not (mv.path / MODEL_FILE).is_file():
            return UpstreamEngine(
                UpstreamSettings.load(upstream, mv.name),
                label=mv.label,
                max_batch_size=settings.max_batch_size if settings.enabled else 0,
                max_message_bytes=self._config.server.max_message_bytes,
            )
        providers = mv.metadata.providers or self._config.engine.providers
        return OnnxEngine(
            mv.path / MODEL_FILE,
            providers=providers,
            executor=self._executor,
            max_batch_size=settings.max_batch_size,
            intra_op_threads=self._config.engine.intra_op_threads,
            spin_wait=self._config.engine.spin_wait,
            inline_max_us=self._config.engine.inline_max_us,
            cudnn_conv_algo_search=self._config.engine.cudnn_conv_algo_search,
            label=mv.label,
        )

    def _publish(self, mv: ModelVersion) -> None:
        versions = dict(self._models.get(mv.name, {}))
        old = versions.get(mv.version_str)
        if old is not None and old.ready and not mv.ready:
            return  # keep serving the loaded copy while a reload warms up
        versions[mv.version_str] = mv
        self._models = {**self._models, mv.name: versions}

    def _unpublish(self, mv: ModelVersion) -> None:
        versions = dict(self._models.get(mv.name, {}))
        if versions.get(mv.version_str) is mv:
            del versions[mv.version_str]
        models = dict(self._models)
        if versions:
            models[mv.name] = versions
        else:
            models.pop(mv.name, None)
        self._models = models

    # -- unloading ------------------------------------------------------------------------------
    async def unload_model(self, name: str, version: str | None = None) -> list[str]:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            versions = self._models.get(name)
            if not versions:
                raise ModelNotFound(name)
            if version is not None and version not in versions:
                raise VersionNotFound(name, version)
            targets = [versions[version]] if version is not None else list(versions.values())
            for mv in targets:
                mv.state = VersionState.UNLOADING
                self._changed(mv)
                self._unpublish(mv)
            await asyncio.gather(*(mv.close(self._config.server.drain_timeout_s) for mv in targets))
            for mv in targets:
                self._changed(mv)
                log.info("%s unloaded", mv.label)
            return [mv.version_str for mv in targets]

    async def close(self) -> None:
        all_versions = [mv for versions in self._models.values() for mv in versions.values()]
        self._models = {}
        await asyncio.gather(*(mv.close(self._config.server.drain_timeout_s) for mv in all_versions))

    # -- lookup (request path: no awaits, no locks) ---------------------------------------------
    def get(self, name: str, version: str = "") -> ModelVersion:
        versions = self._models.get(name)
        if not versions:
            if any(k[0] == name for k in self._failures):
                reasons = "; ".join(r for k, r in self._failures.items() if k[0] == name)
                raise ModelNotReady(f"model '{name}' is not available: {reasons}")
            raise ModelNotFound(name)
        if version:
            mv = versions.get(version)
            if mv is None:
                try:
                    mv = versions.get(str(SemVer.parse(version)))
                except ValueError:
                    mv = None
            if mv is None:
                if (name, version) in self._failures:
                    raise ModelNotReady(f"{name} {version}: {self._failures[(name, version)]}")
                raise VersionNotFound(name, version)
            return mv
        cached = self._defaults.get(name)
        if cached is not None and cached[0] is versions and cached[1].ready:
            return cached[1]
        ready = [mv for mv in versions.values() if mv.ready]
        if not ready:
            newest = max(versions.values(), key=lambda m: m.version)
            raise ModelNotReady(
                f"model '{name}' has no ready version (newest {newest.version_str} is {newest.state.value})"
            )
        default = max(ready, key=lambda m: m.version)
        self._defaults[name] = (versions, default)
        return default

    def versions(self, name: str) -> list[ModelVersion]:
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(name)
        return sorted(versions.values(), key=lambda m: m.version)

    def all_versions(self) -> list[ModelVersion]:
        return [mv for name in sorted(self._models) for mv in self.versions(name)]

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        entries = [IndexEntry(mv.name, mv.version_str, mv.state.value, mv.reason) for mv in self.all_versions()]
        if not ready_only:
            loaded = {(e.name, e.version) for e in entries}
            entries += [
                IndexEntry(n, v, VersionState.UNAVAILABLE.value, r)
                for (n, v), r in self._failures.items()
                if (n, v) not in loaded
            ]
            seen = {e.name for e in entries}
            entries += [
                IndexEntry(n, "", "UNAVAILABLE", "not loaded") for n in self.model_names_on_disk() if n not in seen
            ]
        else:
            entries = [e for e in entries if e.state == VersionState.READY.value]
        return sorted(entries, key=lambda e: (e.name, e.version))
