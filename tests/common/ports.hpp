// Loopback ports for tests, shared by the unit and integration suites.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <fstream>
#include <random>

#include "net/fd.hpp"

namespace echorelay::test {

// A socket of `type` bound to 127.0.0.1:port (0: the kernel picks); `port` is set to
// the port it got. An invalid Fd when the bind fails.
inline net::Fd bind_loopback(int type, std::uint16_t& port) {
  net::Fd fd(::socket(AF_INET, type | SOCK_CLOEXEC, 0));
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sin.sin_port = htons(port);
  socklen_t len = sizeof sin;
  if (!fd || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&sin), sizeof sin) != 0 ||
      ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&sin), &len) != 0) {
    return net::Fd();
  }
  port = ntohs(sin.sin_port);
  return fd;
}

// A port on 127.0.0.1 that both UDP and TCP can bind right now (dnsmasq binds both).
// Drawn below the kernel's ephemeral range: a port from bind(0) is also the kind the
// kernel gives outgoing connections, and under the sanitizer suites thousands of those
// from tests running alongside took the TCP side of it before dnsmasq could. Another test
// drawing the same number is the race left, which callers cover by retrying. 0 if none.
inline std::uint16_t free_dns_port() {
  int ephemeral_low = 32768;
  std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> ephemeral_low;
  constexpr int kLowest = 10000;
  const bool below = ephemeral_low > kLowest + 1000;
  std::mt19937 draw{std::random_device{}()};
  std::uniform_int_distribution<int> in_range(kLowest, ephemeral_low - 1);
  for (int attempt = 0; attempt < 200; ++attempt) {
    // Where the range leaves no room below it, the kernel's choice is the fallback.
    std::uint16_t port = below ? static_cast<std::uint16_t>(in_range(draw)) : 0;
    if (!below && !bind_loopback(SOCK_DGRAM, port)) continue;
    std::uint16_t udp = port, tcp = port;
    if (bind_loopback(SOCK_DGRAM, udp) && bind_loopback(SOCK_STREAM, tcp)) return port;
  }
  return 0;
}

}  // namespace echorelay::test
