# echorelayd in a container. Build: docker build -t echorelay .
# Run:   docker run -d --name echorelay -p 7007:7007 -p 7007:7007/udp -p 9101:9101 echorelay
# Reload (hot restart, same container, same PID 1): docker kill -s HUP echorelay
# Stop (drain, exit 0):                               docker stop -t 40 echorelay
# Own config: -v /path/echorelay.toml:/etc/echorelay/echorelay.toml:ro

# --- build stage: compilers and -dev packages never reach the image ---------------
FROM debian:bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      g++ cmake ninja-build pkg-config \
      libboost1.81-dev libtomlplusplus-dev libcli11-dev libspdlog-dev libfmt-dev \
      libsystemd-dev libc-ares-dev \
 && rm -rf /var/lib/apt/lists/*
# JOBS: parallel compile jobs (unset = ninja's default, one per CPU plus two)
ARG JOBS=
WORKDIR /src
COPY CMakeLists.txt ./
COPY daemon/ daemon/
COPY config/ config/
COPY systemd/ systemd/
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DECHORELAY_TESTS=OFF \
 && cmake --build /build ${JOBS:+-j"$JOBS"} \
 && strip /build/echorelayd \
 && /build/echorelayd --version

# --- runtime stage: the binary, its shared libraries, the config -----------------
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libtomlplusplus3 libspdlog1.10 libfmt9 libsystemd0 libc-ares2 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 echorelay \
 && useradd --system --uid 10001 --gid echorelay --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin echorelay
COPY --from=build /build/echorelayd /usr/sbin/echorelayd
COPY packaging/docker/echorelay.toml /etc/echorelay/echorelay.toml
USER 10001:10001
# echo-tcp, echo-lp, relay-tcp, admin (tcp); echo-udp, relay-udp (udp)
EXPOSE 7007/tcp 7008/tcp 7100/tcp 9101/tcp 7007/udp 7101/udp
# SIGTERM drains (drain_timeout in the config); give `docker stop` a longer -t.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["echorelayd", "probe", "tcp://127.0.0.1:7007", "--timeout", "2s"]
# --supervise: PID 1 stays the same process across a hot restart (docker kill -s HUP),
# reaps orphans and forwards TERM/INT/HUP to the current worker.
ENTRYPOINT ["echorelayd", "--supervise"]
CMD ["-c", "/etc/echorelay/echorelay.toml"]
