// UDP and multicast relay through the real daemon: one session (and upstream source
// port) per client address, replies to the right client from the listener's address,
// session_timeout expiry, max_sessions eviction of the oldest idle session, the PROXY v2
// header on the first datagram of each session, replies relayed after SIGTERM stopped
// the reading, and multicast fan-out to every upstream, each datagram once also when two
// workers read the group's socket (inside a network namespace of the test's own, so no
// multicast leaves the machine).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <net/if.h>
#include <signal.h>
#include <sys/socket.h>

#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "harness.hpp"
#include "relay_support.hpp"

namespace echorelay::test {
namespace {

std::string udp_relay_config(const std::string& upstreams, const std::string& keys = "") {
  return R"([daemon]
workers = 2
drain_timeout = "1s"

[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "u"
protocol = "udp"
address = "127.0.0.1:0"
handler = "relay"
upstreams = )" + upstreams + "\n" + keys;
}

Labels L(const std::string& listener) { return {{"listener", listener}}; }

// Sends `payload` from `client` and expects the echo back from the listener's address.
::testing::AssertionResult round_trip(int client, const std::string& listener, const std::string& payload) {
  if (auto r = udp_send(client, payload); !r) return r;
  sockaddr_storage from{};
  auto reply = udp_recv(client, kIoTimeout, &from);
  if (!reply) return ::testing::AssertionFailure() << "no reply to '" << payload << "'";
  if (*reply != payload) return ::testing::AssertionFailure() << "reply '" << *reply << "' to '" << payload << "'";
  if (format_inet(from) != listener)
    return ::testing::AssertionFailure() << "reply came from " << format_inet(from) << ", not " << listener;
  return ::testing::AssertionSuccess();
}

// The upstream-side source address of the last datagram carrying `payload`.
std::string upstream_source_of(const DatagramUpstream& upstream, const std::string& payload) {
  std::string from;
  for (const auto& d : upstream.datagrams())
    if (d.data == payload) from = d.from;
  return from;
}

TEST(RelayUdp, EachClientGetsItsOwnSessionAndItsOwnReplies) {
  DatagramUpstream upstream("127.0.0.1:0");
  ASSERT_TRUE(upstream.ok());
  Daemon daemon(udp_relay_config(toml_list({upstream.address()})));
  ASSERT_TRUE(daemon.start());
  const std::string listener = daemon.address("u");
  Fd a = udp_connect(listener);
  Fd b = udp_connect(listener);
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(round_trip(a.get(), listener, "from a #1"));
  ASSERT_TRUE(round_trip(b.get(), listener, "from b #1"));
  ASSERT_TRUE(round_trip(a.get(), listener, "from a #2"));
  ASSERT_TRUE(round_trip(b.get(), listener, "from b #2"));
  // Interleaved without waiting: each reply still reaches its own client.
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(udp_send(a.get(), "a" + std::to_string(i)));
    ASSERT_TRUE(udp_send(b.get(), "b" + std::to_string(i)));
  }
  std::set<std::string> got_a, got_b;
  for (int i = 0; i < 20; ++i) {
    auto ra = udp_recv(a.get());
    auto rb = udp_recv(b.get());
    ASSERT_TRUE(ra && rb) << "lost replies after " << i;
    got_a.insert(*ra);
    got_b.insert(*rb);
  }
  for (const auto& s : got_a) EXPECT_EQ(s.front(), 'a') << s;
  for (const auto& s : got_b) EXPECT_EQ(s.front(), 'b') << s;
  EXPECT_EQ(got_a.size(), 20u);
  EXPECT_EQ(got_b.size(), 20u);

