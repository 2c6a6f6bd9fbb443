#!/bin/bash
# On a lent GPU machine (device tool), in the repository's copy there: gathers what the calls carried
# and runs a command with onnxruntime-gpu, the sidecar's wheels and the exported models in place.
# onnxruntime-gpu comes in four parts (../shared/gpu/pack-onnxruntime-gpu.sh .gpuparts, plus
# unpack-onnxruntime-gpu.sh copied beside them), the rest from bench/gpu/pack_wheels.sh .whl.
# Four calls back to back (the machine stays warm ~30 s between them):
#   carry .gpuparts/part03 .gpuparts/SHA256 .gpuparts/unpack-onnxruntime-gpu.sh .whl:  bash bench/gpu/on_device.sh stage
#   carry .gpuparts/part00, then .gpuparts/part01:                                      bash bench/gpu/on_device.sh stage
#   carry .gpuparts/part02:   bash bench/gpu/on_device.sh run python3 -m bench.gpu.run_gpu ... --out $OUT
# The first stage call also exports the models (torch is there) to /tmp/gpurepo.
set -euo pipefail
mkdir -p /tmp/parts
if compgen -G '.gpuparts/*' >/dev/null; then cp .gpuparts/* /tmp/parts/; fi
if compgen -G '.whl/*.whl' >/dev/null; then  # carried in this call (an uncarried .whl is left empty)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  if [ -f .whl/native.tar.xz ]; then tar -xJf .whl/native.tar.xz -C .whl; fi
  cp .whl/native/*.so /tmp/parts/
  if [ -d .whl/native/lib ]; then  # gRPC C++ (the native front end, the C++ echo): see pack_wheels.sh
    mkdir -p /tmp/parts/lib && cp .whl/native/lib/* /tmp/parts/lib/ && cp .whl/native/echo /tmp/parts/
    for lib in .whl/native/lib-fallback/*; do
      ldconfig -p | grep -q "$(basename "$lib") " || cp "$lib" /tmp/parts/lib/
    done
    LD_LIBRARY_PATH=/tmp/parts/lib ldd /tmp/parts/_native_front.*.so /tmp/parts/echo | grep 'not found' || true
    (cd /tmp/parts && LD_LIBRARY_PATH=/tmp/parts/lib python3 -c 'import _native_front; print("native front loads")') ||
      echo "the native front end does not load here"
  fi
  PYTHONPATH=/tmp/site python3 -m bench.gpu.export_models --out /tmp/gpurepo
fi
if [ "${1:-stage}" = stage ]; then
  ls /tmp/parts
  exit 0
fi
shift
bash /tmp/parts/unpack-onnxruntime-gpu.sh /tmp/parts /tmp/site
cp /tmp/parts/_histogram_native.*.so sidecar/monitoring/
cp /tmp/parts/_otlp_native.*.so sidecar/telemetry/ 2>/dev/null || true  # (older .whl packs lack it)
cp /tmp/parts/_gather_native.*.so sidecar/batching/ 2>/dev/null || true
if [ -d /tmp/parts/lib ]; then
  cp /tmp/parts/_native_front.*.so sidecar/protocol/
  mkdir -p bench/native_echo/build && cp /tmp/parts/echo bench/native_echo/build/echo
  touch bench/native_echo/build/echo  # newer than echo.cc: used as built
  export LD_LIBRARY_PATH=/tmp/parts/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
[ -f /tmp/gpurepo/encoder/1.0.0/model.onnx ] || python3 -m bench.gpu.export_models --out /tmp/gpurepo
"$@"
