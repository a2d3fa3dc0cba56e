# syntax=docker/dockerfile:1
# sluice in a container: built with the Rust toolchain, run on Debian slim as a non-root user.
#
#   docker build -t sluice .
#   docker run --rm -p 8080:8080 -v "$PWD/my-sluice.yaml:/etc/sluice/sluice.yaml:ro" sluice
#
# The image's own /etc/sluice/sluice.yaml is deploy/docker/sluice.yaml: a placeholder to replace.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The caches keep the crates and the dependencies' builds between image builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && cp target/release/sluice /usr/local/bin/sluice

FROM debian:bookworm-slim
# No ca-certificates needed: https upstreams and webhooks are verified against roots built into
# the binary (or a `ca:` file given in the config).
RUN groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/sluice --create-home \
        --shell /usr/sbin/nologin sluice
COPY --from=build /usr/local/bin/sluice /usr/local/bin/sluice
COPY deploy/docker/sluice.yaml /etc/sluice/sluice.yaml
# `sluice ctl` (and so the health check) talks to this admin address.
ENV SLUICE_ADMIN=http://127.0.0.1:9901
USER 10001:10001
# state_dir in the default config: overrides, rollout state and history survive restarts when
# this directory is a volume.
WORKDIR /var/lib/sluice
# The default config's data-plane listener and admin API (the admin binds 127.0.0.1 there).
EXPOSE 8080 9901
# `sluice ctl health` GETs /healthz (no token needed) and exits non-zero when it gets no answer:
# no curl in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["sluice", "ctl", "health"]
ENTRYPOINT ["sluice"]
CMD ["run", "-c", "/etc/sluice/sluice.yaml"]
