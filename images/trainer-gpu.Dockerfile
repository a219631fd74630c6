# syntax=docker/dockerfile:1.7
# The GPU trainer: stage pods that request nvidia.com/gpu. CUDA base (devel: DeepSpeed compiles its ops
# with nvcc on first use), torch 2.13.0 (CUDA 13.0 wheels from PyPI), vLLM 0.32.0 for generation and
# DeepSpeed 0.19.8 for ZeRO training; versions are pinned by images/requirements/trainer-gpu.txt.
#   docker build -f images/trainer-gpu.Dockerfile -t ghcr.io/cai-dev/cai-trainer-gpu:0.1.0 .
# Pin the base by digest in release builds: --build-arg CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04@sha256:...
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# Ubuntu 24.04's Python 3.12; versions pinned to the noble archive.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.12=3.12.3-1ubuntu0.* python3.12-venv=3.12.3-1ubuntu0.* python3.12-dev=3.12.3-1ubuntu0.* \
    && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/cai
# The same dependency steps as the CPU trainer (images/install-trainer.sh), with CUDA.
COPY images/requirements/trainer-gpu.txt /tmp/requirements.txt
COPY images/install-trainer.sh images/cuda_stubs.py /tmp/build/
RUN sh /tmp/build/install-trainer.sh cuda /tmp/requirements.txt

# The package as a wheel, in a stage of its own (as in the CPU trainer).
FROM build AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN /opt/cai/bin/pip wheel --no-deps --wheel-dir /wheels .

FROM ${CUDA_IMAGE}
LABEL org.opencontainers.image.title="cai-trainer-gpu" \
      org.opencontainers.image.description="Constitutional AI stages on NVIDIA GPUs (cai stage; vLLM, DeepSpeed)" \
      org.opencontainers.image.source="https://github.com/cai-dev/cai-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
# python3.12-dev: DeepSpeed and Triton compile kernels at run time (JIT) and need Python.h.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12=3.12.3-1ubuntu0.* python3.12-dev=3.12.3-1ubuntu0.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 65532 --user-group --home-dir /tmp --no-create-home --shell /usr/sbin/nologin cai
COPY --from=build /opt/cai /opt/cai
# The wheel is copied, not bind-mounted: buildah's layer cache does not see a change in a mount.
COPY --from=wheel /wheels /tmp/wheels
RUN /opt/cai/bin/pip install --no-deps --no-cache-dir --disable-pip-version-check /tmp/wheels/cai_operator-*.whl \
    && rm -rf /tmp/wheels \
    && /opt/cai/bin/python -c "import cai.cli, vllm, deepspeed, torch; print(torch.__version__, torch.version.cuda)"
# Every cache (models, HF, Triton, DeepSpeed's op builds, vLLM) goes under /tmp, so pods run as any UID, and
# a read-only root filesystem needs only an emptyDir at /tmp (spec.resources.podTemplate).
# (DL3064 flags TOKENIZERS_PARALLELISM as a secret: it is not one.)
# hadolint ignore=DL3064
ENV PATH=/opt/cai/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    CAI_CACHE_DIR=/tmp/cai-cache HF_HOME=/tmp/hf TRITON_CACHE_DIR=/tmp/triton TORCH_EXTENSIONS_DIR=/tmp/torch-extensions \
    VLLM_CACHE_ROOT=/tmp/vllm CUDA_HOME=/usr/local/cuda TOKENIZERS_PARALLELISM=false
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["cai", "stage"]
