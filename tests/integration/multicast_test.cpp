// Multicast echo: the daemon joins a group on `lo` and answers a datagram sent to the
// group with a unicast reply to the sender. Runs inside a network namespace the test
// creates so no multicast can reach a real NIC; without privileges for that it falls back
// to the host `lo` with IP_MULTICAST_IF=127.0.0.1 and TTL 1 (the machine's safety rule).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <iostream>
#include <random>

#include "harness.hpp"
#include "netns.hpp"

namespace echorelay::test {
namespace {

// 239.255.x.y with x.y from the pid, so parallel test processes on the host fallback
// do not hear each other.
std::string random_group() {
  std::mt19937 rng(static_cast<unsigned>(::getpid()) ^ static_cast<unsigned>(Clock::now().time_since_epoch().count()));
  return "239.255." + std::to_string(rng() % 250 + 1) + "." + std::to_string(rng() % 250 + 1);
}

std::string multicast_config(const std::string& group) {
  return R"(
[[listener]]
name = "mc"
protocol = "multicast"
address = ")" + group + R"(:0"
handler = "echo"
interface = "lo"
)";
}

// Points the socket's multicast output at loopback with TTL 1; fails the test otherwise,
// because a send without IP_MULTICAST_IF could leave through a real interface.
::testing::AssertionResult confine_to_loopback(int fd) {
  in_addr lo{};
  lo.s_addr = htonl(INADDR_LOOPBACK);
  if (::setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, &lo, sizeof lo) != 0)
    return ::testing::AssertionFailure() << "IP_MULTICAST_IF: " << std::strerror(errno);
  int ttl = 1;
  if (::setsockopt(fd, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl) != 0)
    return ::testing::AssertionFailure() << "IP_MULTICAST_TTL: " << std::strerror(errno);
  int loop = 1;  // the group member is on this host
  if (::setsockopt(fd, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop) != 0)
    return ::testing::AssertionFailure() << "IP_MULTICAST_LOOP: " << std::strerror(errno);
  return ::testing::AssertionSuccess();
}

// Sends to the group and expects the same bytes back on our (non-member) socket, which
// can only receive them by unicast.
void expect_group_echo(int fd, const std::string& group_address) {
  sockaddr_in local{};
  local.sin_family = AF_INET;
  local.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local), 0) << std::strerror(errno);
  ASSERT_TRUE(confine_to_loopback(fd));
  for (const std::string payload : {"to the group", "", "second datagram"}) {
    ASSERT_TRUE(udp_send_to(fd, group_address, payload));
    sockaddr_storage from{};
    auto reply = udp_recv(fd, kIoTimeout, &from);
    ASSERT_TRUE(reply.has_value()) << "no reply to '" << payload << "' sent to " << group_address;
    EXPECT_EQ(*reply, payload);
    ASSERT_EQ(from.ss_family, AF_INET);
    auto* sin = reinterpret_cast<sockaddr_in*>(&from);
    EXPECT_FALSE(IN_MULTICAST(ntohl(sin->sin_addr.s_addr))) << "reply came from " << format_inet(from);
  }
}

TEST(Multicast, GroupDatagramIsEchoedByUnicastToSender) {
  std::string group = random_group();
  NetNs ns(NetNs::Options{"erl-it", /*multicast_route=*/true});
  if (ns.ok()) {
    Daemon::Options options;
    options.netns = ns.name();
    Daemon daemon(multicast_config(group), options);
    ASSERT_TRUE(daemon.start());
    EXPECT_EQ(daemon.protocol("mc"), "multicast");
    std::string address = daemon.address("mc");
    ASSERT_EQ(address.rfind(group + ":", 0), 0u) << address;
    ASSERT_NE(daemon.port("mc"), 0);
    Fd s = ns.run([] { return Fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)); });
    ASSERT_TRUE(s);
    expect_group_echo(s.get(), address);
    return;
  }
  // No namespace (no privileges): the host's lo, confined by IP_MULTICAST_IF and TTL 1.
  std::cerr << "multicast: no network namespace (" << ns.error() << "), using host lo\n";
  Daemon daemon(multicast_config(group));
  ASSERT_TRUE(daemon.start());
  std::string address = daemon.address("mc");
  ASSERT_EQ(address.rfind(group + ":", 0), 0u) << address;
  Fd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(s);
  expect_group_echo(s.get(), address);
}

}  // namespace
}  // namespace echorelay::test
