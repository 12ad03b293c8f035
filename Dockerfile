# Multi-stage build: release binary with bundled librdkafka, slim non-root runtime.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libssl-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY examples ./examples
COPY docs/hash-vectors.json ./docs/hash-vectors.json
RUN cargo build --release --locked --bin kafka-pg-sink

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 --no-create-home sink
COPY --from=build /src/target/release/kafka-pg-sink /usr/local/bin/kafka-pg-sink
COPY config/docker.toml /etc/kafka-pg-sink/config.toml
USER 10001
ENV KAFKA_PG_SINK_CONFIG=/etc/kafka-pg-sink/config.toml
EXPOSE 9187
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD curl -fsS http://127.0.0.1:9187/healthz || exit 1
ENTRYPOINT ["kafka-pg-sink"]
CMD ["run", "--log-format", "json"]
