"""The routing state file: the policies changed at run time and their audit trail, as JSON.

Written atomically: the new content goes to a temporary file in the same folder, is flushed and
fsynced, then ``os.replace``d over the old file (and the folder fsynced), so a crash leaves either the
old state or the new one, never a torn file. A state file that cannot be parsed is a start error
(``ConfigError``) rather than a silent reset of every policy.

Format (version 1)::

    {"version": 1,
     "models": {"mlp": {"policy": {"stable": "1.0.0", "weights": {"1.0.0": 90.0, "1.1.0": 10.0},
                                   "shadows": {"1.2.0": 100.0}},        # or null: cleared
                        "revision": 3, "updated_by": "alice@host", "updated_at": "2026-...Z",
                        "reason": "canary 10 %"}},
     "history": [{"at": "...", "model": "mlp", "actor": "...", "action": "set",
                  "before": "...", "after": "...", "revision": 3, "reason": "..."}]}
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar.errors import ConfigError, InvalidArgument
from sidecar.routing.policy import TrafficPolicy

if TYPE_CHECKING:
    from sidecar.routing.control import Change, PolicyRecord

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class SavedRecord:
    policy: TrafficPolicy | None
    revision: int
    updated_by: str
    updated_at: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SavedState:
    records: Mapping[str, SavedRecord] = field(default_factory=dict)
    history: tuple[Change, ...] = ()


class StateFile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> SavedState:
        from sidecar.routing.control import Change

        if not self.path.exists():
            return SavedState()
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"routing state file {self.path} cannot be read ({exc}); fix or remove it "
                "(removing it returns every model to the config file's policy)"
            ) from None
        if not isinstance(raw, dict) or raw.get("version") != FORMAT_VERSION:
            raise ConfigError(f"routing state file {self.path} is not a version {FORMAT_VERSION} routing state")
        records: dict[str, SavedRecord] = {}
        try:
            for model, entry in (raw.get("models") or {}).items():
                policy = entry.get("policy")
                records[model] = SavedRecord(
                    TrafficPolicy.from_mapping(model, policy, f"{self.path}: models.{model}.policy")
                    if policy is not None
                    else None,
                    int(entry.get("revision", 0)),
                    str(entry.get("updated_by", "")),
                    str(entry.get("updated_at", "")),
                    str(entry.get("reason", "")),
                )
            history = tuple(Change(**item) for item in raw.get("history") or ())
        except (InvalidArgument, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"routing state file {self.path} is invalid: {getattr(exc, 'message', exc)}") from None
        return SavedState(records, history)

    def save(self, records: Mapping[str, PolicyRecord], history: Sequence[Change]) -> None:
        """Replace the file atomically; raises OSError when it cannot be written."""
        data: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "models": {
                model: {
                    "policy": r.policy.as_mapping() if r.policy is not None else None,
                    "revision": r.revision,
                    "updated_by": r.updated_by,
                    "updated_at": r.updated_at,
                    "reason": r.reason,
                }
                for model, r in sorted(records.items())
                if r.source != "config"  # config policies are the config's: not a run-time decision
            },
            "history": [asdict(c) for c in history],
        }
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        try:
            dir_fd = os.open(folder, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
