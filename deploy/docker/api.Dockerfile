# syntax=docker/dockerfile:1
# The nerfsim API: slim Python with CPU-only torch. The API never trains or renders, but it
# loads uploaded assets and checks job settings with the optimizer's own code, so it needs the
# package and torch. Build from the repository root:
#     docker build -f deploy/docker/api.Dockerfile -t nerfsim/api .
# BASE_IMAGE may be any Debian bookworm image: one without Python gets Debian's python3.11
# (deploy/smoke.sh builds on a plain Debian made with debootstrap, and torch from PyPI).
ARG PYTHON_VERSION=3.11
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG PYTHON_VERSION
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# A C++ compiler for the dependencies that PyPI has only as sources (fpsample, via nerfstudio),
# and Debian's python3.11 with its headers where the base has no Python.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && (command -v python${PYTHON_VERSION} >/dev/null \
        || apt-get install -y --no-install-recommends python${PYTHON_VERSION}-dev python${PYTHON_VERSION}-venv) \
    && rm -rf /var/lib/apt/lists/*
RUN python${PYTHON_VERSION} -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# CPU wheels first (a few hundred MB instead of the CUDA build's few GB); the dependencies
# below find the pinned versions already satisfied.
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url ${TORCH_INDEX_URL}
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
RUN pip install --no-deps . ./client

FROM ${BASE_IMAGE}
ARG PYTHON_VERSION
ENV DEBIAN_FRONTEND=noninteractive
# libGL and glib for OpenCV (imported by Ultralytics); the venv's interpreter where the base has none.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 libgomp1 \
    && (command -v python${PYTHON_VERSION} >/dev/null || apt-get install -y --no-install-recommends python${PYTHON_VERSION}) \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home nerfsim \
    && mkdir -p /data /opt/nerfsim/yolo \
    && chown nerfsim /data /opt/nerfsim/yolo
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NERFSIM_STORAGE_ROOT=/data \
    YOLO_OFFLINE=1 \
    YOLO_CONFIG_DIR=/opt/nerfsim/yolo \
    OMP_NUM_THREADS=1
USER nerfsim
WORKDIR /home/nerfsim
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# The API alone (--workers 0): workers run in their own containers. REDIS_URL must be set;
# without it `nerfsim serve` would start an embedded Redis inside this container.
CMD ["nerfsim", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "0"]
