# idsnap container image.
#   docker build -t idsnap .
#   docker run --rm -v $PWD/idsnap.toml:/etc/idsnap/idsnap.toml:ro -e ATLASSIAN_API_TOKEN idsnap          # the daemon
#   docker run --rm -v $PWD/idsnap.toml:/etc/idsnap/idsnap.toml:ro -e ATLASSIAN_API_TOKEN idsnap run      # one run

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin idsnap \
 && strip target/release/idsnap

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 idsnap \
 && useradd --system --uid 10001 --gid idsnap --home-dir /var/lib/idsnap --create-home idsnap
COPY --from=build /src/target/release/idsnap /usr/local/bin/idsnap
ENV IDSNAP_CONFIG=/etc/idsnap/idsnap.toml
USER idsnap:idsnap
WORKDIR /var/lib/idsnap
ENTRYPOINT ["idsnap"]
CMD ["schedule"]
