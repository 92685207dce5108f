# syntax=docker/dockerfile:1
# guardproxy image: wheels built in a throwaway stage, a slim runtime with no build tools, a fixed
# non-root UID, and nothing written outside /tmp, so it runs with a read-only root filesystem.
#
#   docker build -t guardproxy .
#   docker run --read-only --tmpfs /tmp -p 8080:8080 -e GUARDPROXY_UPSTREAM__URL=http://api:8000 guardproxy
#
# Configuration comes only from GUARDPROXY_* variables and an optional mounted file
# (-v ./guardproxy.yaml:/etc/guardproxy/guardproxy.yaml:ro -e GUARDPROXY_CONFIG=/etc/guardproxy/guardproxy.yaml).
# See docs/deployment.md.

ARG PYTHON_IMAGE=python:3.11-slim-trixie

FROM ${PYTHON_IMAGE} AS builder
# A package index other than PyPI (a mirror, and the CA bundle that trusts it), for this stage
# only: build arguments of the builder never reach the runtime image's layers or history.
# Unset unless given (docker build --build-arg PIP_INDEX_URL=...).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The compiled build (setup.py: the hot path compiled with mypyc) needs a C compiler and the
# interpreter's headers: in this stage only (the official images carry the headers; a Debian
# base gets them from python3-dev). Unpinned: the base's Debian release decides their versions,
# and nothing of them reaches the runtime image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && if ! python -c "import os, sys, sysconfig; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_path('include'), 'Python.h')))"; then \
           apt-get install -y --no-install-recommends python3-dev; \
       fi \
    && rm -rf /var/lib/apt/lists/*
COPY constraints.txt pyproject.toml setup.py README.md ./
COPY src ./src
# The venv's own pip does the work, so the base needs no pip of its own (a Debian base without
# python3-pip works as well as the official image). --only-binary: every dependency has a wheel
# for this interpreter; a missing one must fail the build here rather than quietly need a
# compiler. The versions are the ones CI tested with; PIP_CONSTRAINT holds the isolated build
# environment (setuptools, mypy and its dependencies) to them too, which --constraint does not
# reach. The build must come out compiled: a fallback to pure Python fails it here.
RUN python -m venv /opt/guardproxy \
    && PIP_CONSTRAINT=constraints.txt /opt/guardproxy/bin/pip wheel --no-cache-dir --wheel-dir /wheels --only-binary=:all: --constraint constraints.txt . \
    && /opt/guardproxy/bin/pip install --no-cache-dir --no-index --find-links /wheels /wheels/guardproxy-*.whl \
    && /opt/guardproxy/bin/pip uninstall --yes pip setuptools \
    && /opt/guardproxy/bin/python -c "from guardproxy.buildinfo import build_kind; assert build_kind() == 'compiled', build_kind()"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="guardproxy" \
      org.opencontainers.image.description="A hardening reverse proxy for HTTP APIs" \
      org.opencontainers.image.licenses="Apache-2.0"

# The official python images ship pip, setuptools and wheel in the system interpreter: removed,
# so nothing in the image can install packages (a base without them has nothing to remove).
RUN if python -m pip --version >/dev/null 2>&1; then \
        python -m pip uninstall --yes --root-user-action=ignore pip setuptools wheel; \
    fi

# A fixed UID, so Kubernetes' runAsUser and file permissions on mounted config can name it.
RUN groupadd --system --gid 10001 guardproxy \
    && useradd --system --no-log-init --uid 10001 --gid guardproxy \
       --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin guardproxy

# Bytecode was compiled at install time; the root filesystem may be read-only.
COPY --from=builder /opt/guardproxy /opt/guardproxy

# Inside a container both listeners bind every interface: the port mapping, the pod network or a
# NetworkPolicy decides who reaches them (the admin port carries /healthz, /readyz and /metrics).
# With --workers N the workers share metric files in metrics.multiprocess_dir; it must be below
# /tmp, the one writable place (a tmpfs or an emptyDir). One worker does not use it.
ENV PATH=/opt/guardproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GUARDPROXY_SERVER__LISTEN=0.0.0.0:8080 \
    GUARDPROXY_ADMIN__LISTEN=0.0.0.0:9090 \
    GUARDPROXY_METRICS__MULTIPROCESS_DIR=/tmp/guardproxy-metrics

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 9090

# Liveness of the admin listener without curl: the port follows GUARDPROXY_ADMIN__LISTEN, and
# ProxyHandler({}) keeps an inherited http_proxy variable from sending the probe elsewhere.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u; port = os.environ.get('GUARDPROXY_ADMIN__LISTEN', ':9090').rpartition(':')[2]; opener = u.build_opener(u.ProxyHandler({})); sys.exit(0 if opener.open('http://127.0.0.1:' + port + '/healthz', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["guardproxy"]
CMD ["run"]
