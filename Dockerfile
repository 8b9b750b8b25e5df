# syntax=docker/dockerfile:1
# switcher-api: a statically linked binary (musl) in an image that holds nothing else.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
# musl-tools gives musl-gcc, which ring's C and assembly parts are built with.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
ARG TARGETARCH
RUN case "${TARGETARCH:-amd64}" in \
        amd64) echo x86_64-unknown-linux-musl > /rust-target ;; \
        arm64) echo aarch64-unknown-linux-musl > /rust-target ;; \
        *) echo "unsupported architecture ${TARGETARCH}" >&2; exit 1 ;; \
    esac \
    && rustup target add "$(cat /rust-target)"
WORKDIR /src
# ring's C parts: the cc crate would look for an <arch>-linux-musl-gcc that Debian lacks.
ENV CC_x86_64_unknown_linux_musl=musl-gcc CC_aarch64_unknown_linux_musl=musl-gcc

# Dependencies first, in a layer of their own: a change to the code does not rebuild them.
COPY Cargo.toml Cargo.lock ./
# tiny_http, patched (see vendor/tiny_http/VENDORED.md).
COPY vendor vendor
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --target "$(cat /rust-target)" \
    && rm -rf src

COPY src src
COPY sql sql
# Newer mtimes than the placeholder build, so cargo rebuilds the crate itself.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --target "$(cat /rust-target)" \
    && cp "target/$(cat /rust-target)/release/switcher-api" /switcher-api \
    && /switcher-api --version \
    && mkdir -p /state/var/lib/switcher/journal

# Distroless static: no shell, no libc, CA certificates and a nonroot user (65532).
# The binary also carries its own copy of the Mozilla CA roots (webpki-roots).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /switcher-api /usr/local/bin/switcher-api
# The audit journal's home, owned by nonroot so that a named volume mounted here (which
# takes the image directory's owner) is writable.
COPY --from=builder --chown=65532:65532 /state/var/lib/switcher /var/lib/switcher
USER nonroot:nonroot
ENV HOST=0.0.0.0 PORT=8080 AUDIT_JOURNAL_DIR=/var/lib/switcher/journal
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/switcher-api", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/switcher-api"]
CMD ["serve"]
