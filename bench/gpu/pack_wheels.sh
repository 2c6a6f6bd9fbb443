#!/bin/bash
# Prepares, on this machine, what the GPU machine (Python 3.12, no package index; grpcio 1.84 and no
# OpenTelemetry there) needs to run the sidecar and bench/gpu: the sidecar's missing dependencies as
# cp312 wheels, py-spy, and the native extensions built for CPython 3.12, all under DEST
# (default .whl, which .git/info/exclude should ignore). On the GPU machine, with DEST carried:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site DEST/*.whl
#   cp DEST/native/_histogram_native.*.so sidecar/monitoring/ && cp DEST/native/_otlp_native.*.so sidecar/telemetry/
#   export PYTHONPATH=/tmp/site
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
  "$dest/native/"
du -sh "$dest"
