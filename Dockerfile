# Multi-stage build: a release binary on a slim Debian runtime, run as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Cargo.toml declares the `hot_path` bench target: its file must be there for any build of the package.
COPY benches ./benches
COPY src ./src
COPY proxy.toml ./
RUN cargo build --release --locked --bin dcr-proxy && strip target/release/dcr-proxy

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/dcr-proxy --create-home dcr-proxy
COPY --from=build /src/target/release/dcr-proxy /usr/local/bin/dcr-proxy
USER dcr-proxy
ENV DCR_PROXY_CONFIG=/etc/dcr-proxy/proxy.toml
# Allocations of 64 KiB and more (request and response body buffers) are mapped and unmapped rather than kept in
# glibc's heap between bursts: an idle keep-alive connection after a 70 KB POST then costs ~7 KiB of RSS instead
# of ~57 KiB (examples/bench_idle.rs, issue 23 item 15; the live heap is 4.4 KiB either way).
ENV GLIBC_TUNABLES=glibc.malloc.mmap_threshold=65536
EXPOSE 8080
# `healthcheck` asks /readyz of the listener in the config (the image has no curl).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["/usr/local/bin/dcr-proxy", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/dcr-proxy"]
CMD ["serve"]
