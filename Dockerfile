# aircall-segment in a container: `engine serve` on 0.0.0.0:8000 as an unprivileged user, the outbox on a volume.
#   docker build -t aircall-segment .        (podman: add --format docker, or the HEALTHCHECK below is dropped)
# BASE is any image with python3 (3.11 or newer) and its venv module. Where no registry can be reached, build one
# from Debian's packages and pass it: --build-arg BASE=localhost/debian-python:bookworm (README, "Running in a
# container").
ARG BASE=python:3.12-slim-bookworm

FROM ${BASE} AS build
# The layout of the systemd deployment (deploy/): /opt/aircall-segment with its .venv and mappings, the outbox in
# /var/lib/aircall-segment, so that deploy/env.example serves as the container's settings file unchanged. The
# same path in both stages: a virtual environment's scripts name their interpreter by absolute path.
RUN python3 -m venv /opt/aircall-segment/.venv
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY engine engine
COPY schema schema
# Not editable, pinned by constraints.txt, and with the postgres extra: one image for both kinds of outbox.
RUN /opt/aircall-segment/.venv/bin/pip install --no-cache-dir --disable-pip-version-check -c constraints.txt '.[postgres]'
# The samples go in with the mappings: `engine validate` renders every template against them (tests/fixtures
# beside the mappings folder is where it looks), here and for mappings mounted over these later.
COPY mappings /opt/aircall-segment/mappings
COPY tests/fixtures /opt/aircall-segment/tests/fixtures
# A mapping that does not validate fails the build, not the container's start.
RUN cd /opt/aircall-segment && .venv/bin/engine validate mappings

FROM ${BASE}
# A fixed uid and gid, so that a volume's owner, a Kubernetes runAsUser and `USER` below agree.
RUN groupadd --gid 10001 aircall-segment \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/aircall-segment --no-create-home --no-log-init \
        --shell /usr/sbin/nologin aircall-segment \
    && install -d -o aircall-segment -g aircall-segment -m 0700 /var/lib/aircall-segment
# Owned by root: the server reads its code and mappings and never writes them.
COPY --from=build /opt/aircall-segment /opt/aircall-segment
WORKDIR /opt/aircall-segment
ENV PATH=/opt/aircall-segment/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ENGINE_MAPPINGS=/opt/aircall-segment/mappings \
    ENGINE_DB=/var/lib/aircall-segment/outbox.sqlite3
# Made above, owned by the user: a new named volume starts as a copy of it, owner and mode included.
VOLUME /var/lib/aircall-segment
# Numeric, so that a runtime can tell it is not root without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000
# The base may have no curl: Python's own client. /healthz answers 503 when the outbox cannot be read.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/opt/aircall-segment/.venv/bin/python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
# Exec form: `engine` is PID 1 and gets the SIGTERM of `docker stop` itself (uvicorn finishes the requests in
# flight, the outbox closes). Any other command runs the same way: `docker run IMAGE outbox status`.
ENTRYPOINT ["engine"]
# 0.0.0.0: the container's own interface, reached through the port published on the host. Behind a proxy in
# another container, add --forwarded-allow-ips with its address so that X-Forwarded-For is believed.
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
