# syntax=docker/dockerfile:1
# A nerfsim GPU worker: CUDA, torch, nerfstudio and tiny-cuda-nn's torch bindings, compiled in
# a devel stage and copied into a runtime image. Build from the repository root:
#     docker build -f deploy/docker/worker.Dockerfile -t nerfsim/worker .
# torch 2.14.1's CUDA wheels are CUDA 13.0 builds; CUDA_VERSION must have the same major
# version (tiny-cuda-nn is compiled with this image's nvcc and loaded beside torch's CUDA).
ARG CUDA_VERSION=13.0.1
ARG UBUNTU_VERSION=24.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ARG TCNN_REF=v2.0
# GPU generations to compile tiny-cuda-nn for (no GPU is needed at build time): Turing, Ampere,
# Ada, Hopper. Add 100;120 for Blackwell.
ARG TCNN_CUDA_ARCHITECTURES="75;80;86;89;90"
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent git build-essential ninja-build \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-dev python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip setuptools wheel \
    && pip install torch==2.14.1 torchvision==0.29.1 --index-url ${TORCH_INDEX_URL}
ENV TCNN_CUDA_ARCHITECTURES=${TCNN_CUDA_ARCHITECTURES}
RUN pip install --no-build-isolation \
    "tinycudann @ git+https://github.com/NVlabs/tiny-cuda-nn@${TCNN_REF}#subdirectory=bindings/torch"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY renderer renderer
COPY detector detector
COPY optimizer optimizer
COPY service service
RUN pip install . && pip show tinycudann nerfstudio torch

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}
ENV DEBIAN_FRONTEND=noninteractive
# Python 3.11 (the venv's interpreter), OpenCV's libGL and glib, and LLVM 18 for mitsuba's fast
# llvm_ad_rgb variant (mesh uploads are rendered into posed image sets on the worker).
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 libgl1 libglib2.0-0 libgomp1 libllvm18 util-linux \
    && apt-get purge -y software-properties-common gpg-agent && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home nerfsim \
    && mkdir -p /data /gpu-locks /opt/nerfsim/yolo \
    && chown nerfsim /data /gpu-locks /opt/nerfsim/yolo
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/worker-entrypoint.sh /usr/local/bin/nerfsim-worker-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NERFSIM_STORAGE_ROOT=/data \
    NERFSIM_THREADS=4 \
    OMP_NUM_THREADS=4 \
    YOLO_OFFLINE=1 \
    YOLO_CONFIG_DIR=/opt/nerfsim/yolo
USER nerfsim
WORKDIR /home/nerfsim
VOLUME /data
ENTRYPOINT ["nerfsim-worker-entrypoint"]
# Takes jobs from the queue at REDIS_URL, one at a time, until stopped (SIGTERM re-queues the
# current job, which another worker resumes from its last checkpoint).
CMD ["nerfsim", "worker"]
