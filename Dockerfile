# syntax=docker/dockerfile:1
# Build:  docker build -t oauth-gateway .
# Run:    docker run -p 8080:8080 -v "$PWD/config:/etc/gateway:ro" oauth-gateway
# The configuration is read from /etc/gateway/gateway.yaml (GATEWAY_CONFIG).

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN python -m venv /opt/gateway \
 && /opt/gateway/bin/pip install --no-cache-dir .

FROM python:3.12-slim
COPY --from=build /opt/gateway /opt/gateway
RUN useradd --system --uid 10001 --no-create-home gateway
USER 10001
ENV PATH=/opt/gateway/bin:$PATH \
    GATEWAY_CONFIG=/etc/gateway/gateway.yaml \
    PYTHONUNBUFFERED=1
EXPOSE 8080 9901
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["gateway"]
CMD ["run"]
