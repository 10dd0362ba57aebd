# syntax=docker/dockerfile:1
#
# The gateway as a container image: a build stage that compiles and installs the package into a
# virtual environment, and a slim final stage that holds only that environment and Python.
#
# Build:  docker build -t oauth-gateway:0.1.0 .
# Check:  docker run --rm -v "$PWD/config/example.yaml:/etc/gateway/gateway.yaml:ro" \
#           oauth-gateway:0.1.0 check
# Run:    docker run --rm -p 8080:8080 -p 127.0.0.1:9901:9901 \
#           -v "$PWD/config/example.yaml:/etc/gateway/gateway.yaml:ro" oauth-gateway:0.1.0
#
# The configuration is read from /etc/gateway/gateway.yaml ($GATEWAY_CONFIG): mount a file (or a
# directory holding gateway.yaml, e.g. a Kubernetes ConfigMap) there. The admin listener
# (/healthz /readyz /metrics) must listen on 0.0.0.0:9901 in the configuration for anything
# outside the container to reach it; the HEALTHCHECK below runs inside and works either way.

# Both stages use the same base, so the virtual environment's interpreter path stays valid.
FROM python:3.12.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Compilers live in this stage only. They compile the gateway's request path with mypyc
# (setup.py; GATEWAY_COMPILE=yes: the build fails rather than ship it uncompiled). Every
# dependency ships wheels for linux/amd64 and linux/arm64; on a platform without a wheel they
# build it here too, and the final image still never contains them.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential=12.9 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY gateway ./gateway
RUN python -m venv /opt/gateway \
 && GATEWAY_COMPILE=yes /opt/gateway/bin/pip install --no-compile . \
 && /opt/gateway/bin/python -m compileall -q /opt/gateway/lib \
 && /opt/gateway/bin/gateway schema > /dev/null \
 && /opt/gateway/bin/python -c "import sys, gateway.server as s; sys.exit(not s.is_compiled())"


FROM python:3.12.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="oauth-gateway" \
      org.opencontainers.image.description="An API gateway that enforces OAuth 2.0 bearer tokens" \
      org.opencontainers.image.licenses="Apache-2.0"

# A numeric, unprivileged user (Kubernetes' runAsNonRoot can only verify a numeric USER).
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gateway \
 && mkdir -p /etc/gateway

COPY --from=build /opt/gateway /opt/gateway

# Byte code was compiled in the build stage: nothing is written at run time, so the root file
# system may be read-only.
ENV PATH=/opt/gateway/bin:$PATH \
    GATEWAY_CONFIG=/etc/gateway/gateway.yaml \
    GATEWAY_HEALTHCHECK_URL=http://127.0.0.1:9901/healthz \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001
WORKDIR /etc/gateway

# 8080: the public listener; 9901: the admin listener (keep it off the public network).
EXPOSE 8080 9901

# SIGTERM starts a graceful drain: /readyz turns 503, the listener stops accepting, requests in
# flight get up to `shutdown_timeout` (give `docker stop -t` at least that much).
STOPSIGNAL SIGTERM

# No curl in a slim image: Python asks the admin listener, bypassing any HTTP proxy settings.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request as u; r = u.build_opener(u.ProxyHandler({})).open(os.environ['GATEWAY_HEALTHCHECK_URL'], timeout=2); sys.exit(0 if r.status == 200 else 1)"]

ENTRYPOINT ["gateway"]
CMD ["run"]
