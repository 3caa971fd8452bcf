// The UDP echo server (make_echo_server) and join_multicast driven over real loopback
// sockets that the tests bind themselves. Multicast never leaves the host: every sender pins IP_MULTICAST_IF to
// 127.0.0.1 with TTL 0, or runs in a network namespace the test creates.
#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "config/config.hpp"
#include "net/fd.hpp"
#include "obs/metrics.hpp"
#include "net/multicast.hpp"
#include "net/poller.hpp"
#include "udp/udp_echo.hpp"
#include "udp_support.hpp"

namespace echorelay::udp {
namespace {

using namespace std::chrono_literals;
using net::Fd;
using obs::Drop;
using obs::Refuse;
using namespace test_support;

std::string pattern(std::size_t size, unsigned seed) {
  std::string s(size, '\0');
  for (std::size_t i = 0; i < size; ++i) s[i] = static_cast<char>((i * 131 + seed * 7 + 1) & 0xff);
  return s;
}

config::Listener udp_listener(unsigned workers = 2) {
  config::Listener l;
  l.name = "udp-test";
  l.protocol = config::Protocol::Udp;
  l.workers = workers;
  l.queue = 1024;
  l.deny_source_ports.clear();
  return l;
}

// An echo server started on two worker loops of its own (running unless `run` is false);
// stop() returns once every worker has let go of the sockets.
struct ServedEcho {
  ServedEcho(const config::Listener& listener, std::vector<int> sockets, obs::ListenerCounters& counters,
             bool run = true)
      : loops(2), server(make_echo_server(listener, std::move(sockets), counters, loops.refs())) {
    server->start();
    if (run) loops.run();
  }
  void stop(bool sweep = false) {
    if (stopped) return;
    stopped = true;
    std::promise<void> done;
    server->stop(sweep, [&done] { done.set_value(); });
    done.get_future().wait();
  }
  Loops loops;
  std::unique_ptr<DatagramServer> server;
  bool stopped = false;
};

// Room in the socket's receive buffer for a burst sent before the workers read: a
// datagram the kernel drops there is counted (queue_full), which these tests must not see.
void make_room(int fd) {
  const int bytes = 4 << 20;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof bytes) != 0) {
    ASSERT_EQ(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes), 0);
  }
}

std::uint64_t refused(const obs::ListenerCounters& c, Refuse r) { return c.refused[static_cast<unsigned>(r)].load(); }
std::uint64_t all_drops(const obs::ListenerCounters& c) {
  std::uint64_t sum = 0;
  for (const auto& d : c.dropped) sum += d.load();
  return sum;
}

TEST(UdpEcho, EchoesExactBytesFromTheListeningAddress) {
  Fd server = bound_socket("127.0.0.1");
  const Address to = local_address(server.get());
  obs::ListenerCounters counters("udp-test");
  ServedEcho echo(udp_listener(), {server.get()}, counters);

  Fd client = bound_socket("127.0.0.1");
  const std::vector<std::size_t> sizes = {1, 7, 512, 1472, 9000, 65507};
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const std::string payload = pattern(sizes[i], static_cast<unsigned>(i));
    send_to(client.get(), payload, to);
    Address from;
    const auto reply = receive(client.get(), kIoTimeout, &from);
    ASSERT_TRUE(reply) << "no echo for " << sizes[i] << " bytes";
    EXPECT_EQ(*reply, payload);
    EXPECT_EQ(from.ip(), "127.0.0.1");
    EXPECT_EQ(from.port(), to.port());
    total += sizes[i];
  }
  ASSERT_TRUE(wait_until([&] { return counters.datagrams_sent.load() == sizes.size(); }));
  echo.stop();
  EXPECT_EQ(counters.datagrams_received.load(), sizes.size());
  EXPECT_EQ(counters.requests.load(), sizes.size());
  EXPECT_EQ(counters.bytes_received.load(), total);
  EXPECT_EQ(counters.bytes_sent.load(), total);
  EXPECT_EQ(all_drops(counters), 0U);
}

