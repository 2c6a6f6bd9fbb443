#!/bin/bash
# A GPU call on where the ingest time goes (after bench/gpu/on_device.sh has staged what it needs):
#   bash bench/gpu/on_device.sh run bash bench/gpu/ingest_session.sh "$OUT" NAME
# 1. the ingest ceiling with 1, 2, 4 and 8 bare grpc.aio processes on one port (ResNet-50 requests);
# 2. ResNet-50 and the encoder, echo and batched sidecar at c=256, the sidecar profiled with
#    py-spy --native (C frames: gRPC, uvloop, memcpy), the raw samples kept;
# 3. ResNet-50's batched sidecar at c=256 with max_queue_delay_ms 5 instead of 2.
set -uo pipefail
out=${1:?usage: ingest_session.sh OUT [NAME]}
name=${2:-gpu-ingest}
python3 -m bench.gpu.ingest_scaling --servers 1,2,4,8 --concurrency 256 --processes 8 --channels 4 \
  --duration 5 --warmup 1.5 --name "$name-scaling" --out "$out"
common=(--repository /tmp/gpurepo --processes 8 --duration 5 --warmup 1.5 --raw-duration 1.5
  --raw-extra-batch-sizes "" --out "$out")
python3 -m bench.gpu.run_gpu "${common[@]}" --models resnet50,encoder --servers echo,sidecar-batching \
  --raw-batch-sizes 64,128 --echo-concurrency 256 --concurrency 256 --profile --profile-native \
  --profile-top 25 --py-spy /tmp/site/bin/py-spy --profile-raw-dir "$out" --budget-s 150 --name "$name-native"
python3 -m bench.gpu.run_gpu "${common[@]}" --models resnet50 --servers sidecar-batching --raw-batch-sizes 128 \
  --concurrency 256 --max-queue-delay-ms 5 --budget-s 60 --name "$name-delay5"
