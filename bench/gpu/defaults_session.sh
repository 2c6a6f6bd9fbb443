#!/bin/bash
# A GPU call checking issue 3's GPU target with 6 ingest workers and the batcher's defaults, against the
# same with 4 batches in flight (after bench/gpu/on_device.sh has staged what it needs):
#   bash bench/gpu/on_device.sh run bash bench/gpu/defaults_session.sh "$OUT" NAME
# confirm_session.sh's cells (echo and the batched sidecar twice, at c=256 from 8 processes x 4
# connections, each invocation with its own raw sweep) with `server.ingest_workers=6` and nothing else
# set, then the same with `batching.batches_in_flight` set to IN_FLIGHT (default 4) as the paired
# variant. The eleventh session ran it (gpu-h100-8-defaults-*) while a GPU session's default was briefly
# 4 and that cell set 2: ResNet-50 with 4 in flight served 66 % / 70 % of raw, with 2 in flight 71 %, so
# the default stayed 2 (then gpu-h100-9-inflight-*). REPO and EXTRA as in confirm_session.sh.
set -uo pipefail
out=${1:?usage: defaults_session.sh OUT [NAME]}
TUNED="server.ingest_workers=6" CONTROL="server.ingest_workers=6 batching.batches_in_flight=${IN_FLIGHT:-4}" \
  CONTROL_NAME="inflight${IN_FLIGHT:-4}" exec bash "$(dirname "$0")/confirm_session.sh" "$out" "${2:-gpu-defaults}"