TEST(UdpEcho, EchoesZeroLengthDatagram) {
  Fd server = bound_socket("127.0.0.1");
  obs::ListenerCounters counters("udp-test");
  ServedEcho echo(udp_listener(1), {server.get()}, counters);

  Fd client = bound_socket("127.0.0.1");
  send_to(client.get(), "", local_address(server.get()));
  const auto reply = receive(client.get());
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->size(), 0U);
  ASSERT_TRUE(wait_until([&] { return counters.datagrams_sent.load() == 1; }));
  EXPECT_EQ(counters.requests.load(), 1U);
  EXPECT_EQ(counters.bytes_sent.load(), 0U);
  EXPECT_EQ(counters.bytes_received.load(), 0U);
}

TEST(UdpEcho, EchoesOverIpv6) {
  Fd server = bound_socket("::1");
  obs::ListenerCounters counters("udp-test");
  ServedEcho echo(udp_listener(1), {server.get()}, counters);

  Fd client = bound_socket("::1");
  const std::string payload = pattern(1200, 6);
  send_to(client.get(), payload, local_address(server.get()));
  Address from;
  const auto reply = receive(client.get(), kIoTimeout, &from);
  ASSERT_TRUE(reply);
  EXPECT_EQ(*reply, payload);
  EXPECT_EQ(from.ip(), "::1");
  ASSERT_TRUE(wait_until([&] { return counters.datagrams_sent.load() == 1; }));
  EXPECT_EQ(counters.bytes_sent.load(), payload.size());
}

// On a wildcard socket the reply must leave from the address the client wrote to,
// not whatever source routing picks, or a connected client never sees it.
TEST(UdpEcho, WildcardSocketRepliesFromTheAddressItWasSentTo) {
  Fd server = bound_socket("0.0.0.0");
  const std::uint16_t port = local_address(server.get()).port();
  obs::ListenerCounters counters("udp-test");
  ServedEcho echo(udp_listener(1), {server.get()}, counters);

  Fd client = bound_socket("127.0.0.1");
  for (const std::string ip : {"127.0.0.2", "127.0.0.1", "127.0.0.3"}) {
    send_to(client.get(), "hello " + ip, make_address(ip, port));
    Address from;
    const auto reply = receive(client.get(), kIoTimeout, &from);
    ASSERT_TRUE(reply) << ip;
    EXPECT_EQ(*reply, "hello " + ip);
    EXPECT_EQ(from.ip(), ip);
    EXPECT_EQ(from.port(), port);
  }
  ASSERT_TRUE(wait_until([&] { return counters.datagrams_sent.load() == 3; }));
}

TEST(UdpEcho, DualStackWildcardSocketRepliesToIpv4FromTheAddressItWasSentTo) {
  Fd server = bound_socket("::");
  const std::uint16_t port = local_address(server.get()).port();
  obs::ListenerCounters counters("udp-test");
  ServedEcho echo(udp_listener(1), {server.get()}, counters);

  Fd client = bound_socket("127.0.0.1");
  send_to(client.get(), "mapped", make_address("127.0.0.2", port));
  Address from;
  const auto reply = receive(client.get(), kIoTimeout, &from);
  ASSERT_TRUE(reply);
  EXPECT_EQ(*reply, "mapped");
  EXPECT_EQ(from.ip(), "127.0.0.2");
  EXPECT_EQ(from.port(), port);
  ASSERT_TRUE(wait_until([&] { return counters.datagrams_sent.load() == 1; }));
  EXPECT_EQ(counters.bytes_sent.load(), 6U);
}

