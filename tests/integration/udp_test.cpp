// UDP echo: every datagram answered with exactly its bytes (empty and binary ones too),
// many concurrent sources through a worker pool and several SO_REUSEPORT sockets,
// deny_source_ports and rate_limit (refusals counted). Loss on loopback only happens
// when buffers overflow, so senders keep a small window of datagrams in flight.
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <thread>

#include "harness.hpp"
#include "relay_support.hpp"

namespace echorelay::test {
namespace {

TEST(Udp, EchoesExactBytesIncludingEmptyDatagram) {
  Daemon daemon(R"(
[[listener]]
name = "udp"
protocol = "udp"
address = "127.0.0.2:0"
handler = "echo"
)");
  ASSERT_TRUE(daemon.start());
  EXPECT_EQ(daemon.protocol("udp"), "udp");
  Fd s = udp_connect(daemon.address("udp"));
  ASSERT_TRUE(s);

  std::string binary;
  for (int i = 0; i < 256; ++i) binary += static_cast<char>(i);
  for (const std::string& payload : {std::string("hello"), std::string(), binary, std::string(1400, 'q'),
                                     std::string(60000, '\x5a')}) {
    ASSERT_TRUE(udp_send(s.get(), payload));
    auto reply = udp_recv(s.get());
    ASSERT_TRUE(reply.has_value()) << "no reply to a " << payload.size() << "-byte datagram";
    EXPECT_TRUE(*reply == payload) << "reply of " << reply->size() << " bytes to " << payload.size();
  }
}

TEST(Udp, EchoesOverIpv6) {
  Daemon daemon(R"(
[[listener]]
name = "udp6"
protocol = "udp"
address = "[::1]:0"
handler = "echo"
)");
  ASSERT_TRUE(daemon.start());
  Fd s = udp_connect(daemon.address("udp6"));
  ASSERT_TRUE(s);
  ASSERT_TRUE(udp_send(s.get(), "six"));
  EXPECT_EQ(udp_recv(s.get()), std::optional<std::string>("six"));
}

TEST(Udp, ThirtyTwoConcurrentSourcesAreAllAnsweredExactly) {
  Daemon daemon(R"(
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "udp"
protocol = "udp"
address = "127.0.0.2:0"
handler = "echo"
workers = 4
sockets = 2
recv_buffer = "4MiB"
)");
  ASSERT_TRUE(daemon.start());
  const std::string target = daemon.address("udp");
  constexpr int kSources = 32;
  constexpr int kPerSource = 100;
  constexpr int kWindow = 4;

  std::vector<Fd> sockets;
  for (int i = 0; i < kSources; ++i) {
    sockets.push_back(udp_connect(target));
    ASSERT_TRUE(sockets.back());
  }
  std::atomic<int> failures{0};
  std::vector<std::string> errors(kSources);
  std::vector<std::thread> threads;
  for (int src = 0; src < kSources; ++src) {
    threads.emplace_back([&, src] {
      int fd = sockets[static_cast<std::size_t>(src)].get();
      std::multiset<std::string> outstanding;
      int sent = 0;
      int received = 0;
      while (received < kPerSource) {
        while (sent < kPerSource && static_cast<int>(outstanding.size()) < kWindow) {
          // Distinct per source and sequence, with a varying length.
          std::string payload = "src" + std::to_string(src) + "-seq" + std::to_string(sent) + "-" +
                                std::string(static_cast<std::size_t>(sent % 37), static_cast<char>('a' + src % 26));
          if (::send(fd, payload.data(), payload.size(), 0) != static_cast<ssize_t>(payload.size())) {
            errors[static_cast<std::size_t>(src)] = "send failed";
            ++failures;
            return;
          }
          outstanding.insert(payload);
          ++sent;
        }
        auto reply = udp_recv(fd, kIoTimeout);
        if (!reply) {
          errors[static_cast<std::size_t>(src)] =
              "timed out with " + std::to_string(outstanding.size()) + " outstanding after " +
              std::to_string(received) + " replies";
          ++failures;
          return;
        }
        auto it = outstanding.find(*reply);
        if (it == outstanding.end()) {
          errors[static_cast<std::size_t>(src)] = "unexpected reply '" + reply->substr(0, 64) + "'";
          ++failures;
          return;
        }
        outstanding.erase(it);
        ++received;
      }
      // Exactly one reply per datagram: nothing further may arrive.
      if (auto extra = udp_recv(fd, 50ms)) {
        errors[static_cast<std::size_t>(src)] = "extra reply '" + extra->substr(0, 64) + "'";
        ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kSources; ++i) EXPECT_EQ(errors[static_cast<std::size_t>(i)], "") << "source " << i;
  EXPECT_EQ(failures.load(), 0);
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_datagrams_received_total", {{"listener", "udp"}},
                          kSources * kPerSource));
}

TEST(Udp, DatagramsFromDeniedSourcePortAreNotAnswered) {
  // The denied port is one we own: bind first, then write it into the config.
  Fd denied = udp_bind("127.0.0.1:0");
  ASSERT_TRUE(denied);
  std::uint16_t denied_port = local_port(denied.get());
  Daemon daemon(R"(
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "udp"
protocol = "udp"
address = "127.0.0.2:0"
handler = "echo"
deny_source_ports = [7, 19, )" + std::to_string(denied_port) + R"(]
)");
  ASSERT_TRUE(daemon.start());
  const std::string target = daemon.address("udp");

  ASSERT_TRUE(udp_send_to(denied.get(), target, "from a denied port"));
  // Once the refusal is counted the datagram has been handled; no reply may follow it.
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_refused_total", {{"listener", "udp"}, {"reason", "denied_port"}},
                          1));
  Fd allowed = udp_connect(target);
  ASSERT_TRUE(allowed);
  ASSERT_TRUE(udp_send(allowed.get(), "from an allowed port"));
  EXPECT_EQ(udp_recv(allowed.get()), std::optional<std::string>("from an allowed port"));
  EXPECT_FALSE(udp_recv(denied.get(), 200ms).has_value()) << "denied source got a reply";
}

TEST(Udp, DatagramLargerThanMaxDatagramIsDroppedNotTruncated) {
  Daemon daemon(R"(
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "udp"
protocol = "udp"
address = "127.0.0.2:0"
handler = "echo"
max_datagram = 512
)");
  ASSERT_TRUE(daemon.start());
  Fd s = udp_connect(daemon.address("udp"));
  ASSERT_TRUE(s);
  std::string fits(512, 'f');
  ASSERT_TRUE(udp_send(s.get(), fits));
  EXPECT_EQ(udp_recv(s.get()), std::optional<std::string>(fits));

  // An echo of a cut datagram would not be "exactly the bytes received": no reply at all.
  ASSERT_TRUE(udp_send(s.get(), std::string(513, 'o')));
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_datagrams_dropped_total",
                          {{"listener", "udp"}, {"reason", "truncated"}}, 1));
  ASSERT_TRUE(udp_send(s.get(), "small"));
  EXPECT_EQ(udp_recv(s.get()), std::optional<std::string>("small"));
  EXPECT_FALSE(udp_recv(s.get(), 200ms).has_value()) << "a reply to the oversized datagram arrived";
}

