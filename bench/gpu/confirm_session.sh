#!/bin/bash
# A GPU call confirming issue 3's GPU target with the configuration the tenth session found (after
# bench/gpu/on_device.sh has staged what it needs):
#   bash bench/gpu/on_device.sh run bash bench/gpu/confirm_session.sh "$OUT" NAME
# ResNet-50 and the encoder, echo and the batched sidecar at c=256 (8 load generator processes x 4
# connections) with 6 ingest workers and 4 batches in flight, twice (two invocations, each with its own
# raw sweep), then the sidecar without workers once as the control. REPO: the exported models (default
# /tmp/gpurepo); EXTRA: more run_gpu arguments, which win (a pipeline check on a CPU, with tiny models from
# `bench.gpu.export_models --tiny`: EXTRA="--providers CPUExecutionProvider --concurrency 16 ...").
set -uo pipefail
out=${1:?usage: confirm_session.sh OUT [NAME]}
name=${2:-gpu-confirm}
repo=${REPO:-/tmp/gpurepo}
common=(--repository "$repo" --models resnet50,encoder --processes 8 --channels 4 --duration 5 --warmup 1.5
  --raw-duration 1.5 --raw-batch-sizes 64,128 --raw-extra-batch-sizes "" --concurrency 256 --echo-concurrency 256
  --out "$out" ${EXTRA:-})
# TUNED / CONTROL: the settings of the tuned cells and of the control (space-separated KEY=VALUE);
# CONTROL_NAME: the control's name suffix (bench/gpu/defaults_session.sh sets all three).
tuned=()
for setting in ${TUNED-server.ingest_workers=6 batching.batches_in_flight=4}; do tuned+=(--sidecar-setting "$setting"); done
control=()
for setting in ${CONTROL-}; do control+=(--sidecar-setting "$setting"); done
python3 -m bench.gpu.run_gpu "${common[@]}" --servers echo,sidecar-batching "${tuned[@]}" --budget-s 110 --name "$name-1"
python3 -m bench.gpu.run_gpu "${common[@]}" --servers sidecar-batching "${tuned[@]}" --budget-s 90 --name "$name-2"
python3 -m bench.gpu.run_gpu "${common[@]}" --servers sidecar-batching "${control[@]}" --budget-s 90 \
  --name "$name-${CONTROL_NAME:-control}"
