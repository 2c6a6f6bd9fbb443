#!/bin/bash
# A GPU call checking issue 3's GPU target with 6 ingest workers and the batcher's defaults, against the
# same with 4 batches in flight (after bench/gpu/on_device.sh has staged what it needs):
#   bash bench/gpu/on_device.sh run bash bench/gpu/defaults_session.sh "$OUT" NAME
# ResNet-50 and the encoder at c=256 (8 load generator processes x 4 connections): echo and the batched
# sidecar with `server.ingest_workers=6` and nothing else set, twice (each invocation with its own raw
# sweep), then the same with `batching.batches_in_flight` set to IN_FLIGHT (default 4) as the paired
# variant. The eleventh session ran it (gpu-h100-8-defaults-*) while a GPU session's default was briefly
# 4 and this cell set 2: ResNet-50 with 4 in flight served 66 % / 70 % of raw, with 2 in flight 71 %, so
# the default stayed 2. REPO: the exported models (default /tmp/gpurepo); EXTRA: more run_gpu arguments, which win.
set -uo pipefail
out=${1:?usage: defaults_session.sh OUT [NAME]}
name=${2:-gpu-defaults}
repo=${REPO:-/tmp/gpurepo}
common=(--repository "$repo" --models resnet50,encoder --processes 8 --channels 4 --duration 5 --warmup 1.5
  --raw-duration 1.5 --raw-batch-sizes 64,128 --raw-extra-batch-sizes "" --concurrency 256 --echo-concurrency 256
  --out "$out" ${EXTRA:-})
workers=(--sidecar-setting server.ingest_workers=6)
python3 -m bench.gpu.run_gpu "${common[@]}" --servers echo,sidecar-batching "${workers[@]}" --budget-s 110 --name "$name-1"
python3 -m bench.gpu.run_gpu "${common[@]}" --servers sidecar-batching "${workers[@]}" --budget-s 90 --name "$name-2"
python3 -m bench.gpu.run_gpu "${common[@]}" --servers sidecar-batching "${workers[@]}" \
  --sidecar-setting batching.batches_in_flight="${IN_FLIGHT:-4}" --budget-s 90 --name "$name-inflight${IN_FLIGHT:-4}"
