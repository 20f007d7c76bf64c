# Fulcrum: build the wheel (mypyc compiles the per-request modules, which needs a C compiler), then
# install it into a slim image that runs as an unprivileged user.
#   docker build -t fulcrum .
#   docker run -p 8080:8080 -v "$PWD/fulcrum.yaml:/etc/fulcrum/fulcrum.yaml:ro" fulcrum

FROM python:3.11-slim AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
RUN python -m venv /opt/fulcrum \
    && /opt/fulcrum/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/fulcrum/bin/pip install --no-cache-dir .

FROM python:3.11-slim
ENV PATH=/opt/fulcrum/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/fulcrum /opt/fulcrum
RUN groupadd --system --gid 10001 fulcrum \
    && useradd --system --uid 10001 --gid fulcrum --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin fulcrum \
    && mkdir -p /etc/fulcrum
COPY deploy/fulcrum.yaml /etc/fulcrum/fulcrum.yaml
USER 10001:10001
# 8080: the proxy; 9090: the admin API, metrics and dashboard (loopback unless FULCRUM_ADMIN_LISTEN says otherwise)
EXPOSE 8080 9090
# The admin API's /healthz answers 200 while the process serves (no token needed); slim images have no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
# SIGTERM (docker stop) drains: requests in flight get shutdown_grace to finish; SIGHUP reloads the config.
STOPSIGNAL SIGTERM
ENTRYPOINT ["fulcrum"]
CMD ["run", "-c", "/etc/fulcrum/fulcrum.yaml"]
