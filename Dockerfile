# canaryctl (controller, demo agent, traffic generator) for envoy/docker-compose.yaml
# and deploy/kubernetes/ (sqlite3 is there for backups of the state).
# The filter itself is built on the host (`make build`) and mounted into Envoy.
#
# Stages: `runtime` (Debian, the user canary), `prebuilt` (a canaryctl built on
# the host, for machines without the Rust image: `make test` builds it this way),
# `build` (canaryctl built from source) and the default last stage. The legacy
# builder builds every stage before its --target, so `prebuilt` comes before `build`.
ARG RUNTIME_BASE=debian:bookworm-slim

FROM ${RUNTIME_BASE} AS runtime
# uid/gid 10001 are fixed so that volumes and other images can name them.
# /tokens seeds the compose file's `tokens` volume, owned by canary: others may
# pass through (Envoy reads its one token by group) but not list it.
RUN { command -v sqlite3 && test -s /etc/ssl/certs/ca-certificates.crt; } >/dev/null 2>&1 \
    || { apt-get update && apt-get install -y --no-install-recommends ca-certificates sqlite3 \
         && rm -rf /var/lib/apt/lists/*; } \
    && groupadd --system --gid 10001 canary \
    && useradd --system --uid 10001 --gid canary --home /var/lib/policy-canary --create-home canary \
    && install -d -o canary -g canary -m 0711 /tokens
COPY envoy/policies /srv/policy-canary/envoy/policies
COPY envoy/plans /srv/policy-canary/envoy/plans
WORKDIR /srv/policy-canary
ENV CANARYCTL_STATE_DIR=/var/lib/policy-canary
ENTRYPOINT ["canaryctl"]
CMD ["--help"]

# docker build --target prebuilt --build-arg CANARYCTL_BIN=path/in/context .
FROM runtime AS prebuilt
ARG CANARYCTL_BIN=target/release/canaryctl
COPY ${CANARYCTL_BIN} /usr/local/bin/canaryctl
USER canary

FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p canaryctl

FROM runtime
COPY --from=build /src/target/release/canaryctl /usr/local/bin/canaryctl
USER canary
