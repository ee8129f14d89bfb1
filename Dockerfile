# girder's server image: a Rust toolchain builds the `girder` binary, and a bare Debian
# bookworm-slim runs it as a non-root user. No Python, no compiler in the final image.
#
#   docker build -t girder .
#   docker run --rm -p 8080:8080 --stop-timeout 40 \
#       -v "$PWD/models/all-MiniLM-L6-v2:/models/model:ro" girder
#
# See docs/deploy.md for the Kubernetes manifests and deploy/Dockerfile.prebuilt for an image
# around a binary built outside Docker.

# The workspace needs Rust >= 1.85 (`rust-version` in Cargo.toml). Builder and runtime are both
# Debian bookworm, so the binary's glibc (2.36) is the one it runs on.
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
# The tokenizers crate compiles C (Oniguruma) and C++ (esaxx) sources; the slim Rust image
# has gcc but not g++ (bookworm's g++ 12, pinned).
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++=4:12.2.0-3 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
# The release profile keeps line tables (debug = 1) for profiling; the image does without
# them (symbols stay, so backtraces still name functions). No `-C target-cpu=native`: the
# matrix kernels pick AVX-512 or AVX2 at run time, so one image runs on any x86-64 node.
ENV CARGO_PROFILE_RELEASE_DEBUG=0
# The registry and target caches persist between builds (RUN --mount needs BuildKit, the
# default builder since Docker Engine 23); the binary is copied out of the cached target
# folder in the same step. Behind a TLS-intercepting proxy, cargo needs the proxy's CA: pass
# a CA bundle as the optional secret `ca`
# (`docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt .`); it is read
# during this step only and is not in any layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    --mount=type=secret,id=ca,required=false \
    if [ -f /run/secrets/ca ]; then export CARGO_HTTP_CAINFO=/run/secrets/ca; fi \
    && cargo build --release -p girder-cli --locked \
    && install -D -m 0755 target/release/girder /out/girder

FROM debian:bookworm-slim AS runtime
# The binary links only glibc, libm, libgcc_s and libstdc++ (`ldd target/release/girder`),
# all in bookworm-slim. The Hub client (`girder download`, hub ids given to --model) carries
# its own TLS roots (rustls with webpki-roots), so no ca-certificates package is needed.
RUN groupadd --system --gid 10001 girder \
    && useradd --system --uid 10001 --gid girder --home-dir /home/girder --create-home \
       --shell /usr/sbin/nologin girder \
    && install -d -o girder -g girder -m 0755 /models /cache
COPY --from=builder /out/girder /usr/local/bin/girder
# /models: model folders, mounted read-only. /cache: the Hugging Face cache for hub ids
# (`--model org/name@revision`), writable; a model folder under /models needs no cache.
ENV HF_HOME=/cache/huggingface \
    HF_HUB_DISABLE_PROGRESS_BARS=1
USER 10001:10001
WORKDIR /home/girder
EXPOSE 8080
# girder is PID 1 and handles SIGTERM itself: /health turns 503, in-flight requests finish
# within --shutdown-grace-s (30 s by default), then it exits. `docker stop` waits 10 s unless
# told otherwise: run with --stop-timeout 40 (or `docker stop -t 40`).
ENTRYPOINT ["girder"]
CMD ["serve", "--model", "/models/model", "--host", "0.0.0.0", "--port", "8080"]
