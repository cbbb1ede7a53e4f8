# syntax=docker/dockerfile:1
# The wake service (control plane): REST API, the Neon-compatible proxy API, /metrics
# /healthz /readyz on WAKE_LISTEN (4400). Its `local` compute driver runs each endpoint
# as a Postgres 15 + PgBouncer under DATA_DIR (/data), so both come from Debian here.
# Build from the repository root:
#   docker build -f deploy/docker/wake-service.Dockerfile -t pg-wake-service .
# Configuration is `wake-service serve`'s flags as environment variables
# (`wake-service serve --help`); WAKE_ADMIN_TOKEN is required.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p wake-service \
 && install -D -m 0755 target/release/wake-service /out/wake-service

FROM debian:bookworm-slim
# postgresql-common first, told not to create a cluster of its own; then Postgres 15 and
# PgBouncer (the local driver runs them), and tini: PID 1 that forwards SIGTERM and reaps
# the daemonized PgBouncers a stopped compute leaves to it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-common \
 && sed -ri 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' \
      /etc/postgresql-common/createcluster.conf \
 && apt-get install -y --no-install-recommends postgresql-15 pgbouncer tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin wake \
 && install -d -o wake -g wake -m 0711 /data
COPY --from=build /out/wake-service /usr/local/bin/wake-service
COPY deploy/docker/healthcheck.sh /usr/local/bin/healthcheck
# Not root: Postgres refuses root, and a wake service that is not root runs every compute
# (and the embedded state store) as its own user, `wake` (it logs that endpoints then share
# one OS user; see deploy/README.md for the isolation trade-off).
ENV WAKE_LISTEN=0.0.0.0:4400 \
    DATA_DIR=/data \
    WAKE_PG_BIN=/usr/lib/postgresql/15/bin \
    WAKE_PGBOUNCER=/usr/sbin/pgbouncer \
    RUST_LOG=info
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 4400
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["/usr/local/bin/healthcheck", "WAKE_LISTEN", "/healthz"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/wake-service"]
CMD ["serve"]
