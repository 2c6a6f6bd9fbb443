#!/bin/bash
# A GPU call measuring server.ingest_workers (after bench/gpu/on_device.sh has staged what it needs):
#   bash bench/gpu/on_device.sh run bash bench/gpu/ingest_workers_session.sh "$OUT" NAME
# ResNet-50 and the encoder, echo and the batched sidecar at c=256 with 32 client connections (8 load
# generator processes x 4: the kernel spreads connections, not calls, over the processes on the port),
# the sidecar without ingest workers and with 2, 4 (a 256 MiB shared-memory ring each) and 6, in one call.
set -uo pipefail
out=${1:?usage: ingest_workers_session.sh OUT [NAME]}
name=${2:-gpu-workers}
df -h /dev/shm; nproc
common=(--repository /tmp/gpurepo --models resnet50,encoder --processes 8 --channels 4 --duration 5
  --warmup 1.5 --raw-duration 1.5 --raw-batch-sizes 64,128 --raw-extra-batch-sizes "" --concurrency 256
  --echo-concurrency 256 --out "$out")
python3 -m bench.gpu.run_gpu "${common[@]}" --servers echo,sidecar-batching --budget-s 90 --name "$name-0"
for n in 2 4 6; do
  extra=()
  [ "$n" = 4 ] && extra=(--sidecar-setting server.ingest_shared_memory_bytes=268435456)
  python3 -m bench.gpu.run_gpu "${common[@]}" --servers sidecar-batching --sidecar-setting "server.ingest_workers=$n" \
    "${extra[@]}" --budget-s 70 --name "$name-$n"
done
