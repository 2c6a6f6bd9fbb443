#!/usr/bin/env bash
# Create the peer servers' virtualenvs under bench/.venvs/ (ignored by git). Idempotent.
#   mlserver: MLServer 1.7.1 needs protobuf < 7 (the sidecar needs >= 7.35), and with parallel_workers >= 1
#             it fails to start under uvloop >= 0.22, so uvloop is pinned to 0.21 there.
#   pytriton: nvidia-pytriton 0.7.0 bundles Triton 2.51 (Linux x86_64/aarch64 wheels only).
# Usage: bench/peers/setup_venvs.sh [mlserver] [pytriton]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-$(.venv/bin/python -c 'import sys; print(sys._base_executable)' 2>/dev/null || command -v python3)}"
which_ones=("$@")
[ ${#which_ones[@]} -eq 0 ] && which_ones=(mlserver pytriton)
for name in "${which_ones[@]}"; do
  venv="bench/.venvs/$name"
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  case "$name" in
    mlserver) "$venv/bin/pip" install -q "mlserver==1.7.1" "uvloop==0.21.0" onnxruntime numpy psutil ;;
    pytriton) "$venv/bin/pip" install -q "nvidia-pytriton==0.7.0" onnxruntime numpy psutil ;;
    *) echo "unknown peer: $name (mlserver, pytriton)" >&2; exit 2 ;;
  esac
  echo "$venv ready"
done