// Every datagram sent to the "udp" listener is either answered or counted as
// rate_limited: reads the replies on `clients` until the two add up to `sent`, and
// returns how many were answered.
int replies_once_settled(const Daemon& daemon, const std::vector<int>& clients, int sent) {
  int replies = 0;
  std::optional<double> refused;
  const bool settled = wait_until([&] {
    for (int fd : clients)
      while (udp_recv(fd, 0ms)) ++replies;
    refused = fetch_metric(daemon.admin(), "echorelay_refused_total", {{"listener", "udp"}, {"reason", "rate_limited"}});
    return refused && replies + *refused == sent;
  });
  EXPECT_TRUE(settled) << replies << " replies, refused " << refused.value_or(-1) << " of " << sent;
  return replies;
}

TEST(Udp, RateLimitRefusesDatagramsBeyondTheRatePerSource) {
  Daemon daemon(R"(
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "udp"
protocol = "udp"
address = "127.0.0.2:0"
handler = "echo"
rate_limit = 5
)");
  ASSERT_TRUE(daemon.start());
  const std::string target = daemon.address("udp");
  Fd s = udp_connect(target);
  ASSERT_TRUE(s);
  constexpr int kBurst = 50;
  for (int i = 0; i < kBurst; ++i) ASSERT_TRUE(udp_send(s.get(), "burst " + std::to_string(i)));
  // 50 datagrams in a few milliseconds at 5/s: most are refused.
  const int replies = replies_once_settled(daemon, {s.get()}, kBurst);
  EXPECT_GE(replies, 1);
  EXPECT_LE(replies, 15);

  // Another source address has its own budget (the limit is per address, whatever
  // the port, so the other source binds a different loopback address).
  Fd other = udp_connect(target, "127.0.0.7:0");
  ASSERT_TRUE(other);
  ASSERT_TRUE(udp_send(other.get(), "other source"));
  EXPECT_EQ(udp_recv(other.get()), std::optional<std::string>("other source"));
}

