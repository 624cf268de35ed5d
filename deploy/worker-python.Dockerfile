# The Python example worker (clients/python/examples/worker.py: add, xsum, fail,
# lang, sleep) on the Python SDK. Build from the repository root:
#
#   docker build -f deploy/worker-python.Dockerfile -t conveyor-worker-python:local .
#
# Env: CONVEYOR_ADDR (the dispatcher, e.g. http://dispatch:50051),
# CONVEYOR_QUEUE, CONVEYOR_CONCURRENCY, CONVEYOR_WORKER_ID. The example sends
# no bearer token: it cannot talk to a server started with --auth-token.

ARG PYTHON_VERSION=3.12
ARG DEBIAN_RELEASE=bookworm

# Wheels are built in a stage of their own so that the build backend
# (hatchling) and pip's caches stay out of the runtime image.
FROM docker.io/library/python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS wheels
WORKDIR /src
COPY clients/python/ ./
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM docker.io/library/python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS runtime
COPY --from=wheels /wheels /wheels
# Offline install of exactly the wheels built above (the SDK and its pinned
# dependency ranges from pyproject.toml).
RUN pip install --no-cache-dir --no-index --find-links /wheels /wheels/conveyor_client-*.whl \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin worker
COPY clients/python/examples/worker.py /app/worker.py
# Logs reach `docker logs` as they are written, not when a buffer fills.
ENV PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["python", "/app/worker.py"]