  const std::string a1 = upstream_source_of(upstream, "from a #1");
  const std::string a2 = upstream_source_of(upstream, "from a #2");
  const std::string b1 = upstream_source_of(upstream, "from b #1");
  const std::string b2 = upstream_source_of(upstream, "from b #2");
  EXPECT_EQ(a1, a2) << "one session (one upstream socket) per client address";
  EXPECT_EQ(b1, b2);
  EXPECT_NE(a1, b1) << "two clients must use two upstream sockets";
  EXPECT_NE(port_of(a1), port_of(b1));
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_udp_sessions_active", L("u"), 2));
}

TEST(RelayUdp, IdleSessionExpiresAfterSessionTimeout) {
  DatagramUpstream upstream("127.0.0.1:0");
  ASSERT_TRUE(upstream.ok());
  Daemon daemon(udp_relay_config(toml_list({upstream.address()}), "session_timeout = \"1s\"\n"));
  ASSERT_TRUE(daemon.start());
  const std::string listener = daemon.address("u");
  Fd c = udp_connect(listener);
  ASSERT_TRUE(c);
  ASSERT_TRUE(round_trip(c.get(), listener, "one"));
  std::this_thread::sleep_for(400ms);  // less than session_timeout: the same session
  ASSERT_TRUE(round_trip(c.get(), listener, "two"));
  auto last = Clock::now();
  const std::string first_source = upstream_source_of(upstream, "one");
  EXPECT_EQ(upstream_source_of(upstream, "two"), first_source) << "session renewed before its timeout";

  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_udp_sessions_expired_total", L("u"), 1, 4000ms));
  const double after = std::chrono::duration<double>(Clock::now() - last).count();
  EXPECT_GE(after, 0.9) << "expired before session_timeout";
  EXPECT_LE(after, 3.5) << "expired long after session_timeout (1 s)";
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_udp_sessions_active", L("u"), 0));

  ASSERT_TRUE(round_trip(c.get(), listener, "three"));
  const std::string new_source = upstream_source_of(upstream, "three");
  EXPECT_NE(new_source, first_source) << "a new session needs a new upstream socket";
}

TEST(RelayUdp, MaxSessionsEvictsTheOldestIdleSession) {
  DatagramUpstream upstream("127.0.0.1:0");
  ASSERT_TRUE(upstream.ok());
  // One worker so "oldest" is one LRU list and the eviction order is exact.
  Daemon daemon(udp_relay_config(toml_list({upstream.address()}), "max_sessions = 2\nworkers = 1\n"));
  ASSERT_TRUE(daemon.start());
  const std::string listener = daemon.address("u");
  Fd a = udp_connect(listener), b = udp_connect(listener), c = udp_connect(listener);
  ASSERT_TRUE(a && b && c);
  ASSERT_TRUE(round_trip(a.get(), listener, "a1"));
  ASSERT_TRUE(round_trip(b.get(), listener, "b1"));
  ASSERT_TRUE(round_trip(c.get(), listener, "c1"));  // evicts a (oldest idle)
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_udp_sessions_evicted_total", L("u"), 1));
  ASSERT_TRUE(round_trip(b.get(), listener, "b2"));  // b still has its session
  EXPECT_EQ(upstream_source_of(upstream, "b2"), upstream_source_of(upstream, "b1"));
  ASSERT_TRUE(round_trip(a.get(), listener, "a2"));  // a gets a new one; evicts c
  EXPECT_NE(upstream_source_of(upstream, "a2"), upstream_source_of(upstream, "a1"));
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_udp_sessions_evicted_total", L("u"), 2));
  ASSERT_TRUE(round_trip(b.get(), listener, "b3"));
  EXPECT_EQ(upstream_source_of(upstream, "b3"), upstream_source_of(upstream, "b1")) << "b was not the oldest";
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_udp_sessions_active", L("u"), 2));
}

// SIGTERM stops the reading at once (without a successor, after forwarding what the
// socket held), and the daemon drops its own reference to the socket then, as for an
// echo; yet a session's upstream may still answer, and the reply reaches the client
// from the listener's address for as long as the drain lasts (here a TCP request in
// flight holds it open). The relay replies through a duplicate of its own.
TEST(RelayUdp, SessionsStillRelayRepliesAfterSigtermStoppedTheReading) {
  Fd upstream = udp_bind("127.0.0.1:0");
  ASSERT_TRUE(upstream);
  const std::string up = "127.0.0.1:" + std::to_string(local_port(upstream.get()));
  Daemon daemon(config_toml("workers = 2\ndrain_timeout = \"10s\"",
                            {{"u", "udp", "127.0.0.1:0", "handler = \"relay\"\nupstreams = [\"" + up + "\"]"},
                             {"t", "tcp"}},
                            /*admin=*/false));
  ASSERT_TRUE(daemon.start());
  Fd client = udp_connect(daemon.address("u"));
  ASSERT_TRUE(client);
  ASSERT_TRUE(udp_send(client.get(), "before"));
  sockaddr_storage session{};
  ASSERT_EQ(udp_recv(upstream.get(), kIoTimeout, &session), "before");

  Fd tcp = connect_to(daemon.address("t"));
  ASSERT_TRUE(tcp);
  ASSERT_TRUE(send_all(tcp.get(), "ping\n"));
  ASSERT_EQ(recv_exact(tcp.get(), 5), "ping\n");
  ASSERT_TRUE(send_all(tcp.get(), "in flight"));  // the drain waits for its answer

  ASSERT_TRUE(daemon.signal(SIGTERM));
  ASSERT_TRUE(wait_until([&] { return daemon.log().find("udp u: stopped reading") != std::string::npos; }))
      << daemon.log();
  ASSERT_TRUE(udp_send(client.get(), "after the stop"));
  EXPECT_FALSE(udp_recv(upstream.get(), 300ms).has_value()) << "the socket was read after the stop";
  ASSERT_TRUE(udp_send_to(upstream.get(), format_inet(session), "reply after the stop"));
  EXPECT_EQ(udp_recv(client.get()), "reply after the stop");

  ASSERT_TRUE(send_all(tcp.get(), "\n"));
  EXPECT_EQ(recv_exact(tcp.get(), 10), "in flight\n");
  EXPECT_EQ(daemon.wait_exit(), 0);
}

TEST(RelayUdp, ProxyV2HeaderOnTheFirstDatagramOfEachSession) {
  DatagramUpstream upstream("127.0.0.1:0", /*echo=*/false);
  ASSERT_TRUE(upstream.ok());
  Daemon daemon(udp_relay_config(toml_list({upstream.address()}), "proxy_protocol = \"v2\"\n"));
  ASSERT_TRUE(daemon.start());
  const std::string listener = daemon.address("u");
  Fd a = udp_connect(listener);
  Fd b = udp_connect(listener);
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(udp_send(a.get(), "first"));
  ASSERT_TRUE(upstream.wait_for(1));
  ASSERT_TRUE(udp_send(a.get(), "second"));
  ASSERT_TRUE(upstream.wait_for(2));
  ASSERT_TRUE(udp_send(b.get(), "other client"));
  ASSERT_TRUE(upstream.wait_for(3));
  auto got = upstream.datagrams();
  ASSERT_EQ(got.size(), 3u);

  auto header = [&](int client) {
    in_addr lo{};
    ::inet_pton(AF_INET, "127.0.0.1", &lo);
    std::string addr(reinterpret_cast<char*>(&lo), 4);
    auto be16 = [](std::uint16_t v) { return std::string{static_cast<char>(v >> 8), static_cast<char>(v & 0xff)}; };
    return std::string("\r\n\r\n\0\r\nQUIT\n", 12) + "\x21\x12" + be16(12) + addr + addr + be16(local_port(client)) +
           be16(daemon.port("u"));
  };
  EXPECT_EQ(got[0].data, header(a.get()) + "first") << "UDP4 header then the payload, in one datagram";
  EXPECT_EQ(got[1].data, "second") << "only the first datagram of a session carries the header";
  EXPECT_EQ(got[2].data, header(b.get()) + "other client") << "each session starts with its own header";
}

// ---- multicast fan-out ----

::testing::AssertionResult confine_to_loopback(int fd) {
  in_addr lo{};
  lo.s_addr = htonl(INADDR_LOOPBACK);
  if (::setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, &lo, sizeof lo) != 0)
    return ::testing::AssertionFailure() << "IP_MULTICAST_IF: " << std::strerror(errno);
  int ttl = 1;
  if (::setsockopt(fd, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl) != 0)
    return ::testing::AssertionFailure() << "IP_MULTICAST_TTL: " << std::strerror(errno);
  int loop = 1;
  if (::setsockopt(fd, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop) != 0)
    return ::testing::AssertionFailure() << "IP_MULTICAST_LOOP: " << std::strerror(errno);
  return ::testing::AssertionSuccess();
}

