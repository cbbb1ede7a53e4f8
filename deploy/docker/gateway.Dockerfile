# syntax=docker/dockerfile:1
# The gateway (data plane): SQL over HTTP, the WebSocket tunnel and Postgres TCP on
# GATEWAY_LISTEN (4444), /metrics /healthz /readyz /usage on GATEWAY_ADMIN_LISTEN (4480).
# Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t pg-gateway .
# Configuration is the gateway's flags as environment variables (`gateway --help`).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p gateway \
 && install -D -m 0755 target/release/gateway /out/gateway

FROM debian:bookworm-slim
# tini: PID 1 that forwards SIGTERM (the gateway drains on it) and reaps.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin gateway
COPY --from=build /out/gateway /usr/local/bin/gateway
COPY deploy/docker/healthcheck.sh /usr/local/bin/healthcheck
# The binary defaults to loopback; in a container both listeners must be reachable.
ENV GATEWAY_LISTEN=0.0.0.0:4444 \
    GATEWAY_ADMIN_LISTEN=0.0.0.0:4480 \
    RUST_LOG=info
USER 10001:10001
EXPOSE 4444 4480
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/healthcheck", "GATEWAY_ADMIN_LISTEN", "/healthz"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/gateway"]
