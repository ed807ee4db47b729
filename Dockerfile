# syntax=docker/dockerfile:1
# deid-sidecar container image, in two flavours chosen with the VARIANT build argument:
#
#   docker build -t deid-sidecar:cpu .                          python:3.11-slim + onnxruntime
#   docker build -t deid-sidecar:gpu --build-arg VARIANT=gpu .  CUDA 12 + cuDNN 9 runtime + onnxruntime-gpu
#
# onnxruntime and onnxruntime-gpu overwrite each other's files, so each flavour installs exactly one of
# them, through the [cpu] or [gpu] extra of pyproject.toml. Detector models are fetched at BUILD time
# through the model registry (`deid-sidecar models fetch`) in a separate stage: the PyTorch that exports
# the plate model never reaches the final image, only models/ is copied across. FFmpeg is not installed:
# PyAV's wheels bundle the FFmpeg libraries (libx264 included) that decoding and encoding use.
#
# Runtime contract: config at /config/config.yml (mount it), models baked in /models, HTTP on :8080
# (anonymized streams for go2rtc, web UI, /healthz), runs as the unprivileged user `deid` (uid 10001).
#
# Without a Docker engine, scripts/build-image.sh builds this same file with buildah (what CI does, through
# tests/test_image.py): VARIANT=cpu on a debootstrapped stand-in for PYTHON_IMAGE. The gpu flavour is only
# linted there (tests/test_dockerfile.py): no CUDA base image can be pulled in CI.

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# onnxruntime-gpu 1.19-1.26 on PyPI are built for CUDA 12.x + cuDNN 9 (host driver >= 525); 1.27 and later
# for CUDA 13 (driver >= 580). The default stays on CUDA 12 because NVR hosts often run older drivers. For
# CUDA 13: --build-arg CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
#          --build-arg ORT_GPU_CONSTRAINT="onnxruntime-gpu>=1.27"
# Ubuntu 24.04 because its python3 (3.12) meets the project's >= 3.11; 22.04 ships 3.10.
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ARG ORT_GPU_CONSTRAINT="onnxruntime-gpu>=1.19,<1.27"

# ---------------------------------------------------------------------------------------------------
# Bases: the operating system and Python of each flavour.
FROM ${PYTHON_IMAGE} AS base-cpu

FROM ${CUDA_IMAGE} AS base-gpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
# `video` lets the NVIDIA runtime mount libnvidia-encode, which h264_nvenc needs (the CUDA images ask only
# for compute and utility). NVIDIA_DISABLE_REQUIRE: CUDA 12 minor-version compatibility lets this 12.6
# runtime run on any driver >= 525; without it the runtime refuses to start on drivers older than 12.6's.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility,video \
    NVIDIA_DISABLE_REQUIRE=1

# ---------------------------------------------------------------------------------------------------
# Virtual environments with the package and ONE onnxruntime flavour. Built on the same base as the
# runtime stage, so the venv's interpreter links stay valid when /opt/venv is copied across.
FROM base-cpu AS venv-cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README* ./
COPY deid_sidecar ./deid_sidecar
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install ".[cpu]" \
    && ! /opt/venv/bin/pip show onnxruntime-gpu >/dev/null 2>&1

FROM base-gpu AS venv-gpu
ARG ORT_GPU_CONSTRAINT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README* ./
COPY deid_sidecar ./deid_sidecar
RUN python3 -m venv /opt/venv \
    && echo "${ORT_GPU_CONSTRAINT}" > /tmp/constraints.txt \
    && /opt/venv/bin/pip install -c /tmp/constraints.txt ".[gpu]" \
    && ! /opt/venv/bin/pip show onnxruntime >/dev/null 2>&1

# DL3006: a stage of this file, not an image to pin.
# hadolint ignore=DL3006
FROM venv-${VARIANT} AS venv

# ---------------------------------------------------------------------------------------------------
# Models, fetched through the registry (sha256-pinned; URL sources before package sources where the
# registry lists both). The yolov8n-plate export builds its own throw-away venv with CPU PyTorch inside
# this stage; nothing of this stage but models/ reaches the image.
FROM ${PYTHON_IMAGE} AS models
# The default is the config's default detectors, so a config that names no model runs in this image.
# yolov8n-plate's ONNX is exported from its PyTorch checkpoint here, with the CPU torch of TORCH_INDEX_URL
# (the version convert.py's TORCH_PIN names; about 2-3 minutes). retina-plate needs no torch: with
# --build-arg MODELS="centerface retina-plate" nothing is exported (CI's image test builds that), and the
# config then says `detection: {license_plate: {model: retina-plate}}`.
# More ids (`deid-sidecar models list`): --build-arg MODELS="centerface yolov8n-plate retina-plate"
ARG MODELS="centerface yolov8n-plate"
# CPU wheels of PyTorch for the export venv: without this index pip would download the CUDA build
# (several GB) only to export a 6 MB model. Used for the fetch step only. scripts/build-image.sh points it
# at a loopback index holding this machine's CPU wheel (download.pytorch.org is out of reach in CI).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /build
COPY pyproject.toml README* ./
COPY deid_sidecar ./deid_sidecar
# The CPU onnxruntime, whichever the flavour: the fetch makes the int8 copies (calibrated with it, on
# photos from Debian's opencv-doc, hence the package lists) that live cameras on a CPU run.
# The default models_dir `models` is relative to the working directory: /build/models.
# hadolint ignore=SC2086
RUN apt-get update \
    && python -m venv /opt/fetch \
    && /opt/fetch/bin/pip install ".[cpu]" \
    && PIP_EXTRA_INDEX_URL="${TORCH_INDEX_URL}" /opt/fetch/bin/deid-sidecar models fetch ${MODELS} \
    && /opt/fetch/bin/deid-sidecar models list \
    && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------------------
# Runtime.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
ARG VARIANT
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DEID_VARIANT=${VARIANT} \
    DEID_CONFIG=/config/config.yml \
    DEID_HEALTH_PORT=8080
RUN groupadd --system --gid 10001 deid \
    && useradd --system --uid 10001 --gid deid --home-dir /app --shell /usr/sbin/nologin deid \
    && mkdir -p /app /config
COPY --from=venv /opt/venv /opt/venv
COPY --from=models /build/models /models
# Both `models_dir: /models` and the default `models_dir: models` (relative to /app) find the baked models.
RUN ln -s /models /app/models
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/deid-entrypoint
WORKDIR /app
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
# /healthz is open even when the API needs a token. DEID_HEALTH_PORT follows server.port if you change it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DEID_HEALTH_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["deid-entrypoint"]
CMD ["run", "-c", "/config/config.yml"]
