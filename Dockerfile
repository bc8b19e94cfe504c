# syntax=docker/dockerfile:1
# sluicegate as a container image (docs/deploying.md, "Container image").
#
#   docker build -t sluicegate:0.1.0 .
#   docker run --rm -p 8000:8000 -e SLUICEGATE_API_TOKEN=... -v "$PWD/myproject:/project:ro" sluicegate:0.1.0
#   docker run --rm --no-healthcheck -v "$PWD/myproject:/project:ro" sluicegate:0.1.0 run --max-runtime 14m
#
# The entrypoint is the sluicegate command and the default command is the HTTP service. The
# project folder is /project (SLUICEGATE_PROJECT): mount it, or build an image FROM this one
# that copies it there. Give secrets as environment variables (SLUICEGATE_SOURCE__URL, ...),
# not in the image. PYTHON_IMAGE exists to build from a mirror of the same base image.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A virtual environment, so the final stage copies one folder and nothing of the build tools.
RUN python -m venv /opt/sluicegate
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/sluicegate/bin/pip install ".[fast,service]"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="sluicegate" \
      org.opencontainers.image.description="Incremental, exactly-once exports from SQL databases to files" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric user, so that Kubernetes' runAsNonRoot can check it without a passwd lookup.
RUN groupadd --system --gid 10001 sluicegate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin sluicegate
COPY --from=build /opt/sluicegate /opt/sluicegate
ENV PATH=/opt/sluicegate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SLUICEGATE_PROJECT=/project
# The project folder belongs to the user, so that `sluicegate init` and SQLite projects work in it.
RUN mkdir /project && chown 10001:10001 /project
WORKDIR /project
USER 10001:10001
EXPOSE 8000
# /healthz answers 503 when the source, the ledger or the destination fails its check, and
# urlopen raises on it. Only meaningful for `serve`: run one-off commands with --no-healthcheck.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=8)"]
ENTRYPOINT ["sluicegate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
