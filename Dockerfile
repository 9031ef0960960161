# The rexray image: the daemon plus the tools it runs (e2fsprogs, xfsprogs, util-linux,
# nvme-cli) and the CA certificates for EC2. It runs as a host service container, and its
# filesystem is a managed plugin's rootfs (plugin/build.sh --from-image IMAGE).
#
#   cargo build --release
#   docker build -t rexray .                                   # FROM debian:bookworm-slim
#   docker build --build-arg BASE=rexray-base:bookworm -t rexray .   # a base made offline
#
# Build arguments:
#   BASE    the runtime base: Debian 12 or a base made with debootstrap (see
#           tests/e2e/dockerfile.sh); packages it lacks are installed with apt-get
#   BINARY  the daemon binary in the build context (default target/release/rexray; the
#           .dockerignore sends only target/release/rexray and plugin/ to the builder)
ARG BASE=debian:bookworm-slim
FROM ${BASE}

ARG BINARY=target/release/rexray

# Install only what the base lacks, so a base made offline with these packages builds offline.
RUN set -eu; \
    missing=""; \
    for p in e2fsprogs xfsprogs util-linux nvme-cli ca-certificates; do \
        dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; \
    done; \
    if [ -n "$missing" ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    mkdir -p /etc/rexray /run/docker/plugins /var/lib/rexray /var/run/rexray

COPY ${BINARY} /usr/bin/rexray
RUN ln -sf /usr/bin/rexray /usr/bin/dvdcli && /usr/bin/rexray version

# As a managed plugin the entrypoint comes from plugin/config.json; as a container, run it with
# --privileged, --network host, -v /run/docker/plugins:/run/docker/plugins and
# -v /var/lib/rexray:/var/lib/rexray:rshared so that Docker sees its socket and mounts.
ENTRYPOINT ["/usr/bin/rexray"]
CMD ["service", "start", "-f", "--nopid"]
