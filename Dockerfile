# syntax=docker/dockerfile:1
# Build stage: the release binary (opt-level 3).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin wagate && strip target/release/wagate

# Runtime stage: a small Debian with the binary, its config, and curl for the health check.
# Production points wagate at a database with APP_DATABASE__URL; the private cluster is for
# local use, so no PostgreSQL server is installed here.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/wagate --create-home wagate
COPY --from=build /src/target/release/wagate /usr/local/bin/wagate
COPY config /etc/wagate/config
ENV APP_ENVIRONMENT=production \
    APP_CONFIG_DIR=/etc/wagate/config \
    APP_APPLICATION__PORT=8080
USER wagate
WORKDIR /var/lib/wagate
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["/usr/local/bin/wagate"]
