// The probe: sends one line, expects the same line back within the timeout.
#include "app/probe.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <chrono>
#include <cstdio>
#include <string>

#include "config/config.hpp"
#include "net/endpoint.hpp"
#include "net/fd.hpp"
#include "net/socket_options.hpp"

namespace echorelay::app {

namespace {

using Clock = std::chrono::steady_clock;

int fail(const std::string& message) {
  std::fprintf(stderr, "probe: %s\n", message.c_str());
  return 1;
}

int usage(const std::string& message) {
  std::fprintf(stderr, "probe: %s\n", message.c_str());
  return kProbeUsage;
}

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left > 0 ? static_cast<int>(left) : 0;
}

bool wait_for(int fd, short events, Clock::time_point deadline) {
  pollfd p{fd, events, 0};
  return ::poll(&p, 1, remaining_ms(deadline)) == 1;
}

}  // namespace

int run_probe(const ProbeOptions& options) {
  auto timeout = config::parse_duration(options.timeout);
  if (!timeout) return usage("--timeout: " + timeout.error());
  if (options.framing != "line" && options.framing != "length-prefixed" && options.framing != "raw") {
    return usage("--framing: \"" + options.framing + "\" is not one of line, length-prefixed or raw");
  }
  const auto deadline = Clock::now() + *timeout;

  const std::string& address = options.address;
  const auto scheme_end = address.find("://");
  if (scheme_end == std::string::npos) return usage("address must start with tcp://, udp:// or unix://");
  const std::string scheme = address.substr(0, scheme_end);
  const std::string rest = address.substr(scheme_end + 3);
  if (scheme != "tcp" && scheme != "udp" && scheme != "unix") return usage("unknown scheme \"" + scheme + "\"");
  auto endpoint = net::parse_endpoint(rest);
  if (!endpoint) return usage(endpoint.error());
  if ((scheme == "unix") != endpoint->is_unix()) return usage("address does not fit scheme " + scheme);
  auto addr = net::to_sockaddr(*endpoint);
  if (!addr) return usage(addr.error());

  const bool datagram = scheme == "udp";
  net::Fd fd(::socket(addr->family(), (datagram ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return fail("socket: " + net::errno_text(errno));
  if (::connect(fd.get(), addr->get(), addr->len) != 0 && errno != EINPROGRESS) {
    return fail("connect " + rest + ": " + net::errno_text(errno));
  }
  if (!wait_for(fd.get(), POLLOUT, deadline)) return fail("connect " + rest + ": timed out");
  int err = 0;
  socklen_t len = sizeof err;
  ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
  if (err) return fail("connect " + rest + ": " + net::errno_text(err));

  // A datagram is its own frame; a stream request is framed as the listener expects.
  const std::string payload = "echorelay-probe " + std::to_string(::getpid());
  std::string request;
  if (datagram || options.framing == "line") {
    request = payload + "\n";
  } else if (options.framing == "length-prefixed") {
    const auto n = static_cast<std::uint32_t>(payload.size());
    request = {static_cast<char>(n >> 24), static_cast<char>(n >> 16), static_cast<char>(n >> 8), static_cast<char>(n)};
    request += payload;
  } else {
    request = payload;
  }
  if (::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
    return fail("send: " + net::errno_text(errno));
  }
  std::string reply;
  char buf[512];
  while (reply.size() < request.size()) {
    if (!wait_for(fd.get(), POLLIN, deadline)) return fail("no echo within " + options.timeout);
    const ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) return fail(n == 0 ? "connection closed before the echo" : "recv: " + net::errno_text(errno));
    reply.append(buf, static_cast<std::size_t>(n));
  }
  if (reply != request) return fail("echo differs from the request");
  std::printf("ok %s\n", address.c_str());
  return 0;
}

}  // namespace echorelay::app
