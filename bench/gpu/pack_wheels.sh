#!/bin/bash
# Prepares, on this machine, what the GPU machine (Python 3.12, no package index; grpcio 1.84 and no
# OpenTelemetry or gRPC C++ library there) needs to run the sidecar and bench/gpu: the sidecar's missing
# dependencies as cp312 wheels, py-spy, the native extensions built for CPython 3.12 (the native front end
# among them), the C++ echo server (bench/native_echo), and the shared libraries of gRPC C++ (Debian's)
# that those two link, all under DEST (default .whl, which .git/info/exclude should ignore). On the GPU
# machine, with DEST carried (bench/gpu/on_device.sh does this):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site DEST/*.whl
#   cp DEST/native/_histogram_native.*.so sidecar/monitoring/ && cp DEST/native/_otlp_native.*.so sidecar/telemetry/
#   cp DEST/native/_native_front.*.so sidecar/protocol/ && cp DEST/native/echo bench/native_echo/build/
#   cp DEST/native/_gather_native.*.so sidecar/batching/
#   export PYTHONPATH=/tmp/site LD_LIBRARY_PATH=DEST/native/lib   (plus DEST/native/lib-fallback where
#   that machine lacks one of its libraries: OpenSSL, zlib)
# onnxruntime-gpu travels separately (../shared/gpu/pack-onnxruntime-gpu.sh: it is too big for one call).
# Usage: bench/gpu/pack_wheels.sh [DEST] [PYTHON3.12]
set -euo pipefail
dest=${1:-.whl}
py312=${2:-/root/.pyenv/versions/3.12.1/bin/python}
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$dest/native"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" \
  grpcio==1.85.1 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 \
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2 \
  opentelemetry-proto==1.45.2 opentelemetry-exporter-otlp-proto-common==1.45.2 \
  opentelemetry-exporter-otlp-proto-grpc==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2 \
  opentelemetry-exporter-prometheus==0.66b2 opentelemetry-exporter-otlp-common==0.66b2 \
  opentelemetry-exporter-http-transport==0.66b2 googleapis-common-protos==1.76.0 py-spy==0.4.3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py312" -m venv "$work/venv"
"$work/venv/bin/pip" install -q setuptools numpy
git -C "$root" archive HEAD | tar -x -C "$work"
(cd "$work" && "$work/venv/bin/python" setup.py -q build_ext --inplace)
cp "$work"/sidecar/monitoring/_histogram_native.cpython-312-*.so "$work"/sidecar/telemetry/_otlp_native.cpython-312-*.so \
  "$work"/sidecar/protocol/_native_front.cpython-312-*.so "$work"/sidecar/batching/_gather_native.cpython-312-*.so \
  "$dest/native/"
bash "$work/bench/native_echo/build.sh"
cp "$work/bench/native_echo/build/echo" "$dest/native/"
# The libraries the native front end and the echo link, but for the C and C++ runtimes every Linux has;
# OpenSSL and zlib apart (the GPU machine's own are used where it has them: a second copy of a library
# Python itself loads could clash).
mkdir -p "$dest/native/lib" "$dest/native/lib-fallback"
ldd "$dest"/native/_native_front.*.so "$dest/native/echo" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
  while read -r soname path; do
    case "$soname" in
      libc.so.*|libm.so.*|libstdc++.so.*|libgcc_s.so.*|libpthread.so.*|libdl.so.*|librt.so.*) ;;
      libssl.so.*|libcrypto.so.*|libz.so.*) cp -L "$path" "$dest/native/lib-fallback/$soname" ;;
      *) cp -L "$path" "$dest/native/lib/$soname" ;;
    esac
  done
# xz: the call that carries DEST carries the last onnxruntime-gpu part too, under 64 MiB together
tar -C "$dest" -cJf "$dest/native.tar.xz" native && rm -rf "$dest/native"
du -sh "$dest"