TEST(UdpEcho, AnswersManySourcesConcurrentlyOverReusePortSockets) {
  Fd first = bound_socket("127.0.0.1", 0, true);
  const Address to = local_address(first.get());
  Fd second = bound_socket("127.0.0.1", to.port(), true);
  obs::ListenerCounters counters("udp-test");
  ServedEcho echo(udp_listener(4), {first.get(), second.get()}, counters);

  constexpr int kClients = 16;
  constexpr int kPerClient = 200;
  constexpr int kWindow = 8;  // in flight per client, so no kernel buffer can overflow
  std::atomic<int> echoed{0};
  std::vector<std::string> failures(kClients);
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      Fd sock = bound_socket("127.0.0.1");
      std::set<std::string> outstanding;
      int next = 0;
      int answered = 0;
      while (answered < kPerClient) {
        while (next < kPerClient && static_cast<int>(outstanding.size()) < kWindow) {
          std::string payload = "client " + std::to_string(c) + " seq " + std::to_string(next) + " " +
                                pattern(static_cast<std::size_t>(next % 97), static_cast<unsigned>(c));
          ++next;
          if (sendto(sock.get(), payload.data(), payload.size(), 0, to.get(), to.len) !=
              static_cast<ssize_t>(payload.size())) {
            failures[c] = "sendto failed";
            return;
          }
          outstanding.insert(std::move(payload));
        }
        const auto reply = receive(sock.get());
        if (!reply) {
          failures[c] = "timed out with " + std::to_string(outstanding.size()) + " outstanding";
          return;
        }
        if (outstanding.erase(*reply) != 1) {
          failures[c] = "unexpected reply: " + reply->substr(0, 40);
          return;
        }
        ++answered;
        echoed.fetch_add(1);
      }
    });
  }
  for (auto& t : clients) t.join();
  for (int c = 0; c < kClients; ++c) EXPECT_EQ(failures[c], "") << "client " << c;
  EXPECT_EQ(echoed.load(), kClients * kPerClient);
  ASSERT_TRUE(wait_until([&] { return counters.datagrams_sent.load() == kClients * kPerClient; }));
  echo.stop();
  EXPECT_EQ(counters.datagrams_received.load(), static_cast<std::uint64_t>(kClients * kPerClient));
  EXPECT_EQ(counters.requests.load(), static_cast<std::uint64_t>(kClients * kPerClient));
  EXPECT_EQ(counters.bytes_sent.load(), counters.bytes_received.load());
  EXPECT_EQ(all_drops(counters), 0U);
}

TEST(UdpEcho, DropsDatagramsFromDeniedSourcePorts) {
  Fd server = bound_socket("127.0.0.1");
  const Address to = local_address(server.get());
  Fd denied = bound_socket("127.0.0.1");
  Fd allowed = bound_socket("127.0.0.1");
  auto listener = udp_listener(1);
  listener.deny_source_ports = {7, 19, local_address(denied.get()).port()};
  obs::ListenerCounters counters("udp-test");
  ServedEcho echo(listener, {server.get()}, counters);

  for (int i = 0; i < 3; ++i) send_to(denied.get(), "loop " + std::to_string(i), to);
  send_to(allowed.get(), "fine", to);
  const auto reply = receive(allowed.get());
  ASSERT_TRUE(reply);
  EXPECT_EQ(*reply, "fine");
  // One reader takes the socket in order, so the denied ones were judged first.
  ASSERT_TRUE(wait_until([&] { return counters.datagrams_sent.load() == 1; }));
  EXPECT_EQ(dropped(counters, Drop::DeniedPort), 3U);
  EXPECT_EQ(refused(counters, Refuse::DeniedPort), 3U);
  EXPECT_EQ(counters.datagrams_received.load(), 4U);
  EXPECT_FALSE(receive(denied.get(), 50ms)) << "a denied source port was answered";
}

TEST(UdpEcho, RateLimitsEachSourceAddressSeparately) {
  Fd server = bound_socket("0.0.0.0");
  const std::uint16_t port = local_address(server.get()).port();
  auto listener = udp_listener(1);
  listener.rate_limit = 20;
  obs::ListenerCounters counters("udp-test");
  ServedEcho echo(listener, {server.get()}, counters);

  Fd flooder = bound_socket("127.0.0.1");
  Fd other = bound_socket("127.0.0.2");
  constexpr int kFlood = 100;
  for (int i = 0; i < kFlood; ++i) send_to(flooder.get(), "flood " + std::to_string(i), make_address("127.0.0.1", port));
  for (int i = 0; i < 5; ++i) send_to(other.get(), "other " + std::to_string(i), make_address("127.0.0.2", port));

  ASSERT_TRUE(wait_until([&] { return counters.datagrams_sent.load() + all_drops(counters) == kFlood + 5; }));
  const std::uint64_t limited = dropped(counters, Drop::RateLimited);
  const std::uint64_t flood_answered = kFlood - limited;
  // Burst = rate; the flood takes milliseconds, so refills add at most a few tokens.
  EXPECT_GE(flood_answered, 20U);
  EXPECT_LE(flood_answered, 30U);
  EXPECT_EQ(refused(counters, Refuse::RateLimited), limited);
  EXPECT_EQ(counters.datagrams_sent.load(), flood_answered + 5);

  std::uint64_t flood_replies = 0;
  while (receive(flooder.get(), flood_replies < flood_answered ? kIoTimeout : 50ms)) ++flood_replies;
  EXPECT_EQ(flood_replies, flood_answered);
  for (int i = 0; i < 5; ++i) {
    const auto reply = receive(other.get());
    ASSERT_TRUE(reply) << "the second source was limited by the first";
    EXPECT_EQ(*reply, "other " + std::to_string(i));
  }
}

