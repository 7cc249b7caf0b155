# syncflow, the mock CRM and the demo's event publisher in one small image.
#   docker build -t syncflow .
#   docker run --rm -v "$PWD:/config" syncflow validate --dir /config
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin syncflow --bin mock-crm --example demo_events

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/syncflow /usr/local/bin/syncflow
COPY --from=build /src/target/release/mock-crm /usr/local/bin/mock-crm
COPY --from=build /src/target/release/examples/demo_events /usr/local/bin/demo_events
# The shipped config; mount your own over /config.
COPY syncflow.yaml /config/syncflow.yaml
COPY pipelines /config/pipelines
COPY providers /config/providers
COPY schemas /config/schemas
ENV SYNCFLOW_DIR=/config
EXPOSE 9464
ENTRYPOINT ["syncflow"]
CMD ["run"]
