# syntax=docker/dockerfile:1
# The exporter as a sidecar image: `agent-registry-exporter sidecar` by default.
# The same Python as `make test`, whose tests/test_container.py repeats these build and run
# steps without an engine (build the wheel, install it into a clean environment, run it).
# The base is named, tag and all, in each FROM: a scanner (checkov's CKV_DOCKER_7) cannot see
# through an ARG, and both stages must be the same Python (a test checks).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md LICENSE ./
COPY src/ src/
# The project alone: its dependencies come from the lock, in the runtime stage.
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# VERSION must equal pyproject's version (a test checks); SOURCE is the repository URL.
ARG VERSION=0.1.0
ARG SOURCE=""
LABEL org.opencontainers.image.title="agent-registry-exporter" \
      org.opencontainers.image.description="Prometheus exporter and Alertmanager cleanup receiver for multi-user AI-agent backends" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The runtime dependencies exactly as requirements.lock pins them, every file checked against
# its hash (`make lock` writes it), then the project's wheel with nothing more; pip check fails
# the build if the lock misses a dependency. The lock and the wheel are mounted, not copied: no
# layer keeps them. Bytecode is compiled here, once: the root filesystem is read-only at run time.
RUN --mount=type=bind,source=requirements.lock,target=/tmp/requirements.lock \
    --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --require-hashes --no-deps \
        -r /tmp/requirements.lock \
    && python -m pip install --no-cache-dir --no-index --no-deps --find-links=/wheels \
        "agent-registry-exporter==${VERSION}" \
    && python -m pip check
# Numeric, so Kubernetes' runAsNonRoot can verify it without a passwd entry.
USER 65532:65532
EXPOSE 8464
ENTRYPOINT ["agent-registry-exporter"]
CMD ["sidecar"]
