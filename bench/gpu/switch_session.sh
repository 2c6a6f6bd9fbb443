#!/bin/bash
# A GPU call measuring the GIL switch interval (server.switch_interval_ms) where threads wait behind the
# event loop: ResNet-50 (602 KB requests) at c=256 on the native front end, Python's own 5 ms against
# 0.5 ms alternating, and 0.5 ms with 4 batches in flight, each invocation with its own raw sweep. After
# bench/gpu/on_device.sh has staged what it needs:
#   bash bench/gpu/on_device.sh run bash bench/gpu/switch_session.sh "$OUT" NAME
# Results into OUT/results.tgz (rewritten after every invocation), console into OUT/console.txt. REPO and
# EXTRA as in confirm_session.sh; INTERVAL_MS (default 0.5).
set -uo pipefail
out=${1:?usage: switch_session.sh OUT [NAME]}
name=${2:-gpu-switch}
repo=${REPO:-/tmp/gpurepo}
ms=${INTERVAL_MS:-0.5}
results=$(mktemp -d)
common=(--repository "$repo" --models resnet50 --servers sidecar-batching --processes 8 --channels 4 --duration 5
  --warmup 1.5 --raw-duration 1.5 --raw-batch-sizes 64,128 --raw-extra-batch-sizes "" --concurrency 256
  --budget-s 60 --sidecar-setting server.front=native --out "$results" ${EXTRA:-})
run() {
  python3 -m bench.gpu.run_gpu "${common[@]}" "$@" 2>&1 | tee -a "$out/console.txt"
  tar -czf "$out/results.tgz" -C "$results" .
}
fast=(--sidecar-setting "server.switch_interval_ms=$ms")
run --name "$name-5ms-1"
run "${fast[@]}" --name "$name-fast-1"
run "${fast[@]}" --sidecar-setting batching.batches_in_flight=4 --name "$name-fast-inflight4"
run --name "$name-5ms-2"
run "${fast[@]}" --name "$name-fast-2"
