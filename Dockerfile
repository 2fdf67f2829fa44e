# canaryctl (controller, demo agent, traffic generator) for envoy/docker-compose.yaml
# and deploy/kubernetes/ (sqlite3 is there for backups of the state).
# The filter itself is built on the host (`make build`) and mounted into Envoy.
FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p canaryctl

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates sqlite3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/policy-canary --create-home canary
COPY --from=build /src/target/release/canaryctl /usr/local/bin/canaryctl
COPY envoy/policies /srv/policy-canary/envoy/policies
COPY envoy/plans /srv/policy-canary/envoy/plans
WORKDIR /srv/policy-canary
USER canary
ENV CANARYCTL_STATE_DIR=/var/lib/policy-canary
ENTRYPOINT ["canaryctl"]
CMD ["--help"]
