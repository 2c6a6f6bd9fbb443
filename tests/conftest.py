"""Shared fixtures: generated model repositories and a running sidecar."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.testing.models import identity_model, mlp_model, write_version
from sidecar.testing.server import ServerThread, config_for_tests

DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mlp 1.0.0 / 1.9.0 / 1.10.0 (+ metadata on 1.0.0) and identity_<datatype> 1.0.0 for every datatype."""
    repo = tmp_path_factory.mktemp("repository")
    write_version(
        repo,
        "mlp",
        "1.0.0",
        mlp_model,
        {
            "training_data_version": "td-3",
            "training_date": "2024-01-15",
            "hyperparameters": {"hidden": 256},
            "offline_metrics": {"accuracy": 0.942},
            "description": "test MLP",
        },
    )
    write_version(repo, "mlp", "1.9.0", mlp_model, seed=1)
    write_version(repo, "mlp", "1.10.0", mlp_model, seed=2)
    for dt in DATATYPES:
        write_version(repo, f"identity_{dt.lower()}", "1.0.0", identity_model, datatype=dt)
    return repo


@pytest.fixture(scope="module")
def server(model_repository: Path):
    """A sidecar serving ``model_repository`` in a background thread (module-scoped)."""
    with ServerThread(config_for_tests(str(model_repository))) as srv:
        yield srv
