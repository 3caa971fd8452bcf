// Helpers the UDP unit tests (udp_echo_test.cpp, udp_relay_test.cpp) share: addresses,
// loopback sockets the tests bind themselves, send/receive with timeouts, polling waits.
// Header-only (inline); failures are reported through gtest assertions.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#include <optional>
#include <string>

#include "net/fd.hpp"
#include "net/poller.hpp"
#include "obs/metrics.hpp"

namespace echorelay::udp::test_support {

using namespace std::chrono_literals;

inline constexpr auto kIoTimeout = 5s;

struct Address {
  sockaddr_storage storage{};
  socklen_t len = 0;
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
  std::uint16_t port() const {
    return ntohs(storage.ss_family == AF_INET ? reinterpret_cast<const sockaddr_in&>(storage).sin_port
                                              : reinterpret_cast<const sockaddr_in6&>(storage).sin6_port);
  }
  std::string ip() const {
    char text[INET6_ADDRSTRLEN] = {};
    if (storage.ss_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(storage).sin_addr, text, sizeof text);
    } else {
      inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(storage).sin6_addr, text, sizeof text);
    }
    return text;
  }
};

inline Address make_address(const std::string& ip, std::uint16_t port) {
  Address a;
  if (ip.find(':') == std::string::npos) {
    auto& in = reinterpret_cast<sockaddr_in&>(a.storage);
    in.sin_family = AF_INET;
    in.sin_port = htons(port);
    EXPECT_EQ(inet_pton(AF_INET, ip.c_str(), &in.sin_addr), 1) << ip;
    a.len = sizeof in;
  } else {
    auto& in6 = reinterpret_cast<sockaddr_in6&>(a.storage);
    in6.sin6_family = AF_INET6;
    in6.sin6_port = htons(port);
    EXPECT_EQ(inet_pton(AF_INET6, ip.c_str(), &in6.sin6_addr), 1) << ip;
    a.len = sizeof in6;
  }
  return a;
}

inline Address local_address(int fd) {
  Address a;
  a.len = sizeof a.storage;
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&a.storage), &a.len), 0);
  return a;
}

// A non-blocking UDP socket bound to ip:port, with a receive buffer big enough that
// test bursts never overflow in the kernel.
inline net::Fd bound_socket(const std::string& ip, std::uint16_t port = 0, bool reuse_port = false) {
  const Address a = make_address(ip, port);
  net::Fd fd(socket(a.storage.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  EXPECT_TRUE(fd.valid()) << std::strerror(errno);
  const int on = 1;
  if (reuse_port) {
    EXPECT_EQ(setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &on, sizeof on), 0);
  }
  const int rcvbuf = 4 << 20;
  if (setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) != 0) {
    setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  }
  EXPECT_EQ(bind(fd.get(), a.get(), a.len), 0) << ip << ": " << std::strerror(errno);
  return fd;
}

inline void send_to(int fd, const std::string& payload, const Address& to) {
  ASSERT_EQ(sendto(fd, payload.data(), payload.size(), 0, to.get(), to.len), static_cast<ssize_t>(payload.size()))
      << std::strerror(errno);
}

// One datagram within `timeout`, or nothing.
inline std::optional<std::string> receive(int fd, std::chrono::milliseconds timeout = kIoTimeout,
                                          Address* from = nullptr) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, static_cast<int>(timeout.count())) != 1) return std::nullopt;
  std::string buffer(70000, '\0');
  Address sender;
  sender.len = sizeof sender.storage;
  const ssize_t n = recvfrom(fd, buffer.data(), buffer.size(), MSG_DONTWAIT,
                             reinterpret_cast<sockaddr*>(&sender.storage), &sender.len);
  if (n < 0) return std::nullopt;
  buffer.resize(static_cast<std::size_t>(n));
  if (from != nullptr) *from = sender;
  return buffer;
}

// Polls a condition; the short waits are between checks, not instead of them.
inline bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout = kIoTimeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    poll(nullptr, 0, 1);
  }
  return true;
}

inline std::uint64_t dropped(const obs::ListenerCounters& c, obs::Drop d) {
  return c.dropped[static_cast<unsigned>(d)].load();
}

// SAFETY: the sender is pinned to the loopback interface with TTL 0.
inline net::Fd loopback_multicast_sender() {
  net::Fd fd = bound_socket("127.0.0.1");
  in_addr lo{};
  lo.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(setsockopt(fd.get(), IPPROTO_IP, IP_MULTICAST_IF, &lo, sizeof lo), 0);
  const int ttl = 0;
  EXPECT_EQ(setsockopt(fd.get(), IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl), 0);
  const int loop = 1;
  EXPECT_EQ(setsockopt(fd.get(), IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop), 0);
  return fd;
}

// The daemon's workers in miniature: loops of an io_context and a Poller, each on its
// own thread once run() is called.
class Loops {
 public:
  explicit Loops(unsigned count) {
    for (unsigned i = 0; i < count; ++i) loops_.push_back(std::make_unique<Loop>());
  }
  ~Loops() {
    for (auto& l : loops_) {
      l->ctx.stop();
      if (l->thread.joinable()) l->thread.join();
    }
  }
  std::vector<net::LoopRef> refs() {
    std::vector<net::LoopRef> out;
    for (auto& l : loops_) out.push_back({&l->ctx, &l->poller});
    return out;
  }
  void run() {
    for (auto& l : loops_) {
      l->thread = std::thread([&ctx = l->ctx] {
        auto busy = boost::asio::make_work_guard(ctx);
        ctx.run();
      });
    }
  }

 private:
  struct Loop {
    boost::asio::io_context ctx{1};
    net::Poller poller{ctx};
    std::thread thread;
  };
  std::vector<std::unique_ptr<Loop>> loops_;
};

}  // namespace echorelay::udp::test_support
