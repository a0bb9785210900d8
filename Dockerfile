# syntax=docker/dockerfile:1
# One image, both binaries: cryptoviz-operator (the Deployment's command) and cryptoviz-worker (the
# entrypoint: worker Deployments created by the operator pass only `scraper|consumer|gateway --config ...`).
#   docker build -t ghcr.io/cryptoviz/cryptoviz:0.1.0 .
# UNTESTED here: the development machines run no container engine (see docs/packaging.md).

# The toolchain the tests run on (the workspace MSRV is 1.89, but locked dependencies may need newer).
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- build ---------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# librdkafka is compiled from source by rdkafka-sys (C toolchain, cmake-free "ssl" build); it links the
# system OpenSSL and zlib, hence their headers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev zlib1g-dev python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# --locked: exactly the versions in Cargo.lock. The cache mounts keep the registry and target dir between
# builds without putting them in a layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && install -D -m 0755 target/release/cryptoviz-operator /out/cryptoviz-operator \
 && install -D -m 0755 target/release/cryptoviz-worker /out/cryptoviz-worker

# ---- run -----------------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim
# What the binaries load at run time: OpenSSL 3 and zlib (librdkafka), CA roots (librdkafka TLS without a
# caSecretRef, and the HTTP clients that verify against the platform store).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 zlib1g ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/cryptoviz-operator /out/cryptoviz-worker /usr/local/bin/
# Numeric non-root user: runAsNonRoot can only be verified by the kubelet for a numeric USER.
# 65532 is distroless' "nonroot"; the chart's podSecurityContext uses the same ids.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/cryptoviz-worker"]
LABEL org.opencontainers.image.source="https://github.com/cryptoviz/cryptoviz" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.description="CryptoViz operator and workers"
