// `echorelayd probe ADDRESS`: one echo round trip for health checks (container
// HEALTHCHECK, scripts). Blocking sockets with poll deadlines; never used by the daemon.
#pragma once

#include <string>

namespace echorelay::app {

struct ProbeOptions {
  std::string address;  // tcp://host:port, udp://host:port, unix:///path, unix://@name
  std::string timeout = "2s";
  std::string framing = "line";  // line | length-prefixed | raw (stream listeners)
};

inline constexpr int kProbeUsage = 2;  // a usage error, as CLI11 and nc report it

// Exit code: 0 when the echo came back byte for byte, 1 when it did not (reason on
// stderr), 2 (kProbeUsage) when the arguments are wrong.
int run_probe(const ProbeOptions& options);

}  // namespace echorelay::app