// Two daemon workers, a multicast relay "mc" on `group` (port 0, joined on lo) to
// `upstreams`; `keys` are added to its table.
std::string multicast_relay_config(const std::string& group, const std::vector<std::string>& upstreams,
                                   const std::string& keys = "") {
  return config_toml("workers = 2\ndrain_timeout = \"1s\"",
                     {{"mc", "multicast", group + ":0",
                       "interface = \"lo\"\nhandler = \"relay\"\nupstreams = " + toml_list(upstreams) + "\n" + keys}});
}

TEST(RelayUdp, MulticastDatagramsFanOutToEveryUpstream) {
  RelayNetNs ns;
  ASSERT_TRUE(ns.ok()) << "network namespace: " << ns.error();
  std::mt19937 rng(static_cast<unsigned>(::getpid()));
  const std::string group = "239.255." + std::to_string(rng() % 250 + 1) + "." + std::to_string(rng() % 250 + 1);
  DatagramUpstream one("127.0.0.1:0", /*echo=*/true, ns.name());
  DatagramUpstream two("127.0.0.1:0", /*echo=*/true, ns.name());
  DatagramUpstream three("127.0.0.2:0", /*echo=*/true, ns.name());
  ASSERT_TRUE(one.ok() && two.ok() && three.ok());
  Daemon::Options options;
  options.netns = ns.name();
  Daemon daemon(multicast_relay_config(group, {one.address(), two.address(), three.address()}), options);
  ASSERT_TRUE(daemon.start());
  const std::string group_address = daemon.address("mc");
  ASSERT_EQ(group_address.rfind(group + ":", 0), 0u) << group_address;

  Fd sender = ns.run([] { return udp_bind("127.0.0.1:0"); });
  ASSERT_TRUE(sender);
  ASSERT_TRUE(confine_to_loopback(sender.get()));
  const std::vector<std::string> payloads = {"to every upstream", "second", std::string(1200, 'm')};
  for (const auto& p : payloads) ASSERT_TRUE(udp_send_to(sender.get(), group_address, p));
  for (auto* u : {&one, &two, &three}) {
    EXPECT_TRUE(u->wait_for(payloads.size())) << u->address() << " got " << u->datagrams().size() << " datagrams";
    auto got = u->datagrams();
    std::multiset<std::string> expected(payloads.begin(), payloads.end()), seen;
    for (const auto& d : got) seen.insert(d.data);
    EXPECT_EQ(seen, expected) << u->address();
  }
  // Replies from the upstreams (they echo) are ignored, never sent to the sender.
  EXPECT_FALSE(udp_recv(sender.get(), 500ms).has_value());
}

