# The embedded worker's image: `bootstrap worker` as the always-on Cloud Run service of the guide
# (`worker.runtime: embedded` in the plan).
#
# Not built in this repository's CI: there is no container engine here. Kept deliberately plain.
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/bootstrap-worker:TAG .
#   (the service runs: bootstrap worker --pool POOL --healthcheck; Cloud Run sets PORT)

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# reqwest/rustls use ring: no OpenSSL or C toolchain beyond what the image has. The package
# `bootstrap` does not link the sandbox (`cargo tree -p bootstrap -e normal` has no gcp-sandbox).
RUN cargo build --release --locked -p bootstrap --bin bootstrap \
 && cp target/release/bootstrap /bootstrap

FROM debian:bookworm-slim
# CA certificates for Google and Prefect Cloud over TLS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home worker
COPY --from=build /bootstrap /usr/local/bin/bootstrap
USER 10001
ENV RUST_LOG=info
ENTRYPOINT ["bootstrap"]
CMD ["worker", "--healthcheck"]
