// The UDP mirror (udp::make_mirror_server) driven over loopback sockets the tests bind
// themselves: fan-out to every collector, exact 1-in-N sampling, allow_sources, one-way (collectors' replies
// never reach the exporter), a dead collector not slowing the others, and per-upstream
// counters. Names, preserve_source and hot restarts are tested against the real binary
// (tests/integration/mirror_test.cpp).
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <future>
#include <set>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "net/endpoint.hpp"
#include "obs/metrics.hpp"
#include "udp/udp_mirror.hpp"
#include "udp_support.hpp"

namespace echorelay::udp {
namespace {

using namespace test_support;
using net::Fd;

config::Listener mirror_listener(const std::vector<std::pair<std::uint16_t, std::uint32_t>>& collectors) {
  config::Listener l;
  l.name = "mirror-test";
  l.protocol = config::Protocol::Udp;
  l.handler = config::Handler::Mirror;
  l.deny_source_ports.clear();
  l.rate_limit = 0;
  for (const auto& [port, sample] : collectors) {
    l.upstreams.push_back(*net::parse_endpoint("127.0.0.1:" + std::to_string(port)));
    l.upstream_samples.push_back(sample);
  }
  return l;
}

// A collector that can take a burst: as root the buffer may exceed rmem_max.
Fd collector() {
  Fd fd = bound_socket("127.0.0.1");
  const int bytes = 8 << 20;
  if (setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof bytes) != 0) {
    setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
  }
  return fd;
}

std::vector<std::string> drain(int fd, std::size_t expected) {
  std::vector<std::string> got;
  while (auto d = receive(fd, got.size() < expected ? kIoTimeout : std::chrono::milliseconds(100))) got.push_back(*d);
  return got;
}

struct ServedMirror {
  ServedMirror(const config::Listener& listener, std::vector<int> sockets, obs::Registry& metrics)
      : loops(1), server(make_mirror_server(listener, std::move(sockets), metrics, loops.refs(), nullptr, control)) {
    server->start();
    loops.run();
  }
  ~ServedMirror() {
    std::promise<void> done;
    server->stop(false, [&done] { done.set_value(); });
    done.get_future().wait();
  }
  boost::asio::io_context control;
  Loops loops;
  std::unique_ptr<DatagramServer> server;
};

TEST(UdpMirror, EveryCollectorGetsEveryDatagramAndASampledOneExactlyOneInN) {
  Fd a = collector(), b = collector(), c = collector();
  Fd server = bound_socket("127.0.0.1");
  obs::Registry metrics;
  const auto listener = mirror_listener({{local_address(a.get()).port(), 1},
                                         {local_address(b.get()).port(), 1},
                                         {local_address(c.get()).port(), 10}});
  ServedMirror mirror(listener, {server.get()}, metrics);

  Fd exporter = bound_socket("127.0.0.1");
  const Address to = local_address(server.get());
  constexpr int kCount = 1000;
  std::vector<std::string> sent;
  for (int i = 0; i < kCount; ++i) {
    sent.push_back("flow record " + std::to_string(i) + std::string(static_cast<std::size_t>(i % 200), 'x'));
    send_to(exporter.get(), sent.back(), to);
    // Paced so that nothing overflows the daemon's receive buffer.
    if (i % 64 == 63) {
      ASSERT_TRUE(wait_until([&] { return metrics.listener("mirror-test").datagrams_received >= i + 1U; }));
    }
  }
  const auto got_a = drain(a.get(), kCount);
  const auto got_b = drain(b.get(), kCount);
  const auto got_c = drain(c.get(), kCount / 10);
  EXPECT_EQ(got_a, sent);
  EXPECT_EQ(got_b, sent);
  // One worker, one sender: the 1st, 11th, 21st ... in order.
  std::vector<std::string> every_tenth;
  for (int i = 0; i < kCount; i += 10) every_tenth.push_back(sent[static_cast<std::size_t>(i)]);
  EXPECT_EQ(got_c, every_tenth);

  const auto label = [&](const Fd& fd) { return "127.0.0.1:" + std::to_string(local_address(fd.get()).port()); };
  auto& ca = metrics.upstream("mirror-test", label(a));
  auto& cc = metrics.upstream("mirror-test", label(c));
  EXPECT_EQ(ca.datagrams_sent.load(), static_cast<std::uint64_t>(kCount));
  EXPECT_EQ(cc.datagrams_sent.load(), static_cast<std::uint64_t>(kCount / 10));
  EXPECT_EQ(cc.sampled_out.load(), static_cast<std::uint64_t>(kCount - kCount / 10));
  std::uint64_t bytes = 0;
  for (const auto& s : sent) bytes += s.size();
  EXPECT_EQ(ca.bytes_sent.load(), bytes);
  EXPECT_EQ(metrics.listener("mirror-test").datagrams_received.load(), static_cast<std::uint64_t>(kCount));
  const std::string text = metrics.render_prometheus();
  EXPECT_NE(text.find("echorelay_mirror_datagrams_sent_total{listener=\"mirror-test\",upstream=\"" + label(c) +
                      "\"} 100\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("echorelay_mirror_sampled_out_total{listener=\"mirror-test\",upstream=\"" + label(c) +
                      "\"} 900\n"),
            std::string::npos);
  EXPECT_FALSE(receive(exporter.get(), std::chrono::milliseconds(50))) << "a mirror answered the exporter";
}

TEST(UdpMirror, RepliesFromCollectorsNeverReachTheExporterAndADeadOneCostsTheOthersNothing) {
  Fd live = collector();
  // A port nobody listens on: each copy comes back as ICMP port unreachable.
  std::uint16_t dead_port = 0;
  {
    Fd gone = bound_socket("127.0.0.1");
    dead_port = local_address(gone.get()).port();
  }
  Fd server = bound_socket("127.0.0.1");
  obs::Registry metrics;
  ServedMirror mirror(mirror_listener({{dead_port, 1}, {local_address(live.get()).port(), 1}}), {server.get()}, metrics);

  Fd exporter = bound_socket("127.0.0.1");
  constexpr int kCount = 200;
  for (int i = 0; i < kCount; ++i) {
    send_to(exporter.get(), "record " + std::to_string(i), local_address(server.get()));
    if (i % 32 == 31) {
      ASSERT_TRUE(wait_until([&] { return metrics.listener("mirror-test").datagrams_received >= i + 1U; }));
    }
  }
  const auto got = drain(live.get(), kCount);
  ASSERT_EQ(got.size(), static_cast<std::size_t>(kCount));
  for (int i = 0; i < kCount; ++i) EXPECT_EQ(got[static_cast<std::size_t>(i)], "record " + std::to_string(i));

  // The live collector answers the mirror's copies; none of it reaches the exporter,
  // and copies still flow after the answers were read and dropped.
  send_to(exporter.get(), "one more", local_address(server.get()));
  Address mirror_side;
  ASSERT_EQ(receive(live.get(), kIoTimeout, &mirror_side), std::optional<std::string>("one more"));
  for (int i = 0; i < 50; ++i) send_to(live.get(), "collector reply " + std::to_string(i), mirror_side);
  send_to(exporter.get(), "after the replies", local_address(server.get()));
  EXPECT_EQ(receive(live.get()), std::optional<std::string>("after the replies"));
  auto& dead = metrics.upstream("mirror-test", "127.0.0.1:" + std::to_string(dead_port));
  ASSERT_TRUE(wait_until([&] { return dead.mirror_errors.load() > 0; }))
      << "ICMP port unreachable was not counted for the dead collector";
  // Every copy was sent or refused by a pending error; an error read on the socket's
  // receive side belongs to a copy already counted as sent.
  EXPECT_LE(dead.datagrams_sent.load(), static_cast<std::uint64_t>(kCount + 2));
  EXPECT_GE(dead.datagrams_sent.load() + dead.mirror_errors.load(), static_cast<std::uint64_t>(kCount + 2));
  EXPECT_FALSE(receive(exporter.get(), std::chrono::milliseconds(50)));
}

TEST(UdpMirror, AllowSourcesDropsAndCountsTheRest) {
  Fd sink = collector();
  Fd server = bound_socket("0.0.0.0");
  obs::Registry metrics;
  auto listener = mirror_listener({{local_address(sink.get()).port(), 1}});
  listener.allow_sources = {*net::parse_cidr("127.0.0.2/32")};
  ServedMirror mirror(listener, {server.get()}, metrics);

  const std::uint16_t port = local_address(server.get()).port();
  Fd outsider = bound_socket("127.0.0.1");
  Fd insider = bound_socket("127.0.0.2");
  for (int i = 0; i < 5; ++i) send_to(outsider.get(), "outside " + std::to_string(i), make_address("127.0.0.1", port));
  for (int i = 0; i < 3; ++i) send_to(insider.get(), "inside " + std::to_string(i), make_address("127.0.0.1", port));
  const auto got = drain(sink.get(), 3);
  EXPECT_EQ(got, (std::vector<std::string>{"inside 0", "inside 1", "inside 2"}));
  const auto& counters = metrics.listener("mirror-test");
  EXPECT_EQ(dropped(counters, obs::Drop::SourceNotAllowed), 5U);
  EXPECT_EQ(counters.refused[static_cast<unsigned>(obs::Refuse::SourceNotAllowed)].load(), 5U);
  EXPECT_EQ(counters.datagrams_received.load(), 8U);
}

}  // namespace
}  // namespace echorelay::udp
