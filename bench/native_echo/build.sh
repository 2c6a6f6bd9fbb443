#!/usr/bin/env bash
# Build the C++ echo server (bench/native_echo/echo.cc) into bench/native_echo/build/echo.
# Needs g++, pkg-config and gRPC's C++ library: apt-get install g++ pkg-config libgrpc++-dev
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if ! pkg-config --exists grpc++; then
  echo "gRPC C++ library not found (pkg-config grpc++): apt-get install libgrpc++-dev" >&2
  exit 1
fi
mkdir -p "$here/build"
# shellcheck disable=SC2046
g++ -O2 -std=c++17 "$here/echo.cc" -o "$here/build/echo.tmp" $(pkg-config --cflags --libs grpc++)
mv "$here/build/echo.tmp" "$here/build/echo"
