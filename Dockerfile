# One image for every service: `reservoir serve <service>` (see k8s/).
# Build: docker build -t reservoir:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
# .git is not copied; pass the commit: --build-arg GIT_COMMIT=$(git rev-parse --short=12 HEAD)
ARG GIT_COMMIT=unknown
ENV RESERVOIR_GIT_COMMIT=${GIT_COMMIT}
COPY . .
# protoc comes from the protoc-bin-vendored crate; nothing else to install.
RUN cargo build --release --locked -p reservoir \
    && install -D target/release/reservoir /out/reservoir

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/reservoir /usr/local/bin/reservoir
USER 65532:65532
EXPOSE 50051 50052
ENTRYPOINT ["/usr/local/bin/reservoir"]
CMD ["serve", "wallet"]
