"""The C kernel on its own, without Python: native/test_histogram.c checks every instruction-set variant
the CPU runs and both kernel paths against a reference written from the bin definitions.

Built twice: with AddressSanitizer + UndefinedBehaviorSanitizer (any report is fatal), and optimized
the way a pip build compiles it. Needs gcc (present on CI machines); ``make -C native sanitize`` runs
the same thing by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NATIVE = Path(__file__).resolve().parents[2] / "native"
SOURCES = [str(NATIVE / "histogram.c"), str(NATIVE / "test_histogram.c")]
WARNINGS = ["-std=c11", "-Wall", "-Wextra", "-Wno-psabi", "-Werror"]
BUILDS = {
    "sanitized": ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
    "optimized": ["-O3"],
}


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_c_driver(build: str, tmp_path: Path) -> None:
    gcc = shutil.which("gcc")
    assert gcc is not None, "gcc is needed to build the kernel's C test driver"
    exe = tmp_path / f"test_histogram_{build}"
    subprocess.run([gcc, *WARNINGS, *BUILDS[build], "-o", str(exe), *SOURCES, "-lm"], check=True, timeout=120)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1", UBSAN_OPTIONS="halt_on_error=1")
    result = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failures" in result.stdout
    assert "runtime error" not in result.stderr  # UBSan