// With sockets = 4 the kernel spreads one host's source ports over four sockets and
// their four reader threads; the rate still holds for the host as a whole.
TEST(Udp, RateLimitHoldsPerHostAcrossReusePortSockets) {
  Daemon daemon(R"(
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "udp"
protocol = "udp"
address = "127.0.0.2:0"
handler = "echo"
sockets = 4
rate_limit = 5
)");
  ASSERT_TRUE(daemon.start());
  const std::string target = daemon.address("udp");
  constexpr int kPorts = 16;
  constexpr int kPerPort = 4;
  std::vector<Fd> clients;
  for (int p = 0; p < kPorts; ++p) {
    clients.push_back(udp_connect(target));
    ASSERT_TRUE(clients.back());
  }
  for (int i = 0; i < kPerPort; ++i)
    for (auto& c : clients) ASSERT_TRUE(udp_send(c.get(), "from one host " + std::to_string(i)));
  std::vector<int> fds;
  for (auto& c : clients) fds.push_back(c.get());
  const int replies = replies_once_settled(daemon, fds, kPorts * kPerPort);
  // A second's burst (5) plus what refills while the 64 datagrams arrive; a limit per
  // socket would let about 4 x 5 through.
  EXPECT_GE(replies, 1);
  EXPECT_LE(replies, 10) << "the limit was applied per socket, not per host";
}