// `workers = 2`: both workers wait on the group's one socket (EPOLLEXCLUSIVE) and each
// sends what it read to every upstream, so whichever worker reads a datagram, every
// upstream gets it exactly once (a relay that joined the group once per worker would
// send each twice).
TEST(RelayUdp, MulticastRelayReadByTwoWorkersForwardsEveryDatagramOnce) {
  RelayNetNs ns;
  ASSERT_TRUE(ns.ok()) << "network namespace: " << ns.error();
  std::mt19937 rng(static_cast<unsigned>(::getpid()) + 2);
  const std::string group = "239.252." + std::to_string(rng() % 250 + 1) + "." + std::to_string(rng() % 250 + 1);
  DatagramUpstream one("127.0.0.1:0", /*echo=*/false, ns.name());
  DatagramUpstream two("127.0.0.1:0", /*echo=*/false, ns.name());
  ASSERT_TRUE(one.ok() && two.ok());
  Daemon::Options options;
  options.netns = ns.name();
  Daemon daemon(multicast_relay_config(group, {one.address(), two.address()}, "workers = 2\n"), options);
  ASSERT_TRUE(daemon.start());
  Fd sender = ns.run([] { return udp_bind("127.0.0.1:0"); });
  ASSERT_TRUE(sender);
  ASSERT_TRUE(confine_to_loopback(sender.get()));
  constexpr std::size_t kRounds = 20;
  constexpr std::size_t kPerRound = 25;
  std::multiset<std::string> sent;
  for (std::size_t r = 0; r < kRounds; ++r) {
    for (std::size_t i = 0; i < kPerRound; ++i) {
      const std::string payload = "datagram " + std::to_string(r * kPerRound + i);
      ASSERT_TRUE(udp_send_to(sender.get(), daemon.address("mc"), payload));
      sent.insert(payload);
    }
    // Paced by what arrived, so that no receive buffer on the way overflows.
    ASSERT_TRUE(one.wait_for(sent.size())) << one.datagrams().size() << " of " << sent.size();
    ASSERT_TRUE(two.wait_for(sent.size())) << two.datagrams().size() << " of " << sent.size();
  }
  const auto n = static_cast<double>(sent.size());
  EXPECT_TRUE(wait_metric_in(ns.name(), daemon.admin(), "echorelay_requests_total", L("mc"), 2 * n));
  EXPECT_EQ(metric_in(ns.name(), daemon.admin(), "echorelay_datagrams_received_total", L("mc")), n);
  // A second copy of any of them would arrive now.
  EXPECT_FALSE(one.wait_for(sent.size() + 1, 300ms));
  for (const auto* u : {&one, &two}) {
    std::multiset<std::string> got;
    for (const auto& d : u->datagrams()) got.insert(d.data);
    EXPECT_EQ(got, sent) << u->address();
  }
}

