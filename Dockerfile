# syntax=docker/dockerfile:1
# Multi-stage build: release binary with bundled librdkafka, slim non-root runtime.
# Built and run for real by scripts/container.sh (podman). The cache mounts need
# BuildKit (Docker's default builder) or buildah/podman; with podman, build with
# `--format docker` so the HEALTHCHECK is kept (the OCI format has none).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libssl-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY examples ./examples
COPY docs/hash-vectors.json ./docs/hash-vectors.json
# The crates.io registry and the target directory persist between builds in
# cache mounts; the binary leaves the target mount within this step. Its debug
# info (line tables, and librdkafka's) is kept for backtraces but compressed:
# 85 MB -> 35 MB.
RUN --mount=type=cache,id=kafka-pg-sink-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=kafka-pg-sink-target,target=/src/target,sharing=locked \
    cargo build --release --locked --bin kafka-pg-sink \
    && install -m 0755 target/release/kafka-pg-sink /usr/local/bin/kafka-pg-sink \
    && objcopy --compress-debug-sections=zlib /usr/local/bin/kafka-pg-sink

FROM debian:bookworm-slim
# libssl3: librdkafka (SSL / SASL_SSL to Kafka) links the system OpenSSL.
# ca-certificates: the CA bundle OpenSSL uses when ssl.ca.location is not set.
# TLS to Postgres is rustls with built-in roots (or sslrootcert): nothing needed.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sink \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin sink
COPY --from=build /usr/local/bin/kafka-pg-sink /usr/local/bin/kafka-pg-sink
COPY deploy/container/healthcheck /usr/local/bin/kafka-pg-sink-healthcheck
COPY config/docker.toml /etc/kafka-pg-sink/config.toml
USER 10001:10001
ENV KAFKA_PG_SINK_CONFIG=/etc/kafka-pg-sink/config.toml
EXPOSE 9187
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 CMD ["kafka-pg-sink-healthcheck"]
ENTRYPOINT ["kafka-pg-sink"]
CMD ["run", "--log-format", "json"]