TEST(UdpEcho, CountsQueueFullDrops) {
  Fd server = bound_socket("127.0.0.1");
  const Address to = local_address(server.get());
  Fd client = bound_socket("127.0.0.1");
  // Datagrams wait for a worker in the socket's receive buffer: the smallest one the
  // kernel allows holds a few, and the workers are not running while the burst arrives.
  const int tiny = 1;
  ASSERT_EQ(setsockopt(server.get(), SOL_SOCKET, SO_RCVBUF, &tiny, sizeof tiny), 0);
  auto listener = udp_listener(2);
  obs::ListenerCounters counters("udp-test");
  ServedEcho echo(listener, {server.get()}, counters, /*run=*/false);
  constexpr int kBurst = 200;
  std::set<std::string> sent;
  for (int i = 0; i < kBurst; ++i) {
    const std::string payload = "burst " + std::to_string(i);
    send_to(client.get(), payload, to);
    sent.insert(payload);
  }
  echo.loops.run();

  ASSERT_TRUE(wait_until([&] {
    return counters.datagrams_sent.load() + dropped(counters, Drop::QueueFull) == kBurst;
  }));
  const std::uint64_t answered = counters.datagrams_sent.load();
  EXPECT_GT(dropped(counters, Drop::QueueFull), 0U);
  EXPECT_GT(answered, 0U);
  EXPECT_EQ(counters.datagrams_received.load(), static_cast<std::uint64_t>(kBurst));
  std::uint64_t replies = 0;
  while (const auto reply = receive(client.get(), replies < answered ? kIoTimeout : 50ms)) {
    EXPECT_EQ(sent.count(*reply), 1U) << *reply;
    ++replies;
  }
  EXPECT_EQ(replies, answered);
}

TEST(UdpEcho, DropsDatagramsLargerThanMaxDatagram) {
  Fd server = bound_socket("127.0.0.1");
  const Address to = local_address(server.get());
  auto listener = udp_listener(1);
  listener.max_datagram = 100;
  obs::ListenerCounters counters("udp-test");
  ServedEcho echo(listener, {server.get()}, counters);

  Fd client = bound_socket("127.0.0.1");
  send_to(client.get(), pattern(101, 1), to);
  send_to(client.get(), pattern(5000, 2), to);
  const std::string fits = pattern(100, 3);
  send_to(client.get(), fits, to);
  const auto reply = receive(client.get());
  ASSERT_TRUE(reply);
  EXPECT_EQ(*reply, fits);
  ASSERT_TRUE(wait_until([&] { return counters.datagrams_sent.load() == 1; }));
  EXPECT_EQ(dropped(counters, Drop::Truncated), 2U);
  EXPECT_EQ(counters.bytes_sent.load(), 100U);
  EXPECT_FALSE(receive(client.get(), 50ms)) << "an oversized datagram was answered";
}

