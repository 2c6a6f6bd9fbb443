#!/bin/bash
# One GPU session's runs, in one device call (after bench/gpu/on_device.sh has staged what they need):
#   bash bench/gpu/on_device.sh run bash bench/gpu/session.sh "$OUT" NAME
# 1. the full benchmark (raw ONNX Runtime, the echo ingest ceiling, the sidecar batched and not, a
#    py-spy profile of the batched sidecar at c=256) for ResNet-50 and the encoder;
# 2. the control: ResNet-50's batched sidecar again at c=256 with engine.shape_buckets=off, so the
#    effect of the shape buckets is measured on the same machine in the same call.
set -uo pipefail
out=${1:?usage: session.sh OUT [NAME]}
name=${2:-gpu}
common=(--repository /tmp/gpurepo --processes 8 --duration 5 --warmup 1.5 --raw-duration 1.5
  --raw-extra-batch-sizes "" --out "$out")
python3 -m bench.gpu.run_gpu "${common[@]}" --models resnet50,encoder --raw-batch-sizes 1,8,16,32,64,128 \
  --echo-concurrency 256 --unbatched-concurrency 256 --concurrency 1,16,64,256 \
  --profile --py-spy /tmp/site/bin/py-spy --budget-s 300 --name "$name"
python3 -m bench.gpu.run_gpu "${common[@]}" --models resnet50 --raw-batch-sizes 128 --servers sidecar-batching \
  --concurrency 256 --sidecar-setting engine.shape_buckets=off --budget-s 60 --name "$name-buckets-off"
