#!/usr/bin/env bash
# Build the prototype native front end (bench/native_front/front.cc) as a Python extension module beside
# it, for the Python that runs this script ($PYTHON, default .venv/bin/python).
# Needs g++, pkg-config and gRPC's C++ library: apt-get install g++ pkg-config libgrpc++-dev
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-$here/../../.venv/bin/python}"
if ! pkg-config --exists grpc++; then
  echo "gRPC C++ library not found (pkg-config grpc++): apt-get install libgrpc++-dev" >&2
  exit 1
fi
suffix="$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
include="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
mkdir -p "$here/build"
# shellcheck disable=SC2046
g++ -O2 -std=c++17 -shared -fPIC -I"$include" "$here/front.cc" -o "$here/build/_native_front$suffix.tmp" \
  $(pkg-config --cflags --libs grpc++)
mv "$here/build/_native_front$suffix.tmp" "$here/build/_native_front$suffix"
