#!/bin/bash
# A GPU call looking for ResNet-50's limit once ingest is spread over worker processes (after
# bench/gpu/on_device.sh has staged what it needs):
#   bash bench/gpu/on_device.sh run bash bench/gpu/resnet_workers_session.sh "$OUT" NAME
# The batched sidecar at c=256 with 6 ingest workers (32 client connections), each cell with the server's
# own timings (time in the server, queue, merge and engine time per batch, batch sizes): the defaults
# under py-spy (the serving process), then 4 batches in flight, a 6 ms queue delay, the cost model off.
set -uo pipefail
out=${1:?usage: resnet_workers_session.sh OUT [NAME]}
name=${2:-gpu-resnet-workers}
common=(--repository /tmp/gpurepo --models resnet50 --processes 8 --channels 4 --duration 5 --warmup 1.5
  --raw-duration 1.5 --raw-batch-sizes 64,128 --raw-extra-batch-sizes "" --concurrency 256 --servers sidecar-batching
  --sidecar-setting server.ingest_workers=6 --out "$out")
python3 -m bench.gpu.run_gpu "${common[@]}" --profile --py-spy /tmp/site/bin/py-spy --profile-raw-dir "$out" \
  --budget-s 80 --name "$name-default"
gzip -f "$out"/*.txt 2>/dev/null
python3 -m bench.gpu.run_gpu "${common[@]}" --sidecar-setting batching.batches_in_flight=4 --budget-s 60 --name "$name-inflight4"
python3 -m bench.gpu.run_gpu "${common[@]}" --max-queue-delay-ms 6 --budget-s 60 --name "$name-delay6"
python3 -m bench.gpu.run_gpu "${common[@]}" --sidecar-setting batching.adaptive=false --budget-s 60 --name "$name-fixed"
# At most 8 files come back from a device call: everything in one archive.
tar -czf /tmp/bundle.tgz -C "$out" . && rm -f "$out"/* && mv /tmp/bundle.tgz "$out/$name.tgz"