TEST(UdpEcho, StopLeavesTheSocketOpenAndAnswersWhatWasTaken) {
  Fd server = bound_socket("127.0.0.1");
  const Address to = local_address(server.get());
  make_room(server.get());
  Fd client = bound_socket("127.0.0.1");
  constexpr int kBurst = 300;
  for (int i = 0; i < kBurst; ++i) send_to(client.get(), "before " + std::to_string(i), to);
  obs::ListenerCounters counters("udp-test");
  ServedEcho echo(udp_listener(1), {server.get()}, counters);
  ASSERT_TRUE(wait_until([&] { return counters.datagrams_received.load() > 0; }));
  echo.stop();
  echo.server->stop(false, [] { ADD_FAILURE() << "a second stop() ran its callback"; });  // idempotent
  const std::uint64_t taken = counters.datagrams_received.load();

  // Everything taken before the stop is answered; nothing more is taken.
  ASSERT_TRUE(wait_until([&] { return counters.datagrams_sent.load() == taken; }));
  send_to(client.get(), "after", to);
  std::vector<std::string> left;
  while (const auto d = receive(server.get(), 200ms)) left.push_back(*d);
  ASSERT_EQ(left.size(), kBurst - taken + 1);
  EXPECT_EQ(left.back(), "after");
  if (left.size() > 1) {
    EXPECT_EQ(left.front(), "before " + std::to_string(taken));
  }
  EXPECT_NE(fcntl(server.get(), F_GETFD), -1) << "the server closed a socket it does not own";
  EXPECT_EQ(counters.datagrams_received.load(), taken);

  echo.stop();
  std::uint64_t replies = 0;
  while (receive(client.get(), replies < taken ? kIoTimeout : 50ms)) ++replies;
  EXPECT_EQ(replies, taken);
}

TEST(UdpEcho, StopWithSweepAnswersWhatTheSocketHoldsBeforeReturning) {
  Fd server = bound_socket("127.0.0.1");
  const Address to = local_address(server.get());
  make_room(server.get());
  Fd client = bound_socket("127.0.0.1");
  constexpr int kBurst = 300;
  for (int i = 0; i < kBurst; ++i) send_to(client.get(), pattern(200, static_cast<unsigned>(i)), to);
  obs::ListenerCounters counters("udp-test");
  ServedEcho echo(udp_listener(1), {server.get()}, counters);
  ASSERT_TRUE(wait_until([&] { return counters.datagrams_received.load() > 0; }));
  echo.stop(/*sweep=*/true);
  EXPECT_EQ(counters.datagrams_sent.load(), counters.datagrams_received.load());
  EXPECT_EQ(counters.bytes_sent.load(), counters.bytes_received.load());
  EXPECT_EQ(all_drops(counters), 0U);
}

// --- multicast -------------------------------------------------------------------

config::Listener multicast_listener(const std::string& group, std::uint16_t port, const std::string& interface) {
  auto l = udp_listener(1);
  l.protocol = config::Protocol::Multicast;
  l.endpoint.host = group;
  l.endpoint.port = port;
  l.address = group + ":" + std::to_string(port);
  l.interface = interface;
  l.ttl = 1;
  l.loopback = true;
  return l;
}

int int_option(int fd, int level, int name) {
  int value = -1;
  socklen_t len = sizeof value;
  EXPECT_EQ(getsockopt(fd, level, name, &value, &len), 0);
  return value;
}

TEST(UdpMulticast, GroupJoinedOnLoopbackIsEchoedByUnicast) {
  const std::string group = "239.255.42.7";
  Fd server = bound_socket(group);
  const std::uint16_t port = local_address(server.get()).port();
  const auto listener = multicast_listener(group, port, "lo");
  const auto joined = net::join_multicast(server.get(), listener);
  ASSERT_TRUE(joined) << joined.error();
  EXPECT_EQ(int_option(server.get(), IPPROTO_IP, IP_MULTICAST_TTL), 1);
  EXPECT_EQ(int_option(server.get(), IPPROTO_IP, IP_MULTICAST_LOOP), 1);

  obs::ListenerCounters counters("mcast-test");
  ServedEcho echo(listener, {server.get()}, counters);

  Fd sender = loopback_multicast_sender();
  const std::string payload = pattern(300, 9);
  send_to(sender.get(), payload, make_address(group, port));
  Address from;
  const auto reply = receive(sender.get(), kIoTimeout, &from);
  ASSERT_TRUE(reply) << "no unicast echo of the group datagram";
  EXPECT_EQ(*reply, payload);
  EXPECT_EQ(from.ip(), "127.0.0.1");
  EXPECT_EQ(from.port(), port);
  ASSERT_TRUE(wait_until([&] { return counters.datagrams_sent.load() == 1; }));
  EXPECT_EQ(counters.datagrams_received.load(), 1U);
  EXPECT_EQ(counters.bytes_sent.load(), payload.size());
}