// A client behind a slow link (8 Mbit/s on the daemon's way out to it, a queue longer
// than the listener's send buffer) floods the echo with 1,000-byte datagrams: the
// replies fill the socket's send buffer and sendmmsg meets EAGAIN. The worker drops
// and counts what does not fit (send_failed) instead of waiting for room, so with one
// worker a client on loopback is answered meanwhile. Every datagram the slow client
// sent is answered or counted, and the answers it gets are its own bytes.
TEST(FaultUdp, RepliesASlowLinkCannotTakeAreDroppedAndCountedWhileOthersAreAnswered) {
  VethNamespaces ns;
  REQUIRE_NETNS(ns);
  ASSERT_TRUE(ns.shape("8mbit", "16mb"));
  Daemon::Options options;
  options.netns = ns.daemon_side();
  Daemon daemon(R"(
[daemon]
workers = 1

[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "udp"
protocol = "udp"
address = "0.0.0.0:0"
handler = "echo"
send_buffer = 65536
recv_buffer = 8388608
rate_limit = 0
)",
                options);
  ASSERT_TRUE(daemon.start());
  const std::string admin = daemon.admin();
  const std::string port = std::to_string(daemon.port("udp"));
  Fd slow = run_in_netns(ns.peer_side(), [&] { 
    return udp_connect(std::string(VethNamespaces::kDaemonIp) + ":" + port, std::string(VethNamespaces::kPeerIp) + ":0");
  });
  Fd fast = run_in_netns(ns.daemon_side(), [&] { return udp_connect("127.0.0.1:" + port); });
  ASSERT_TRUE(slow && fast);
  const int big = 16 << 20;
  ASSERT_EQ(::setsockopt(slow.get(), SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big), 0) << std::strerror(errno);

  constexpr int kFlood = 4000;
  constexpr int kPings = 200;
  auto payload = [](int i) {
    std::string p = std::to_string(i);
    p.resize(1000, 'f');
    return p;
  };
  // The pinger shares the listener's socket, so its answers meet the same full send
  // buffer and some are dropped too: like any UDP client it sends again after 100 ms.
  int pings_sent = 0;
  int ping_replies = 0;  // every answer that came back, late ones included
  int pings_answered = 0;
  std::thread pinger([&] {
    for (int i = 0; i < kPings; ++i) {
      const std::string ping = "ping " + std::to_string(i);
      for (int attempt = 0; attempt < 50 && pings_answered == i; ++attempt) {
        if (!udp_send(fast.get(), ping)) return;
        ++pings_sent;
        while (auto reply = udp_recv(fast.get(), 100ms)) {
          ++ping_replies;
          if (*reply == ping) {
            ++pings_answered;
            break;
          }
        }
      }
      if (pings_answered == i) return;
    }
  });
  for (int i = 0; i < kFlood; ++i) ASSERT_TRUE(udp_send(slow.get(), payload(i)));
  pinger.join();
  EXPECT_EQ(pings_answered, kPings) << "the client on loopback was not answered while the link was full";
  while (udp_recv(fast.get(), 300ms)) ++ping_replies;

  const Labels listener{{"listener", "udp"}};
  EXPECT_TRUE(wait_metric_in(ns.daemon_side(), admin, "echorelay_datagrams_received_total", listener, kFlood + pings_sent));
  auto dropped = [&](const char* reason) {
    return metric_in(ns.daemon_side(), admin, "echorelay_datagrams_dropped_total", {{"listener", "udp"}, {"reason", reason}}, 0);
  };
  const double send_failed = dropped("send_failed");
  const double queue_full = dropped("queue_full");
  const double answered = metric_in(ns.daemon_side(), admin, "echorelay_requests_total", listener, 0);
  EXPECT_GT(send_failed, 0) << "the link never filled the send buffer: nothing was tested";
  EXPECT_EQ(answered + send_failed + queue_full, kFlood + pings_sent)
      << "answered " << answered << " + send_failed " << send_failed << " + queue_full " << queue_full;

  // What the daemon sent drains through the slow link and arrives intact.
  const int slow_answered = static_cast<int>(answered) - ping_replies;
  std::set<std::string> expected;
  for (int i = 0; i < kFlood; ++i) expected.insert(payload(i));
  int got = 0;
  while (got < slow_answered) {
    auto reply = udp_recv(slow.get(), 5000ms);
    if (!reply) break;
    EXPECT_EQ(expected.count(*reply), 1u) << "a reply that is no datagram the slow client sent";
    ++got;
  }
  EXPECT_EQ(got, slow_answered) << "answers counted as sent that never arrived";
  EXPECT_FALSE(udp_recv(slow.get(), 300ms)) << "more answers than the daemon counted";
  std::printf("[ udp ] slow link: %d sent, %d answered; %.0f send_failed, %.0f queue_full in all; %d pings answered "
              "after %d sends\n",
              kFlood, slow_answered, send_failed, queue_full, pings_answered, pings_sent);
}

}  // namespace
}  // namespace echorelay::test
