"""Which histogram implementation is chosen at import, and that the choice is always logged.

Each case imports the module in a fresh interpreter, since the choice is made once, at import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, logging, sys
logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(message)s", stream=sys.stdout)
if {hide_native}:
    sys.modules["sidecar.monitoring._histogram_native"] = None  # as if the extension were not built
try:
    from sidecar.monitoring import histogram
except Exception as exc:
    print("RESULT " + json.dumps({{"error": type(exc).__name__, "message": str(exc)}}))
else:
    print("RESULT " + json.dumps({{"kernel": histogram.KERNEL, "impls": sorted(histogram.implementations()),
                                    "attributes": histogram.kernel_attributes()}}))
"""


def probe(env_value: str | None, hide_native: bool = False) -> tuple[dict, list[str]]:
    env = dict(os.environ)
    env.pop("SIDECAR_HISTOGRAM_KERNEL", None)
    if env_value is not None:
        env["SIDECAR_HISTOGRAM_KERNEL"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(hide_native=hide_native)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    result = json.loads(next(line for line in out if line.startswith("RESULT "))[len("RESULT ") :])
    logs = [line for line in out if "histogram kernel" in line]
    return result, logs


@pytest.mark.parametrize("env_value", [None, "auto", "native"])
def test_native_is_chosen_and_logged(env_value: str | None) -> None:
    result, logs = probe(env_value)
    assert result["kernel"] == "native"
    assert result["impls"] == ["native", "numpy"]
    assert result["attributes"]["kernel"] == "native"
    assert len(logs) == 1
    assert logs[0].startswith("INFO histogram kernel: native (C, vectorized)")
    assert result["attributes"]["variant"] in logs[0]


def test_environment_forces_the_twin() -> None:
    result, logs = probe("numpy")
    assert result["kernel"] == "numpy"
    assert result["attributes"] == {"kernel": "numpy", "variant": "numpy"}
    assert len(logs) == 1
    assert logs[0].startswith("WARNING histogram kernel: numpy twin")
    assert "SIDECAR_HISTOGRAM_KERNEL=numpy" in logs[0]


def test_missing_extension_falls_back_loudly() -> None:
    result, logs = probe(None, hide_native=True)
    assert result["kernel"] == "numpy"
    assert result["impls"] == ["numpy"]
    assert len(logs) == 1
    assert logs[0].startswith("WARNING histogram kernel: numpy twin")
    assert "not built" in logs[0]


def test_requiring_native_without_extension_fails() -> None:
    result, _ = probe("native", hide_native=True)
    assert result["error"] == "RuntimeError"
    assert "not built" in result["message"]


def test_unknown_setting_is_rejected() -> None:
    result, _ = probe("fast")
    assert result["error"] == "ValueError"
    assert "auto, native or numpy" in result["message"]
