#!/bin/bash
# A GPU call measuring ResNet-50 with merges written into kept buffers (sidecar/batching/buffers.py),
# after bench/gpu/on_device.sh has staged what it needs:
#   bash bench/gpu/on_device.sh run bash bench/gpu/resnet_pool_session.sh "$OUT" NAME
# The batched sidecar at c=256 (32 client connections) with 6 ingest workers, the same with 4 batches
# in flight, and without ingest workers; each cell with the server's own timings.
set -uo pipefail
out=${1:?usage: resnet_pool_session.sh OUT [NAME]}
name=${2:-gpu-resnet-pool}
common=(--repository /tmp/gpurepo --models resnet50 --processes 8 --channels 4 --duration 5 --warmup 1.5
  --raw-duration 1.5 --raw-batch-sizes 64,128 --raw-extra-batch-sizes "" --concurrency 256 --servers sidecar-batching
  --out "$out")
python3 -m bench.gpu.run_gpu "${common[@]}" --sidecar-setting server.ingest_workers=6 --budget-s 60 --name "$name-w6"
python3 -m bench.gpu.run_gpu "${common[@]}" --sidecar-setting server.ingest_workers=6 \
  --sidecar-setting batching.batches_in_flight=4 --budget-s 60 --name "$name-w6-inflight4"
python3 -m bench.gpu.run_gpu "${common[@]}" --budget-s 60 --name "$name-w0"
