# syntax=docker/dockerfile:1.7
# The operator image: the `cai` package without the `train` extra (no torch, no transformers), so it is
# small and starts fast. Build from the repository root:
#   docker build -f images/operator.Dockerfile -t ghcr.io/cai-dev/cai-operator:0.1.0 .
# (`make images` builds it with buildah FROM a local Debian base: docs/development-cluster.md.)
# Python packages are pinned by images/requirements/operator.txt (`make images-lock`). Pin the base image
# by digest in release builds: --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/cai
COPY images/requirements/operator.txt /tmp/requirements.txt
RUN /opt/cai/bin/pip install --no-deps -r /tmp/requirements.txt

# The package as a wheel, in a stage of its own: a source change rebuilds this stage and the final
# install step only, not the dependency layer.
FROM deps AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN /opt/cai/bin/pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="cai-operator" \
      org.opencontainers.image.description="Kubernetes operator for Constitutional AI training (kopf)" \
      org.opencontainers.image.source="https://github.com/cai-dev/cai-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/cai/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
COPY --from=deps /opt/cai /opt/cai
# The lock holds every dependency: install the package itself without resolving again.
# The wheel is copied, not bind-mounted: buildah's layer cache does not see a change in a mount.
COPY --from=wheel /wheels /tmp/wheels
RUN /opt/cai/bin/pip install --no-deps --no-cache-dir --disable-pip-version-check /tmp/wheels/cai_operator-*.whl \
    && rm -rf /tmp/wheels \
    && /opt/cai/bin/python -c "import cai.controller, cai.cli; import importlib.util as u; assert u.find_spec('torch') is None"
# Non-root, numeric (runAsNonRoot can verify it); the root filesystem may be read-only (HOME=/tmp).
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["cai"]
CMD ["operator"]