TEST(UdpMulticast, UnknownInterfaceIsNamedInTheError) {
  Fd fd = bound_socket("239.255.42.8");
  const std::string name = "er-nosuch9";
  ASSERT_EQ(if_nametoindex(name.c_str()), 0U);
  const auto r = net::join_multicast(fd.get(), multicast_listener("239.255.42.8", 0, name));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), "multicast interface \"er-nosuch9\": no such interface");
}

TEST(UdpMulticast, FailedJoinNamesGroupInterfaceAndErrno) {
  Fd fd = bound_socket("239.255.42.9");
  const auto listener = multicast_listener("239.255.42.9", 0, "lo");
  ASSERT_TRUE(net::join_multicast(fd.get(), listener));
  const auto again = net::join_multicast(fd.get(), listener);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error(), "join multicast 239.255.42.9 on lo: " + std::system_category().message(EADDRINUSE));

  const auto unicast = net::join_multicast(fd.get(), multicast_listener("10.1.2.3", 0, "lo"));
  ASSERT_FALSE(unicast);
  EXPECT_EQ(unicast.error(), "multicast group 10.1.2.3: not a multicast address");
}

// Runs `body` on a thread moved into a fresh network namespace whose only interface,
// lo, is up and multicast-capable, so a join "on every interface" cannot reach a NIC.
// Returns false when namespaces are not available.
bool in_private_netns(const std::function<void()>& body) {
  bool entered = false;
  std::thread t([&] {
    if (unshare(CLONE_NEWNET) != 0) return;
    Fd ctl(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    if (ioctl(ctl.get(), SIOCGIFFLAGS, &ifr) != 0) return;
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP | IFF_MULTICAST);
    if (ioctl(ctl.get(), SIOCSIFFLAGS, &ifr) != 0) return;
    entered = true;
    body();
  });
  t.join();
  return entered;
}

TEST(UdpMulticast, JoinsEveryMulticastInterfaceWhenNoneIsNamed) {
  std::optional<std::string> received4;
  std::optional<std::string> received6;
  std::string error4 = "not run";
  std::string error6 = "not run";
  const bool ran = in_private_netns([&] {
    {
      Fd server = bound_socket("239.255.42.10");
      const std::uint16_t port = local_address(server.get()).port();
      const auto r = net::join_multicast(server.get(), multicast_listener("239.255.42.10", port, ""));
      error4 = r ? "" : r.error();
      Fd sender = loopback_multicast_sender();
      send_to(sender.get(), "to every interface v4", make_address("239.255.42.10", port));
      received4 = receive(server.get());
    }
    {
      // IPv6 does not loop multicast back on lo itself, so v6 goes over a veth pair
      // created inside this namespace. `ip` runs in this thread's namespace.
      if (std::system("ip link add er-v0 type veth peer name er-v1 && ip link set er-v0 up && "
                      "ip link set er-v1 up && ip -6 addr add 2001:2::1/64 dev er-v0 nodad") != 0) {
        error6 = "cannot create a veth pair (iproute2)";
        return;
      }
      Fd server = bound_socket("ff15::4210");
      const std::uint16_t port = local_address(server.get()).port();
      const auto r = net::join_multicast(server.get(), multicast_listener("ff15::4210", port, ""));
      error6 = r ? "" : r.error();
      Fd sender = bound_socket("2001:2::1");
      const int out = static_cast<int>(if_nametoindex("er-v0"));
      EXPECT_EQ(setsockopt(sender.get(), IPPROTO_IPV6, IPV6_MULTICAST_IF, &out, sizeof out), 0);
      const int hops = 1;
      EXPECT_EQ(setsockopt(sender.get(), IPPROTO_IPV6, IPV6_MULTICAST_HOPS, &hops, sizeof hops), 0);
      send_to(sender.get(), "to every interface v6", make_address("ff15::4210", port));
      received6 = receive(server.get());
    }
  });
  if (!ran) FAIL() << "cannot create a network namespace";
  EXPECT_EQ(error4, "");
  ASSERT_TRUE(received4);
  EXPECT_EQ(*received4, "to every interface v4");
  EXPECT_EQ(error6, "");
  ASSERT_TRUE(received6);
  EXPECT_EQ(*received6, "to every interface v6");
}

}  // namespace
}  // namespace echorelay::udp
