# syntax=docker/dockerfile:1
# The rules-sidecar image.
#
#   build   uv turns uv.lock (hash-checked, no dev tools) and wheels of the two workspace packages
#           into a virtual environment, /opt/rules-sidecar (scripts/build-venv).
#   final   the same slim Python base with only that environment copied in: no uv, pip,
#           setuptools, compilers or sources. Runs as UID/GID 10001.
#
# The command line is ENTRYPOINT + CMD in exec form: `rules-sidecar serve` is PID 1 and receives
# SIGTERM itself, drains (shutdown_grace_seconds) and exits 0. It starts no child processes, so
# no init process is needed to reap them. It listens on 127.0.0.1:50051 unless configured: the
# Helm chart sets RULES_SIDECAR_HEALTH_LISTEN_ADDRESS=0.0.0.0:50052 so the kubelet's probes reach
# health, and an API beyond loopback needs a token (RULES_SIDECAR_ADMIN_TOKEN_FILE) or it refuses
# to start (protected mode).
# No Docker engine runs in CI: scripts/check-image-command runs exactly this command line and
# environment outside a container, from an environment built by the same script.
#
#   docker build -t rules-sidecar:0.1.0 .
#   docker run --rm -p 50051:50051 -e RULES_SIDECAR_LISTEN_ADDRESS=0.0.0.0:50051 \
#     -e RULES_SIDECAR_ADMIN_TOKEN_FILE=/run/secrets/admin-token \
#     -v "$PWD/admin-token:/run/secrets/admin-token:ro" rules-sidecar:0.1.0

# The machine's Python (3.11) and Debian (bookworm); pin a digest in your registry's mirror.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# uv pinned as in scripts/bootstrap.
RUN pip install --no-cache-dir --disable-pip-version-check "uv==0.13.9"
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY clients/python/ clients/python/
COPY sidecar/ sidecar/
COPY scripts/build-venv scripts/build-venv
RUN UV_PYTHON=/usr/local/bin/python3 scripts/build-venv /opt/rules-sidecar

FROM ${PYTHON_IMAGE}
# The venv's interpreter is a link to /usr/local/bin/python3 of the same base image.
COPY --from=build /opt/rules-sidecar /opt/rules-sidecar
RUN python3 -m pip uninstall --yes --quiet pip setuptools wheel \
 && groupadd --gid 10001 rules-sidecar \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin rules-sidecar \
 && mkdir -p /var/lib/rules-sidecar \
 && chown 10001:10001 /var/lib/rules-sidecar
ENV PATH=/opt/rules-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RULES_SIDECAR_DATA_DIR=/var/lib/rules-sidecar
# The store; with a read-only root filesystem, mount a volume here (the chart mounts an emptyDir).
VOLUME ["/var/lib/rules-sidecar"]
USER 10001:10001
EXPOSE 50051
ENTRYPOINT ["rules-sidecar"]
CMD ["serve"]