// A group member on lo that reports each datagram's IP TTL (IP_RECVTTL).
struct GroupMember {
  Fd fd;
  std::string address;  // group:port
  explicit GroupMember(const std::string& group) {
    fd.reset(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_in in{};
    in.sin_family = AF_INET;
    ::inet_pton(AF_INET, group.c_str(), &in.sin_addr);
    socklen_t len = sizeof in;
    ip_mreqn join{};
    join.imr_multiaddr = in.sin_addr;
    join.imr_ifindex = static_cast<int>(::if_nametoindex("lo"));
    int on = 1;
    if (!fd || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&in), sizeof in) != 0 ||
        ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&in), &len) != 0 ||
        ::setsockopt(fd.get(), IPPROTO_IP, IP_ADD_MEMBERSHIP, &join, sizeof join) != 0 ||
        ::setsockopt(fd.get(), IPPROTO_IP, IP_RECVTTL, &on, sizeof on) != 0) {
      ADD_FAILURE() << "group member on " << group << ": " << std::strerror(errno);
      fd.reset();
      return;
    }
    address = group + ":" + std::to_string(ntohs(in.sin_port));
  }
  // The payload and the TTL it arrived with.
  std::optional<std::pair<std::string, int>> receive(Millis timeout) {
    pollfd p{fd.get(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return std::nullopt;
    char buf[2048];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    iovec iov{buf, sizeof buf};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(fd.get(), &msg, MSG_DONTWAIT);
    if (n < 0) return std::nullopt;
    int ttl = -1;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c))
      if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TTL) std::memcpy(&ttl, CMSG_DATA(c), sizeof ttl);
    return std::make_pair(std::string(buf, static_cast<std::size_t>(n)), ttl);
  }
};

// An upstream that is itself a group: the relay sends there with the listener's ttl
// (3, where the kernel's default is 1) out of the listener's interface.
TEST(RelayUdp, MulticastRelayToAGroupSendsWithTheListenersTtlAndInterface) {
  RelayNetNs ns;
  ASSERT_TRUE(ns.ok()) << "network namespace: " << ns.error();
  std::mt19937 rng(static_cast<unsigned>(::getpid()) + 1);
  const std::string in_group = "239.254." + std::to_string(rng() % 250 + 1) + "." + std::to_string(rng() % 250 + 1);
  const std::string out_group = "239.253." + std::to_string(rng() % 250 + 1) + "." + std::to_string(rng() % 250 + 1);
  auto member = ns.run([&] { return std::make_unique<GroupMember>(out_group); });
  ASSERT_TRUE(member->fd);
  Daemon::Options options;
  options.netns = ns.name();
  Daemon daemon(R"([admin]
listen = "127.0.0.1:0"

[[listener]]
name = "mc"
protocol = "multicast"
address = ")" + in_group + R"(:0"
interface = "lo"
ttl = 3
loopback = true
handler = "relay"
upstreams = [")" + member->address + R"("]
)",
                options);
  ASSERT_TRUE(daemon.start());
  Fd sender = ns.run([] { return udp_bind("127.0.0.1:0"); });
  ASSERT_TRUE(sender);
  ASSERT_TRUE(confine_to_loopback(sender.get()));
  ASSERT_TRUE(udp_send_to(sender.get(), daemon.address("mc"), "to a group upstream"));
  auto got = member->receive(kIoTimeout);
  ASSERT_TRUE(got) << "nothing reached the upstream group";
  EXPECT_EQ(got->first, "to a group upstream");
  EXPECT_EQ(got->second, 3) << "sent with the kernel's default TTL, not the listener's";
}

}  // namespace
}  // namespace echorelay::test
