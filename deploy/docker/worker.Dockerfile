# syntax=docker/dockerfile:1
# A nerfsim GPU worker: CUDA, torch, nerfstudio and tiny-cuda-nn's torch bindings, compiled in
# a devel stage and copied into a runtime image. Build from the repository root:
#     docker build -f deploy/docker/worker.Dockerfile -t nerfsim/worker .
# torch 2.14.1's CUDA wheels are CUDA 13.0 builds; CUDA_VERSION must have the same major
# version (tiny-cuda-nn is compiled with this image's nvcc and loaded beside torch's CUDA).
# BUILD_BASE_IMAGE/BASE_IMAGE may be Ubuntu (Python 3.11 from the deadsnakes PPA) or Debian
# bookworm (its own python3.11); deploy/smoke.sh builds a CPU worker on a plain Debian made with
# debootstrap, with TCNN_REF empty (no nvcc there) and torch from PyPI.
ARG CUDA_VERSION=13.0.1
ARG UBUNTU_VERSION=24.04
ARG BUILD_BASE_IMAGE=nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION}
ARG BASE_IMAGE=nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}

FROM ${BUILD_BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
# Empty: no tiny-cuda-nn (nerfstudio then falls back to its torch-only fields).
ARG TCNN_REF=v2.0
# GPU generations to compile tiny-cuda-nn for (no GPU is needed at build time): Turing, Ampere,
# Ada, Hopper. Add 100;120 for Blackwell.
ARG TCNN_CUDA_ARCHITECTURES="75;80;86;89;90"
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Compilers for tiny-cuda-nn and for the dependencies that PyPI has only as sources (fpsample,
# via nerfstudio); python3.11 from the base's own archive where it has one (Debian bookworm),
# else from deadsnakes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git build-essential ninja-build \
    && if ! apt-cache show python3.11-venv >/dev/null 2>&1; then \
        apt-get install -y --no-install-recommends software-properties-common gpg-agent \
        && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update; fi \
    && apt-get install -y --no-install-recommends python3.11 python3.11-dev python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip setuptools wheel \
    && pip install torch==2.14.1 torchvision==0.29.1 --index-url ${TORCH_INDEX_URL}
ENV TCNN_CUDA_ARCHITECTURES=${TCNN_CUDA_ARCHITECTURES}
RUN if [ -n "${TCNN_REF}" ]; then pip install --no-build-isolation \
    "tinycudann @ git+https://github.com/NVlabs/tiny-cuda-nn@${TCNN_REF}#subdirectory=bindings/torch"; fi
WORKDIR /src
# The dependencies before the sources, so that a change of the code skips their install.
# The dependency layer depends on pyproject.toml alone: a README edit must not reinstall torch.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install -r requirements.txt
COPY README.md ./
COPY renderer renderer
COPY detector detector
COPY optimizer optimizer
COPY service service
COPY client client
RUN pip install --no-deps . ./client && pip show nerfstudio torch
# The splat compositor (renderer/splat_kernel.c) is compiled here: the runtime stage has no C
# compiler, and without the kernel splats render through torch, 10-20x slower at 640x480.
RUN NERFSIM_KERNEL_DIR=/opt/nerfsim/kernels python -c \
    "from renderer.splat_kernel import load_kernel; assert load_kernel() is not None, 'splat kernel did not build'"

FROM ${BASE_IMAGE}
# libLLVM for mitsuba's fast llvm_ad_rgb variant (mesh uploads are rendered into posed image
# sets on the worker; renderer/mesh.py needs LLVM 16 or newer): libllvm18 on Ubuntu 24.04,
# libllvm16 on Debian bookworm.
ARG LLVM_PACKAGE=libllvm18
ENV DEBIAN_FRONTEND=noninteractive
# Python 3.11 (the venv's interpreter), OpenCV's libGL and glib, LLVM, flock for the entrypoint.
RUN apt-get update \
    && if ! apt-cache show python3.11 >/dev/null 2>&1; then \
        apt-get install -y --no-install-recommends software-properties-common gpg-agent \
        && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
        && apt-get purge -y software-properties-common gpg-agent && apt-get autoremove -y; fi \
    && apt-get install -y --no-install-recommends python3.11 libgl1 libglib2.0-0 libgomp1 ${LLVM_PACKAGE} util-linux \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home nerfsim \
    && mkdir -p /data /gpu-locks /opt/nerfsim/yolo \
    && chown nerfsim /data /gpu-locks /opt/nerfsim/yolo
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/nerfsim/kernels /opt/nerfsim/kernels
COPY deploy/docker/worker-entrypoint.sh /usr/local/bin/nerfsim-worker-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NERFSIM_STORAGE_ROOT=/data \
    NERFSIM_THREADS=4 \
    OMP_NUM_THREADS=4 \
    YOLO_OFFLINE=1 \
    YOLO_CONFIG_DIR=/opt/nerfsim/yolo \
    NERFSIM_KERNEL_DIR=/opt/nerfsim/kernels
USER nerfsim
WORKDIR /home/nerfsim
VOLUME /data
ENTRYPOINT ["nerfsim-worker-entrypoint"]
# Takes jobs from the queue at REDIS_URL, one at a time, until stopped (SIGTERM re-queues the
# current job, which another worker resumes from its last checkpoint).
CMD ["nerfsim", "worker"]
