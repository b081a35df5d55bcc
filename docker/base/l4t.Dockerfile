# Base images of the `l4t` target (`make base-image TARGET=l4t`, on a connected machine; aarch64 or
# under binfmt emulation): an Ubuntu 24.04 userland (Python 3.12; JetPack 6's own Ubuntu 22.04 has 3.10,
# below the appliance's 3.11) with CUDA 12.6 for Jetson from NVIDIA's Jetson apt repository of L4T r36.4,
# as the Jetson containers build their JetPack 6 images. The L4T driver (libcuda, nvgpu) is the host's:
# `runtime: nvidia` (compose.jetson.yaml) mounts it into the containers.
#   runtime: CUDA runtime libraries, cuDNN, Python with venv, libgomp, jemalloc
#   devel:   plus nvcc and the CUDA headers, a C++ toolchain and cmake (llama-cpp-python, bitsandbytes)
ARG UBUNTU_IMAGE=ubuntu:24.04
FROM ${UBUNTU_IMAGE} AS runtime
ARG L4T_RELEASE=r36.4
ARG SOC=t234
ARG CUDA=12-6
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive
# The distribution's and NVIDIA's packages follow their release; versions are pinned by L4T_RELEASE and CUDA.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gnupg \
 && curl -fsSL https://repo.download.nvidia.com/jetson/jetson-ota-public.asc \
    | gpg --dearmor -o /usr/share/keyrings/nvidia-jetson.gpg \
 && printf 'deb [signed-by=/usr/share/keyrings/nvidia-jetson.gpg] https://repo.download.nvidia.com/jetson/%s %s main\n' \
      common "${L4T_RELEASE}" "${SOC}" "${L4T_RELEASE}" > /etc/apt/sources.list.d/nvidia-l4t.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      "cuda-cudart-${CUDA}" "libcublas-${CUDA}" "libcusparse-${CUDA}" "libcurand-${CUDA}" "libcufft-${CUDA}" \
      "cuda-nvrtc-${CUDA}" libcudnn9-cuda-12 python3 python3-venv libgomp1 libjemalloc2 \
 && apt-get purge -y curl gnupg && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/local/cuda/bin:${PATH} \
    LD_LIBRARY_PATH=/usr/local/cuda/lib64 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CUDA_ARCHITECTURES=87

FROM runtime AS devel
ARG CUDA=12-6
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends "cuda-nvcc-${CUDA}" "cuda-cudart-dev-${CUDA}" "libcublas-dev-${CUDA}" \
      build-essential cmake git \
 && rm -rf /var/lib/apt/lists/*
