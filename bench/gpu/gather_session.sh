#!/bin/bash
# A GPU call measuring the batch merge's C gather (sidecar/batching/gather.py) where it matters: ResNet-50
# (602 KB requests) at c=256 on the native front end, the merge with the gather and with numpy's
# concatenate alternating (the gather's extension moved away for the numpy cells, so the sidecar falls back
# to numpy), then with 6 ingest workers (which merge with the gather too). After bench/gpu/on_device.sh has
# staged what it needs:
#   bash bench/gpu/on_device.sh run bash bench/gpu/gather_session.sh "$OUT" NAME
# Results into OUT/results.tgz (rewritten after every invocation), console into OUT/console.txt. REPO and
# EXTRA as in confirm_session.sh.
set -uo pipefail
out=${1:?usage: gather_session.sh OUT [NAME]}
name=${2:-gpu-gather}
repo=${REPO:-/tmp/gpurepo}
results=$(mktemp -d)
so=$(ls sidecar/batching/_gather_native.*.so) || { echo "the gather is not built here" >&2; exit 1; }
aside=$(mktemp -d)
common=(--repository "$repo" --models resnet50 --servers sidecar-batching --processes 8 --channels 4 --duration 5
  --warmup 1.5 --raw-duration 1.5 --raw-batch-sizes 64,128 --raw-extra-batch-sizes "" --concurrency 256
  --budget-s 80 --out "$results" ${EXTRA:-})
run() {
  python3 -m bench.gpu.run_gpu "${common[@]}" "$@" 2>&1 | tee -a "$out/console.txt"
  tar -czf "$out/results.tgz" -C "$results" .
}
with_numpy() {
  mv "$so" "$aside/" && run "$@"
  mv "$aside/$(basename "$so")" "$so"
}
run --sidecar-setting server.front=native --name "$name-native-gather-1"
with_numpy --sidecar-setting server.front=native --name "$name-native-numpy-1"
run --sidecar-setting server.front=native --name "$name-native-gather-2"
with_numpy --sidecar-setting server.front=native --name "$name-native-numpy-2"
run --sidecar-setting server.ingest_workers=6 --name "$name-workers6-gather"
