# The Go example worker (clients/go/cmd/conveyor-example-worker: add, xsum,
# fail, lang, sleep). Build from the repository root:
#
#   docker build -f deploy/worker-go.Dockerfile -t conveyor-worker-go:local .
#
# Env: CONVEYOR_ADDR (the dispatcher, e.g. http://dispatch:50051),
# CONVEYOR_QUEUE, CONVEYOR_CONCURRENCY, CONVEYOR_WORKER_ID, CONVEYOR_TOKEN.

# clients/go/go.mod asks for go 1.25.
ARG GO_VERSION=1.25

FROM docker.io/library/golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Modules first: this layer survives edits to the Go sources.
COPY clients/go/go.mod clients/go/go.sum ./
RUN go mod download
COPY clients/go/ ./
# Static (no cgo), so the runtime image needs no libc.
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' \
    -o /out/conveyor-example-worker ./cmd/conveyor-example-worker

FROM gcr.io/distroless/static-debian12:nonroot AS runtime
COPY --from=build /out/conveyor-example-worker /usr/local/bin/conveyor-example-worker
# distroless' nonroot user, numeric so that runAsNonRoot can verify it.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/conveyor-example-worker"]
