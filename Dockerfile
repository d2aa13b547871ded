# syntax=docker/dockerfile:1
#
# ringway in a container: README.md, "Deploy" > "Container".
#
#   docker build --build-arg RINGWAY_COMMIT=$(git rev-parse --short=12 HEAD) -t ringway:0.1.0 .
#   docker run -d --name ringway -p 80:8080 -p 127.0.0.1:9090:9090 \
#       -v "$PWD/config:/etc/ringway:ro" --stop-timeout 40 ringway:0.1.0
#
# The configuration is a TOML file mounted at /etc/ringway/ringway.toml (each
# key a flag's long name); the image ships none.

# --- Build ------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
# The whole workspace: Cargo.toml names loadtest/ and the benches, and
# --locked needs Cargo.lock as committed.
COPY . .
# The commit --version and ringway_build_info name: .git is not copied
# (.dockerignore), so pass it: --build-arg RINGWAY_COMMIT=$(git rev-parse
# --short=12 HEAD). Without it they say `unknown`.
ARG RINGWAY_COMMIT=
# The cache mounts keep crates.io downloads and the target directory between
# builds (BuildKit, Docker's default builder since 23.0); the binary is
# copied out of the cached target directory, which the image does not keep.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ringway \
    && cp target/release/ringway /usr/local/bin/ringway

# --- Runtime ----------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: the system roots that wss:// backends are verified
# against (unless --upstream-ca). bash (already in the base image) runs the
# HEALTHCHECK; there is no curl.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ringway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin ringway \
    && mkdir -p /etc/ringway
COPY --from=build /usr/local/bin/ringway /usr/local/bin/ringway

# Not root, and by number, so that Kubernetes' runAsNonRoot can check it.
# No capability: ringway listens on 8080, and the port mapping (-p 80:8080,
# a Service's port 80) puts it on port 80. README "Container" says how to
# bind a port under 1024 inside the container if you must.
USER 10001:10001

# 8080: ws:// clients (the default --listen, or `listen` in the file).
# 9090: /metrics, /status and /healthz (--metrics-listen below); publish it
# only to a private address.
EXPOSE 8080 9090

# SIGTERM drains: ringway stops accepting, /healthz answers 503, live
# tunnels get up to --drain-timeout (30 s by default). `docker stop` waits
# only 10 s before SIGKILL: run with --stop-timeout 40 (Compose:
# stop_grace_period: 40s).
STOPSIGNAL SIGTERM

# GET /healthz on the metrics listener: 200 while accepting, 503 while
# draining, nothing when ringway is down. bash's /dev/tcp stands in for
# curl; the exit status is 0 only for a 200. The port is the one of
# --metrics-listen in CMD (tests/deploy.rs checks both, and runs this
# command against a real ringway).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && IFS= read -r -t 2 status <&3 && [[ $status == 'HTTP/1.1 200 '* ]]"]

# Arguments after the image name replace CMD and keep the entrypoint:
# `docker run --rm -v ... ringway:0.1.0 check --config /etc/ringway/ringway.toml`.
ENTRYPOINT ["/usr/local/bin/ringway"]
CMD ["--config", "/etc/ringway/ringway.toml", "--metrics-listen", "0.0.0.0:9090"]
