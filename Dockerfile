# permafrost: a small runtime image with the `query` feature.
#   docker build -t permafrost .
#   docker run --rm -v "$PWD/permafrost.yaml:/config/permafrost.yaml:ro" permafrost archive -c /config/permafrost.yaml
# Linted by the test suite (hadolint, tests/it/catalogs.rs).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY src ./src
COPY schemas ./schemas
RUN cargo build --release --locked --features query \
 && strip target/release/permafrost \
 && mkdir -p /out/bash /out/zsh /out/fish /out/man \
 && target/release/permafrost completions bash > /out/bash/permafrost \
 && target/release/permafrost completions zsh > /out/zsh/_permafrost \
 && target/release/permafrost completions fish > /out/fish/permafrost.fish \
 && target/release/permafrost man > /out/man/permafrost.1

FROM debian:bookworm-slim
# CA certificates: TLS to RDS/Aurora, S3, Glue and HTTPS catalogs.  Not
# pinned on purpose: the trust store must take Debian's updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/permafrost --create-home permafrost
COPY --from=build /src/target/release/permafrost /usr/local/bin/permafrost
COPY --from=build /out/bash/permafrost /usr/share/bash-completion/completions/permafrost
COPY --from=build /out/zsh/_permafrost /usr/share/zsh/vendor-completions/_permafrost
COPY --from=build /out/fish/permafrost.fish /usr/share/fish/vendor_completions.d/permafrost.fish
COPY --from=build /out/man/permafrost.1 /usr/share/man/man1/permafrost.1
USER 10001
WORKDIR /var/lib/permafrost
LABEL org.opencontainers.image.title="permafrost" \
      org.opencontainers.image.description="Archive old PostgreSQL time-series rows into Apache Iceberg, verified, and bring them back" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/permafrost/permafrost"
ENTRYPOINT ["permafrost"]
CMD ["--help"]
