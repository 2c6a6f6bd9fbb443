#!/bin/bash
# A GPU call measuring issue 3's GPU target on the sidecar's native front end (server.front, the
# fifteenth session) beside the configuration that met it on grpc.aio (6 ingest workers), after
# bench/gpu/on_device.sh has staged what it needs (pack_wheels.sh carries the native front end, the C++
# echo and gRPC C++'s libraries):
#   bash bench/gpu/on_device.sh run bash bench/gpu/native_front_session.sh "$OUT" NAME
# ResNet-50 and the encoder at c=256 (8 load generator processes x 4 connections), each invocation with
# its own raw sweep: (1) the grpc.aio echo, the C++ echo and the batched sidecar on the native front
# (and a py-spy profile of its c=256 cell);
# then the batched sidecar alone, alternating: 6 ingest workers (grpc.aio), native, 6 workers, and native
# with 4 batches in flight. The results go into OUT/results.tgz (rewritten after every invocation, so a
# call cut short keeps what ran) and the console into OUT/console.txt. REPO and EXTRA as in
# confirm_session.sh (a pipeline check on a CPU: EXTRA="--providers CPUExecutionProvider ...");
# MODELS (default resnet50,encoder); ECHOS (the first invocation's echo servers, default
# echo,echo-native; empty: none).
set -uo pipefail
out=${1:?usage: native_front_session.sh OUT [NAME]}
name=${2:-gpu-native}
repo=${REPO:-/tmp/gpurepo}
results=$(mktemp -d)
common=(--repository "$repo" --models "${MODELS:-resnet50,encoder}" --processes 8 --channels 4 --duration 5 --warmup 1.5
  --raw-duration 1.5 --raw-batch-sizes 64,128 --raw-extra-batch-sizes "" --concurrency 256 --echo-concurrency 256
  --out "$results" ${EXTRA:-})
native=(--sidecar-setting server.front=native)
workers=(--sidecar-setting server.ingest_workers=6)
run() {
  python3 -m bench.gpu.run_gpu "${common[@]}" "$@" 2>&1 | tee -a "$out/console.txt"
  tar -czf "$out/results.tgz" -C "$results" .
}
echos=${ECHOS-echo,echo-native}
# (with a py-spy profile of the native front's top cell where py-spy is there: pack_wheels.sh carries it)
profile=()
[ -x /tmp/site/bin/py-spy ] && profile=(--profile --py-spy /tmp/site/bin/py-spy)
run --servers "${echos:+$echos,}sidecar-batching" "${native[@]}" "${profile[@]}" --budget-s 140 --name "$name-1"
run --servers sidecar-batching "${workers[@]}" --budget-s 80 --name "$name-workers6-1"
run --servers sidecar-batching "${native[@]}" --budget-s 80 --name "$name-2"
run --servers sidecar-batching "${workers[@]}" --budget-s 80 --name "$name-workers6-2"
run --servers sidecar-batching "${native[@]}" --sidecar-setting batching.batches_in_flight=4 --budget-s 80 \
  --name "$name-inflight4"
