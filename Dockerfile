# syntax=docker/dockerfile:1
# One image for every service: `reservoir serve <service>` (see k8s/).
# Build: docker build --build-arg VERSION=0.1.0 --build-arg GIT_COMMIT=$(git rev-parse --short=12 HEAD) -t reservoir:dev .
# The base images are pinned by digest (the tag says what the digest is):
# a rebuild gets the same bytes until someone moves the pin on purpose.
# To move it: docker buildx imagetools inspect rust:1.95-bookworm (and the
# distroless image), and put the digest of the list it prints here; when the
# images come from a registry you mirror them to, keep the same digests.
FROM rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1 AS build
WORKDIR /src
# .git is not copied; pass the commit.
ARG GIT_COMMIT=unknown
ENV RESERVOIR_GIT_COMMIT=${GIT_COMMIT}
COPY . .
# protoc comes from the protoc-bin-vendored crate; nothing else to install.
# The registry and the target directory are cache mounts: a rebuild after a
# change to the project's code compiles the project, not its dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p reservoir \
    && install -D target/release/reservoir /out/reservoir

FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
ARG VERSION=0.1.0
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="reservoir" \
      org.opencontainers.image.description="Prepaid credits and customer wallets for usage-billed platforms: wallet, metering, invoicing, payments and orchestrator services" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.source="https://github.com/reservoir/reservoir" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/reservoir /usr/local/bin/reservoir
USER 65532:65532
# gRPC: wallet 50051, metering 50052, invoicing 50053, payments 50054,
# orchestrator 50055; metrics, /healthz and /readyz: 9090 (as k8s/ sets them).
EXPOSE 50051 50052 50053 50054 50055 8080 9090
ENTRYPOINT ["/usr/local/bin/reservoir"]
CMD ["serve", "wallet"]
