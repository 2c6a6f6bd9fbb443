"""What a version folder holds, read without loading gRPC or ONNX Runtime.

``<repository>/<model>/<semver>/`` holds ``model.onnx`` (a local ONNX Runtime session) or, without
one, ``upstream.json|toml`` (an upstream Open Inference Protocol server the sidecar forwards to).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sidecar.engine.semver import SemVer

MODEL_FILE = "model.onnx"
UPSTREAM_FILES = ("upstream.json", "upstream.toml")


def find_upstream_file(version_dir: Path) -> Path | None:
    for name in UPSTREAM_FILES:
        path = version_dir / name
        if path.is_file():
            return path
    return None


def is_upstream_version(version_dir: Path) -> bool:
    """True when the version is served by an upstream server (a model.onnx beside wins)."""
    return not (version_dir / MODEL_FILE).is_file() and find_upstream_file(version_dir) is not None


def version_dirs(repository: Path) -> Iterator[Path]:
    """Every ``<model>/<semver>`` folder of ``repository`` (hidden and non-semver names skipped)."""
    if not repository.is_dir():
        return
    for model_dir in sorted(repository.iterdir()):
        if not model_dir.is_dir() or model_dir.name.startswith("."):
            continue
        for entry in sorted(model_dir.iterdir()):
            if entry.is_dir() and not entry.name.startswith(".") and _is_semver(entry.name):
                yield entry


def _is_semver(name: str) -> bool:
    try:
        SemVer.parse(name)
    except ValueError:
        return False
    return True
