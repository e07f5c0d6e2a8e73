# syntax=docker/dockerfile:1
# Defender egress gateway: a static build on the official Go image, run on distroless (no shell, non-root).
ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# The gateway's own module only: go.work also names ./deploy (manifest and PAC checks), which the binary does not need.
ENV GOWORK=off
# The catalog is embedded in the binary (go:embed); CI builds with exactly these flags (cmd/gateway TestDockerfileBuild).
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/gateway ./cmd/gateway

# distroless static: CA certificates (for inspected tunnels' upstream verification), tzdata, /etc/passwd, no shell.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="defender-gateway" \
      org.opencontainers.image.description="Egress allowlist gateway for Microsoft Defender for Endpoint and Defender Antivirus" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/defendergw/gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/gateway /gateway
# Inside a container the gateway listens on all interfaces; GATEWAY_CLIENT_CIDRS still limits who may use it.
ENV GATEWAY_LISTEN=0.0.0.0:3128 \
    GATEWAY_ADMIN_LISTEN=0.0.0.0:3138
EXPOSE 3128 3138
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/gateway", "healthcheck"]
ENTRYPOINT ["/gateway"]
CMD ["serve"]
