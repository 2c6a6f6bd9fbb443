"""Per-version metadata: ``model.json`` or ``model.toml`` beside ``model.onnx`` (both optional).

Example ``model.json``::

    {
      "description": "Breast cancer classifier",
      "training_data_version": "2024-01-10.3",
      "training_date": "2024-01-15",
      "hyperparameters": {"n_estimators": 100, "max_depth": 4},
      "offline_metrics": {"accuracy": 0.942},
      "warmup": {"batch_sizes": [1, 32], "runs": 2},
      "batching": {"enabled": true, "max_batch_size": 64, "max_queue_delay_ms": 1.0,
                   "preferred_batch_sizes": [16, 32], "max_queue_size": 2048, "batches_in_flight": 2}
    }

Unknown keys, wrong types and unparsable dates are load errors with a message that names the key,
so a typo never silently falls back to a default.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.errors import ModelLoadError

METADATA_FILES = ("model.json", "model.toml")

_BATCHING_KEYS = {
    "enabled": bool,
    "max_batch_size": int,
    "max_queue_delay_ms": float,
    "preferred_batch_sizes": list,
    "max_queue_size": int,
    "batches_in_flight": int,
    "adaptive": bool,
    "kept_merge_mb": float,
}


@dataclass(frozen=True, slots=True)
class VersionMetadata:
    description: str = ""
    training_data_version: str = ""
    training_date: dt.date | None = None
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    offline_metrics: Mapping[str, float] = field(default_factory=dict)
    warmup_batch_sizes: tuple[int, ...] = ()
    warmup_runs: int | None = None
    batching: Mapping[str, Any] = field(default_factory=dict)
    providers: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def as_parameters(self) -> dict[str, str]:
        """Flat string form for ModelMetadata/ModelConfig parameters."""
        out: dict[str, str] = {}
        if self.description:
            out["description"] = self.description
        if self.training_data_version:
            out["training_data_version"] = self.training_data_version
        if self.training_date:
            out["training_date"] = self.training_date.isoformat()
        if self.hyperparameters:
            out["hyperparameters"] = json.dumps(dict(self.hyperparameters), sort_keys=True)
        if self.offline_metrics:
            out["offline_metrics"] = json.dumps(dict(self.offline_metrics), sort_keys=True)
        return out


def load_metadata(version_dir: Path) -> VersionMetadata:
    """Read the metadata file of a version folder; a folder with none gets defaults."""
    found = [version_dir / name for name in METADATA_FILES if (version_dir / name).is_file()]
    if not found:
        return VersionMetadata()
    if len(found) > 1:
        raise ModelLoadError(f"{version_dir}: both model.json and model.toml exist; keep one")
    return parse_metadata(read_table(found[0], "metadata"), str(found[0]))


def read_table(path: Path, what: str) -> dict[str, Any]:
    """A JSON (``.json``) or TOML file holding one object/table; ModelLoadError naming ``what`` otherwise."""
    try:
        text = path.read_text()
        if path.suffix == ".json":
            raw = json.loads(text)
        else:
            import tomllib

            raw = tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot parse {what}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: {what} must be an object/table at the top level")
    return raw


def parse_metadata(raw: Mapping[str, Any], where: str) -> VersionMetadata:
    known = {
        "description",
        "training_data_version",
        "training_date",
        "hyperparameters",
        "offline_metrics",
        "warmup",
        "batching",
        "providers",
        "extra",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ModelLoadError(f"{where}: unknown metadata key(s): {', '.join(unknown)}")

    def typed(key: str, tp: type | tuple[type, ...], default: Any) -> Any:
        value = raw.get(key, default)
        if not isinstance(value, tp):
            raise ModelLoadError(f"{where}: '{key}' must be {_tname(tp)}, not {type(value).__name__}")
        return value

    date = None
    if "training_date" in raw:
        text = typed("training_date", (str, dt.date), "")
        try:
            date = text if isinstance(text, dt.date) else dt.date.fromisoformat(text[:10])
        except ValueError:
            raise ModelLoadError(f"{where}: 'training_date' must be an ISO date (YYYY-MM-DD), not {text!r}") from None
    metrics = typed("offline_metrics", dict, {})
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ModelLoadError(f"{where}: offline_metrics.{k} must be a number, not {v!r}")
    warmup = typed("warmup", dict, {})
    bad = sorted(set(warmup) - {"batch_sizes", "runs"})
    if bad:
        raise ModelLoadError(f"{where}: unknown warmup key(s): {', '.join(bad)}")
    sizes = warmup.get("batch_sizes", [])
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s > 0 for s in sizes):
        raise ModelLoadError(f"{where}: warmup.batch_sizes must be a list of positive integers")
    runs = warmup.get("runs")
    if runs is not None and (not isinstance(runs, int) or runs < 0):
        raise ModelLoadError(f"{where}: warmup.runs must be a non-negative integer")
    batching = typed("batching", dict, {})
    for k, v in batching.items():
        tp = _BATCHING_KEYS.get(k)
        if tp is None:
            raise ModelLoadError(f"{where}: unknown batching key '{k}'")
        ok = isinstance(v, tp) and not (tp is not bool and isinstance(v, bool))
        if tp is float:
            ok = isinstance(v, int | float) and not isinstance(v, bool)
        if not ok:
            raise ModelLoadError(f"{where}: batching.{k} must be {_tname(tp)}, not {v!r}")
    providers = typed("providers", list, [])
    return VersionMetadata(
        description=typed("description", str, ""),
        training_data_version=str(typed("training_data_version", (str, int, float), "")),
        training_date=date,
        hyperparameters=typed("hyperparameters", dict, {}),
        offline_metrics={k: float(v) for k, v in metrics.items()},
        warmup_batch_sizes=tuple(sizes),
        warmup_runs=runs,
        batching=dict(batching),
        providers=tuple(str(p) for p in providers),
        extra=typed("extra", dict, {}),
    )


def _tname(tp: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        dict: "a table",
        list: "a list",
        dt.date: "a date",
    }
    if isinstance(tp, tuple):
        return " or ".join(names.get(t, t.__name__) for t in tp)
    return names.get(tp, tp.__name__)
