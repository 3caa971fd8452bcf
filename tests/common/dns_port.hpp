// A port for a test's own DNS server, shared by the unit and integration suites.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <random>

namespace echorelay::test {

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
  auto binds = [](int type, std::uint16_t port) {
    const int fd = ::socket(AF_INET, type | SOCK_CLOEXEC, 0);
    if (fd < 0) return std::uint16_t{0};
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(port);
    socklen_t len = sizeof sin;
    std::uint16_t bound = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len) == 0) {
      bound = ntohs(sin.sin_port);
    }
    ::close(fd);
    return bound;
  };
  for (int attempt = 0; attempt < 200; ++attempt) {
    // Where the range leaves no room below it, the kernel's choice is the fallback.
    const std::uint16_t port = below ? static_cast<std::uint16_t>(in_range(draw)) : binds(SOCK_DGRAM, 0);
    if (port != 0 && binds(SOCK_DGRAM, port) == port && binds(SOCK_STREAM, port) == port) return port;
  }
  return 0;
}

}  // namespace echorelay::test
