#!/bin/sh
# What the image needs from the distribution, installed only where the base lacks it:
#   python3 (3.11 or newer) with venv, libgomp1 (llama.cpp's OpenMP), libjemalloc2 (the trainer's
#   allocator); for `build`, also a C/C++ toolchain and cmake (llama-cpp-python from source: cuda, l4t).
# A base made by `make base-image` has all of it: then nothing is fetched and the build runs with
# --network=none. A stock base (debian:bookworm-slim, nvidia/cuda, ubuntu:24.04) fetches it with apt.
set -eu
stage="${1:-runtime}"
missing=""
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$missing python3-venv"
ldconfig -p | grep -q 'libgomp\.so\.1' || missing="$missing libgomp1"
ldconfig -p | grep -q 'libjemalloc\.so\.2' || missing="$missing libjemalloc2"
if [ "$stage" = build ] && ! ls /wheelhouse/llama_cpp_python-*.whl >/dev/null 2>&1; then
  command -v c++ >/dev/null 2>&1 || missing="$missing build-essential"
  command -v cmake >/dev/null 2>&1 || missing="$missing cmake"
fi
command -v useradd >/dev/null 2>&1 || missing="$missing passwd"
if [ -n "$missing" ]; then
  echo "installing from the distribution:$missing"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
  rm -rf /var/lib/apt/lists/*
fi
python3 -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed, the base has " + sys.version'
