# Multi-stage build: a static-ish release binary on a slim Debian runtime, run as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY proxy.toml ./
RUN cargo build --release --locked && strip target/release/dcr-proxy

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/dcr-proxy --create-home dcr-proxy
COPY --from=build /src/target/release/dcr-proxy /usr/local/bin/dcr-proxy
USER dcr-proxy
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/dcr-proxy"]
CMD ["--config", "/etc/dcr-proxy/proxy.toml"]
