"""Build hook for the native extensions; all project metadata lives in pyproject.toml.

All are optional: without a working C compiler `pip install` still succeeds, prints a warning, and
``sidecar.monitoring.histogram`` uses its numpy twin (it logs which kernel is active, and
``sidecar.monitoring.histogram.KERNEL`` says so), ``sidecar.telemetry.otlp`` its Python span encoder
(``sidecar.telemetry.otlp.ENCODER``), the batcher numpy's concatenate for its merges
(``sidecar.batching.gather``), and the server grpc.aio instead of the native front end (C++,
built only where ``pkg-config grpc++`` finds gRPC's C++ library: Debian's libgrpc++-dev). The
histogram kernel is portable C: no ``-march=native``; it carries AVX2 and AVX-512 variants chosen at
run time (native/histogram.c).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNEL_SOURCES = ["native/histogram.c", "sidecar/monitoring/_histogram_native.c"]
KERNEL_HEADERS = ["native/histogram.h", "native/histogram_body.h"]


def _pkg_config(flag: str) -> list[str]:
    return subprocess.run(["pkg-config", flag, "grpc++"], capture_output=True, text=True, check=True).stdout.split()


def _have_grpcpp() -> bool:
    """gRPC's C++ library (Debian: libgrpc++-dev) and a C++ compiler, for the native front end."""
    try:
        _pkg_config("--modversion")
    except (OSError, subprocess.CalledProcessError):
        return False
    return shutil.which("g++") is not None or shutil.which("c++") is not None


# The native gRPC front end (server.front = "native" | "auto"): only where libgrpc++ is installed;
# without it the sidecar serves on grpc.aio, as it always has.
NATIVE_FRONT = (
    [Extension("sidecar.protocol._native_front", sources=["sidecar/protocol/_native_front.cc"], language="c++")]
    if _have_grpcpp()
    else []
)


class OptionalBuildExt(build_ext):
    """Build the kernel if a compiler is there; otherwise warn and leave the numpy twin in charge."""

    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "unix":
            for ext in self.extensions:
                if ext.language == "c++":
                    ext.extra_compile_args = ["-O2", "-std=c++17", *_pkg_config("--cflags")]
                    ext.extra_link_args = _pkg_config("--libs")
                else:
                    ext.extra_compile_args = ["-O3", "-std=c11", "-fno-strict-aliasing", "-Wno-psabi"]
        super().build_extensions()

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any failure to set up a compiler must not fail the install
            self._warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # a failed compile must not fail the install
            self._warn(exc)

    @staticmethod
    def _warn(exc: BaseException) -> None:
        print(
            f"WARNING: a native extension was not built ({type(exc).__name__}: {exc}); "
            "sidecar.monitoring.histogram uses its numpy twin, sidecar.telemetry its Python span core and encoder",
            file=sys.stderr,
        )


setup(
    ext_modules=[
        Extension(
            "sidecar.monitoring._histogram_native",
            sources=KERNEL_SOURCES,
            depends=KERNEL_HEADERS,
            include_dirs=["native"],
            libraries=["m"] if sys.platform != "win32" else [],
        ),
        Extension("sidecar.telemetry._otlp_native", sources=["sidecar/telemetry/_otlp_native.c"]),
        Extension("sidecar.batching._gather_native", sources=["sidecar/batching/_gather_native.c"]),
        *NATIVE_FRONT,
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
