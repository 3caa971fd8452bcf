// The UDP relay (make_relay_server) driven over real loopback sockets on loops of the
// test's own: the test binds the listener socket and plays the upstreams itself (plain
// UDP sockets it reads with recvfrom and answers by hand), so every assertion is on
// bytes, ports and counters. Multicast never leaves the host: the sender pins
// IP_MULTICAST_IF to 127.0.0.1 with TTL 0.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <boost/asio/post.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "net/endpoint.hpp"
#include "net/fd.hpp"
#include "obs/metrics.hpp"
#include "upstream/resolver.hpp"
#include "net/multicast.hpp"
#include "udp/udp_relay.hpp"
#include "udp_support.hpp"

namespace echorelay::udp {
namespace {

using namespace std::chrono_literals;
using net::Fd;
using obs::Drop;
using namespace test_support;

// How long "nothing arrives" is watched for.
constexpr auto kQuiet = 300ms;

net::Endpoint endpoint_of(const Address& a) { return net::from_sockaddr(a.get(), a.len); }

config::Listener relay_listener(std::vector<net::Endpoint> upstreams, unsigned workers = 1) {
  config::Listener l;
  l.name = "udp-relay-test";
  l.protocol = config::Protocol::Udp;
  l.handler = config::Handler::Relay;
  l.workers = workers;
  l.queue = 256;
  l.deny_source_ports.clear();
  l.upstreams = std::move(upstreams);
  return l;
}

std::uint64_t upstream_errors(const obs::ListenerCounters& c, obs::UpstreamError e) {
  return c.upstream_errors[static_cast<unsigned>(e)].load();
}

// stop() as App calls it: `stopped` comes from a worker; true once it ran.
::testing::AssertionResult stop_reading(DatagramServer& relay, bool sweep = false) {
  auto done = std::make_shared<std::promise<void>>();
  relay.stop(sweep, [done] { done->set_value(); });
  if (done->get_future().wait_for(kIoTimeout) != std::future_status::ready) {
    return ::testing::AssertionFailure() << "stopped did not run";
  }
  return ::testing::AssertionSuccess();
}

// The Resolver every test passes; only the named-upstream test makes it work.
upstream::Resolver& resolver() {
  static upstream::Resolver r{config::Resolver{}};
  return r;
}

// A listener socket on 127.0.0.1, one scripted upstream, and the relay between them.
struct Rig {
  explicit Rig(std::function<void(config::Listener&)> adjust = {}, unsigned upstream_count = 1) {
    for (unsigned i = 0; i < upstream_count; ++i) {
      upstreams.push_back(bound_socket("127.0.0.1"));
      endpoints.push_back(endpoint_of(local_address(upstreams.back().get())));
    }
    listener = relay_listener(endpoints);
    if (adjust) adjust(listener);
    server = bound_socket("127.0.0.1");
    to = local_address(server.get());
    // As many daemon workers as the listener asks to read its socket.
    loops = std::make_unique<Loops>(std::max(1U, listener.workers));
    relay = make_relay_server(listener, {server.get()}, counters, loops->refs(), resolver());
    relay->start();
    loops->run();
  }

  std::vector<Fd> upstreams;
  std::vector<net::Endpoint> endpoints;
  config::Listener listener;
  Fd server;
  Address to;
  obs::ListenerCounters counters{"udp-relay-test"};
  std::unique_ptr<Loops> loops;
  std::unique_ptr<DatagramServer> relay;  // last: destroyed (its sessions closed) while the loops run
};

TEST(UdpRelay, RelaysDatagramsAndRepliesComeBackFromTheListenerAddress) {
  Rig rig;
  Fd client = bound_socket("127.0.0.1");
  const std::vector<std::string> payloads = {"hello", std::string(1472, 'x'), std::string(9000, 'y'), ""};
  std::uint64_t total = 0;
  Address session;
  for (const auto& payload : payloads) {
    send_to(client.get(), payload, rig.to);
    Address from;
    const auto got = receive(rig.upstreams[0].get(), kIoTimeout, &from);
    ASSERT_TRUE(got) << "not relayed: " << payload.size() << " bytes";
    EXPECT_EQ(*got, payload);
    EXPECT_EQ(from.ip(), "127.0.0.1");
    if (session.len == 0) session = from;
    EXPECT_EQ(from.port(), session.port()) << "one client, one session socket";

    const std::string reply = "re:" + payload;
    send_to(rig.upstreams[0].get(), reply, from);
    Address replier;
    const auto back = receive(client.get(), kIoTimeout, &replier);
    ASSERT_TRUE(back) << "no reply for " << payload.size() << " bytes";
    EXPECT_EQ(*back, reply);
    EXPECT_EQ(replier.ip(), "127.0.0.1");
    EXPECT_EQ(replier.port(), rig.to.port());
    total += payload.size();
  }
  ASSERT_TRUE(wait_until([&] { return rig.counters.datagrams_sent.load() == payloads.size(); }));
  EXPECT_EQ(rig.counters.datagrams_received.load(), payloads.size());
  EXPECT_EQ(rig.counters.requests.load(), payloads.size());
  EXPECT_EQ(rig.counters.bytes_received.load(), total);
  EXPECT_EQ(rig.counters.upstream_bytes_sent.load(), total);
  EXPECT_EQ(rig.counters.upstream_bytes_received.load(), total + 3 * payloads.size());
  EXPECT_EQ(rig.counters.bytes_sent.load(), total + 3 * payloads.size());
  EXPECT_EQ(rig.counters.udp_sessions_active.load(), 1);
  rig.relay.reset();
  EXPECT_EQ(rig.counters.udp_sessions_active.load(), 0);
  EXPECT_EQ(rig.counters.udp_sessions_expired.load(), 0U);
}

TEST(UdpRelay, EachClientGetsItsOwnSessionAndOnlyItsOwnReplies) {
  Rig rig([](config::Listener& l) { l.workers = 2; });
  Fd a = bound_socket("127.0.0.1");
  Fd b = bound_socket("127.0.0.1");
  send_to(a.get(), "from-a", rig.to);
  send_to(b.get(), "from-b", rig.to);
  std::map<std::string, Address> sessions;
  for (int i = 0; i < 2; ++i) {
    Address from;
    const auto got = receive(rig.upstreams[0].get(), kIoTimeout, &from);
    ASSERT_TRUE(got);
    sessions[*got] = from;
  }
  ASSERT_EQ(sessions.size(), 2U);
  EXPECT_NE(sessions["from-a"].port(), sessions["from-b"].port());
  EXPECT_NE(sessions["from-a"].port(), local_address(a.get()).port()) << "the upstream sees the relay, not the client";

  send_to(rig.upstreams[0].get(), "to-b", sessions["from-b"]);
  send_to(rig.upstreams[0].get(), "to-a", sessions["from-a"]);
  const auto got_a = receive(a.get());
  const auto got_b = receive(b.get());
  ASSERT_TRUE(got_a);
  ASSERT_TRUE(got_b);
  EXPECT_EQ(*got_a, "to-a");
  EXPECT_EQ(*got_b, "to-b");
  EXPECT_FALSE(receive(a.get(), kQuiet));
  EXPECT_FALSE(receive(b.get(), kQuiet));
  EXPECT_EQ(rig.counters.udp_sessions_active.load(), 2);
}

TEST(UdpRelay, IdleSessionExpiresAndTheNextDatagramOpensANewOne) {
  Rig rig([](config::Listener& l) { l.session_timeout = 300ms; });
  Fd client = bound_socket("127.0.0.1");
  send_to(client.get(), "one", rig.to);
  Address first;
  ASSERT_TRUE(receive(rig.upstreams[0].get(), kIoTimeout, &first));
  ASSERT_TRUE(wait_until([&] { return rig.counters.udp_sessions_expired.load() == 1; }));
  EXPECT_EQ(rig.counters.udp_sessions_active.load(), 0);

  // The expired session's socket is closed: a late reply to it goes nowhere.
  send_to(rig.upstreams[0].get(), "late", first);
  EXPECT_FALSE(receive(client.get(), kQuiet));

  send_to(client.get(), "two", rig.to);
  Address second;
  const auto got = receive(rig.upstreams[0].get(), kIoTimeout, &second);
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, "two");
  EXPECT_NE(second.port(), first.port()) << "a new session has a new upstream socket";
  EXPECT_EQ(rig.counters.udp_sessions_active.load(), 1);
}

TEST(UdpRelay, ActivityKeepsASessionAlive) {
  Rig rig([](config::Listener& l) { l.session_timeout = 400ms; });
  Fd client = bound_socket("127.0.0.1");
  Address first;
  for (int i = 0; i < 6; ++i) {
    send_to(client.get(), "tick", rig.to);
    Address from;
    ASSERT_TRUE(receive(rig.upstreams[0].get(), kIoTimeout, &from));
    if (i == 0) first = from;
    EXPECT_EQ(from.port(), first.port());
    // Replies count as activity too.
    send_to(rig.upstreams[0].get(), "tock", from);
    ASSERT_TRUE(receive(client.get()));
    poll(nullptr, 0, 150);  // pacing, well under the timeout: not synchronisation
  }
  EXPECT_EQ(rig.counters.udp_sessions_expired.load(), 0U);
}

TEST(UdpRelay, MaxSessionsEvictsTheLeastRecentlyActiveSession) {
  Rig rig([](config::Listener& l) { l.max_sessions = 2; });
  Fd a = bound_socket("127.0.0.1");
  Fd b = bound_socket("127.0.0.1");
  Fd c = bound_socket("127.0.0.1");
  std::map<std::string, Address> seen;
  auto relay_one = [&](int fd, const std::string& payload) {
    send_to(fd, payload, rig.to);
    Address from;
    const auto got = receive(rig.upstreams[0].get(), kIoTimeout, &from);
    ASSERT_TRUE(got);
    ASSERT_EQ(*got, payload);
    seen[payload] = from;
  };
  relay_one(a.get(), "a1");
  relay_one(b.get(), "b1");
  relay_one(a.get(), "a2");  // b is now the least recently active
  EXPECT_EQ(seen["a1"].port(), seen["a2"].port());
  EXPECT_EQ(rig.counters.udp_sessions_evicted.load(), 0U);

  relay_one(c.get(), "c1");
  EXPECT_EQ(rig.counters.udp_sessions_evicted.load(), 1U);
  EXPECT_EQ(rig.counters.udp_sessions_active.load(), 2);
  // b's session is gone: a reply to its old socket does not arrive, and its next
  // datagram opens a new session (evicting a, now the oldest).
  send_to(rig.upstreams[0].get(), "to-b", seen["b1"]);
  EXPECT_FALSE(receive(b.get(), kQuiet));
  relay_one(b.get(), "b2");
  EXPECT_NE(seen["b2"].port(), seen["b1"].port());
  EXPECT_EQ(rig.counters.udp_sessions_evicted.load(), 2U);
  relay_one(c.get(), "c2");
  EXPECT_EQ(seen["c2"].port(), seen["c1"].port()) << "c was not the oldest";
  EXPECT_EQ(rig.counters.udp_sessions_active.load(), 2);
}

TEST(UdpRelay, MaxSessionsHoldsAcrossWorkers) {
  Rig rig([](config::Listener& l) {
    l.max_sessions = 2;
    l.workers = 3;
  });
  std::vector<Fd> clients;
  for (int i = 0; i < 6; ++i) {
    clients.push_back(bound_socket("127.0.0.1"));
    send_to(clients.back().get(), "c" + std::to_string(i), rig.to);
    ASSERT_TRUE(receive(rig.upstreams[0].get()));
  }
  // Another worker closes its oldest on its next turn, so the count settles.
  ASSERT_TRUE(wait_until([&] { return rig.counters.udp_sessions_active.load() == 2; }));
  EXPECT_EQ(rig.counters.udp_sessions_evicted.load(), 4U);
}

// Worker 0 reads the socket; the clients worker 1 owns are handed to it through an inbox
// of queue / 2 slots. While worker 1 is held busy the inbox fills, and the rest of its
// clients' datagrams are dropped as queue_full, never lost uncounted.
TEST(UdpRelay, HandOverToAnotherWorkerIsBoundedByTheQueue) {
  Fd up = bound_socket("127.0.0.1");
  auto listener = relay_listener({endpoint_of(local_address(up.get()))});
  listener.queue = 8;
  Fd server = bound_socket("127.0.0.1");
  obs::ListenerCounters counters("udp-relay-test");
  Loops loops(2);
  auto relay = make_relay_server(listener, {server.get()}, counters, loops.refs(), resolver());
  relay->start();
  loops.run();

  std::promise<void> release;
  std::promise<void> holding;
  boost::asio::post(*loops.refs()[1].ctx, [&release, &holding] {
    holding.set_value();
    release.get_future().wait();
  });
  holding.get_future().wait();
  constexpr unsigned kClients = 40;
  std::vector<Fd> clients;
  for (unsigned i = 0; i < kClients; ++i) {
    clients.push_back(bound_socket("127.0.0.1"));
    send_to(clients.back().get(), "c" + std::to_string(i), local_address(server.get()));
  }
  // Worker 0 relayed its own clients, 4 of worker 1's wait in its inbox, the rest were
  // dropped (about half of 40 clients are worker 1's: fewer than 5 is a 1-in-10^7 draw).
  constexpr unsigned kInbox = 4;
  const bool settled = wait_until(
      [&] { return counters.requests.load() + dropped(counters, Drop::QueueFull) + kInbox == kClients; });
  const std::uint64_t full = dropped(counters, Drop::QueueFull);
  release.set_value();
  ASSERT_TRUE(settled) << counters.requests.load() << " relayed, " << full << " dropped";
  EXPECT_GE(full, 1U);
  std::set<std::string> relayed;
  while (relayed.size() < kClients - full) {
    const auto got = receive(up.get());
    ASSERT_TRUE(got) << relayed.size() << " relayed, " << full << " dropped";
    relayed.insert(*got);
  }
  EXPECT_FALSE(receive(up.get(), kQuiet));
  EXPECT_EQ(dropped(counters, Drop::QueueFull), full);
  EXPECT_EQ(counters.udp_sessions_active.load(),
            static_cast<decltype(counters.udp_sessions_active.load())>(kClients - full));
}

TEST(UdpRelay, RoundRobinSpreadsSessionsOverUpstreams) {
  Rig rig({}, 2);
  std::vector<Fd> clients;
  for (int i = 0; i < 4; ++i) {
    clients.push_back(bound_socket("127.0.0.1"));
    send_to(clients.back().get(), "c" + std::to_string(i), rig.to);
  }
  std::vector<std::set<std::string>> got(2);
  for (std::size_t u = 0; u < 2; ++u) {
    while (auto d = receive(rig.upstreams[u].get(), got[0].size() + got[1].size() < 4 ? kIoTimeout : kQuiet)) {
      got[u].insert(*d);
      if (got[u].size() == 2) break;
    }
  }
  EXPECT_EQ(got[0].size(), 2U);
  EXPECT_EQ(got[1].size(), 2U);
  EXPECT_FALSE(receive(rig.upstreams[0].get(), kQuiet));
  EXPECT_FALSE(receive(rig.upstreams[1].get(), 0ms));
}

std::string expected_v2_udp4(const Address& client, const Address& listener) {
  std::string h("\r\n\r\n\0\r\nQUIT\n", 12);
  h += '\x21';  // version 2, PROXY
  h += '\x12';  // AF_INET, DGRAM
  h += std::string("\x00\x0c", 2);
  const auto& c = reinterpret_cast<const sockaddr_in&>(client.storage);
  const auto& l = reinterpret_cast<const sockaddr_in&>(listener.storage);
  h.append(reinterpret_cast<const char*>(&c.sin_addr), 4);
  h.append(reinterpret_cast<const char*>(&l.sin_addr), 4);
  h.append(reinterpret_cast<const char*>(&c.sin_port), 2);
  h.append(reinterpret_cast<const char*>(&l.sin_port), 2);
  return h;
}

TEST(UdpRelay, ProxyV2HeaderPrecedesOnlyTheFirstDatagramOfEachSession) {
  Rig rig([](config::Listener& l) { l.proxy_protocol = config::ProxyProtocol::V2; });
  Fd a = bound_socket("127.0.0.1");
  Fd b = bound_socket("127.0.0.1");
  const std::string header_a = expected_v2_udp4(local_address(a.get()), rig.to);
  const std::string header_b = expected_v2_udp4(local_address(b.get()), rig.to);
  ASSERT_EQ(header_a.size(), 28U);

  send_to(a.get(), "first", rig.to);
  EXPECT_EQ(receive(rig.upstreams[0].get()), header_a + "first");
  send_to(a.get(), "second", rig.to);
  EXPECT_EQ(receive(rig.upstreams[0].get()), "second");
  send_to(b.get(), "", rig.to);
  EXPECT_EQ(receive(rig.upstreams[0].get()), header_b) << "a zero-length first datagram still carries the header";
  send_to(b.get(), "more", rig.to);
  EXPECT_EQ(receive(rig.upstreams[0].get()), "more");
  ASSERT_TRUE(wait_until([&] { return rig.counters.requests.load() == 4; }));
  EXPECT_EQ(rig.counters.bytes_received.load(), 15U);
  EXPECT_EQ(rig.counters.upstream_bytes_sent.load(), 15U + 2 * 28U);
}

TEST(UdpRelay, WildcardListenerRepliesFromTheAddressTheClientSentTo) {
  Fd up = bound_socket("127.0.0.1");
  auto listener = relay_listener({endpoint_of(local_address(up.get()))});
  listener.proxy_protocol = config::ProxyProtocol::V2;
  Fd server = bound_socket("0.0.0.0");
  obs::ListenerCounters counters("udp-relay-test");
  Loops loops(1);
  auto relay = make_relay_server(listener, {server.get()}, counters, loops.refs(), resolver());
  relay->start();
  loops.run();

  // 127.0.0.2 is local on lo but not the address the kernel would pick as a source.
  const Address to = make_address("127.0.0.2", local_address(server.get()).port());
  Fd client = bound_socket("127.0.0.1");
  send_to(client.get(), "hi", to);
  Address session;
  EXPECT_EQ(receive(up.get(), kIoTimeout, &session), expected_v2_udp4(local_address(client.get()), to) + "hi");
  send_to(up.get(), "back", session);
  Address from;
  EXPECT_EQ(receive(client.get(), kIoTimeout, &from), "back");
  EXPECT_EQ(from.ip(), "127.0.0.2");
  EXPECT_EQ(from.port(), to.port());
}

TEST(UdpRelay, RelaysIpv6ClientsToAnIpv4Upstream) {
  Fd up = bound_socket("127.0.0.1");
  Fd server = bound_socket("::1");
  obs::ListenerCounters counters("udp-relay-test");
  Loops loops(1);
  auto relay = make_relay_server(relay_listener({endpoint_of(local_address(up.get()))}), {server.get()}, counters,
                                 loops.refs(), resolver());
  relay->start();
  loops.run();

  Fd client = bound_socket("::1");
  send_to(client.get(), "six", local_address(server.get()));
  Address session;
  EXPECT_EQ(receive(up.get(), kIoTimeout, &session), "six");
  EXPECT_EQ(session.ip(), "127.0.0.1");
  send_to(up.get(), "four", session);
  Address from;
  EXPECT_EQ(receive(client.get(), kIoTimeout, &from), "four");
  EXPECT_EQ(from.ip(), "::1");
  EXPECT_EQ(from.port(), local_address(server.get()).port());
}

TEST(UdpRelay, RefusedUpstreamIsMarkedFailedAndTheNextDatagramPicksAnother) {
  // A port nobody listens on: its ICMP port-unreachable surfaces as ECONNREFUSED.
  Address dead;
  {
    Fd probe = bound_socket("127.0.0.1");
    dead = local_address(probe.get());
  }
  Fd alive = bound_socket("127.0.0.1");
  obs::ListenerCounters counters("udp-relay-test");
  Fd server = bound_socket("127.0.0.1");
  // Round-robin starts at the first upstream: the dead one.
  const auto listener = relay_listener({endpoint_of(dead), endpoint_of(local_address(alive.get()))});
  Loops loops(1);
  auto relay = make_relay_server(listener, {server.get()}, counters, loops.refs(), resolver());
  relay->start();
  loops.run();

  Fd client = bound_socket("127.0.0.1");
  send_to(client.get(), "lost", local_address(server.get()));
  ASSERT_TRUE(wait_until([&] { return upstream_errors(counters, obs::UpstreamError::Refused) == 1; }));
  EXPECT_FALSE(receive(alive.get(), 0ms));

  send_to(client.get(), "again", local_address(server.get()));
  Address from;
  EXPECT_EQ(receive(alive.get(), kIoTimeout, &from), "again");
  send_to(alive.get(), "reply", from);
  EXPECT_EQ(receive(client.get()), "reply");
  EXPECT_EQ(counters.udp_sessions_active.load(), 1) << "the session survived the failover";
}

TEST(UdpRelay, AppliesDeniedPortsAndMaxDatagram) {
  Rig rig([](config::Listener& l) { l.max_datagram = 100; });
  Fd client = bound_socket("127.0.0.1");
  send_to(client.get(), std::string(101, 'x'), rig.to);
  send_to(client.get(), std::string(100, 'y'), rig.to);
  EXPECT_EQ(receive(rig.upstreams[0].get()), std::string(100, 'y'));
  // The counter follows the send the upstream just saw.
  ASSERT_TRUE(wait_until([&] { return rig.counters.requests.load() == 1; }));
  EXPECT_EQ(dropped(rig.counters, Drop::Truncated), 1U);

  rig.relay.reset();
  Fd denied = bound_socket("127.0.0.1");
  auto l = rig.listener;
  l.deny_source_ports = {local_address(denied.get()).port()};
  obs::ListenerCounters counters("udp-relay-test");
  Loops loops(1);
  auto relay = make_relay_server(l, {rig.server.get()}, counters, loops.refs(), resolver());
  relay->start();
  loops.run();
  send_to(denied.get(), "no", rig.to);
  ASSERT_TRUE(wait_until([&] { return dropped(counters, Drop::DeniedPort) == 1; }));
  EXPECT_EQ(counters.refused[static_cast<unsigned>(obs::Refuse::DeniedPort)].load(), 1U);
  EXPECT_FALSE(receive(rig.upstreams[0].get(), kQuiet));
  EXPECT_EQ(counters.udp_sessions_active.load(), 0);
}

TEST(UdpRelay, StopEndsTheReadingAndSessionsStillReplyAfterTheCallerClosedItsSocket) {
  Rig rig;
  Fd client = bound_socket("127.0.0.1");
  send_to(client.get(), "before", rig.to);
  Address session;
  ASSERT_EQ(receive(rig.upstreams[0].get(), kIoTimeout, &session), "before");

  ASSERT_TRUE(stop_reading(*rig.relay));
  rig.relay->stop(false, [] { ADD_FAILURE() << "a second stop() ran its callback"; });  // idempotent
  send_to(client.get(), "after", rig.to);
  EXPECT_FALSE(receive(rig.upstreams[0].get(), kQuiet)) << "nothing is taken off the socket";
  // The socket is open and still holds the datagram, for a successor to read.
  EXPECT_NE(fcntl(rig.server.get(), F_GETFD), -1) << "the relay closed a socket it does not own";
  EXPECT_EQ(receive(rig.server.get(), kIoTimeout), "after");

  // App closes its reference once `stopped` ran; a socket opened next may get its number.
  const int number = rig.server.get();
  rig.server.reset();
  Fd other = bound_socket("127.0.0.1");
  send_to(rig.upstreams[0].get(), "reply", session);
  Address from;
  EXPECT_EQ(receive(client.get(), kIoTimeout, &from), "reply");
  EXPECT_EQ(from.port(), rig.to.port()) << "the reply left from fd " << number << ", now another socket's";

  rig.relay.reset();
  EXPECT_EQ(rig.counters.udp_sessions_active.load(), 0);
  send_to(rig.upstreams[0].get(), "too late", session);
  EXPECT_FALSE(receive(client.get(), kQuiet));
  // The relay's own reference went with it: the address is free again.
  Fd again = bound_socket("127.0.0.1", rig.to.port());
  EXPECT_TRUE(again.valid());
}

// SIGTERM: what the socket holds when the reading stops is forwarded before `stopped`
// runs, as the echo answers it, once each. Two readers, and clients of both workers:
// what a reader takes for the other worker waits in that worker's inbox, which `queue`
// bounds during a sweep as at any time (here it holds the whole burst).
TEST(UdpRelay, StopWithSweepForwardsWhatTheSocketHolds) {
  Fd up = bound_socket("127.0.0.1");
  Fd server = bound_socket("127.0.0.1");
  constexpr int kClients = 10;
  constexpr int kEach = 30;
  std::vector<Fd> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.push_back(bound_socket("127.0.0.1"));
    for (int i = 0; i < kEach; ++i) {
      send_to(clients.back().get(), std::to_string(c) + "." + std::to_string(i), local_address(server.get()));
    }
  }
  obs::ListenerCounters counters("udp-relay-test");
  Loops loops(2);
  auto listener = relay_listener({endpoint_of(local_address(up.get()))}, 2);
  listener.queue = 2 * kClients * kEach;
  auto relay = make_relay_server(listener, {server.get()}, counters, loops.refs(), resolver());
  relay->start();
  // Asked before the loops run: their first turn may be the sweep itself.
  auto done = std::make_shared<std::promise<void>>();
  relay->stop(true, [done] { done->set_value(); });
  loops.run();
  ASSERT_EQ(done->get_future().wait_for(kIoTimeout), std::future_status::ready);
  EXPECT_EQ(counters.datagrams_received.load(), static_cast<std::uint64_t>(kClients * kEach));
  EXPECT_FALSE(receive(server.get(), 0ms)) << "the socket was not swept";
  std::set<std::string> relayed;
  while (relayed.size() < kClients * kEach) {
    const auto got = receive(up.get());
    ASSERT_TRUE(got) << relayed.size() << " relayed, " << dropped(counters, Drop::QueueFull) << " queue_full";
    EXPECT_TRUE(relayed.insert(*got).second) << "twice: " << *got;
  }
  EXPECT_FALSE(receive(up.get(), kQuiet));
  EXPECT_EQ(counters.requests.load(), static_cast<std::uint64_t>(kClients * kEach));
  EXPECT_EQ(counters.udp_sessions_active.load(), kClients);
}

TEST(UdpRelay, MulticastListenerFansOutToEveryUpstreamAndIgnoresReplies) {
  const std::string group = "239.255.43.7";
  Fd server = bound_socket(group);
  const std::uint16_t port = local_address(server.get()).port();
  Fd up1 = bound_socket("127.0.0.1");
  Fd up2 = bound_socket("127.0.0.1");
  auto listener = relay_listener({endpoint_of(local_address(up1.get())), endpoint_of(local_address(up2.get()))});
  listener.protocol = config::Protocol::Multicast;
  listener.endpoint.host = group;
  listener.endpoint.port = port;
  listener.address = group + ":" + std::to_string(port);
  listener.interface = "lo";
  listener.ttl = 0;
  const auto joined = net::join_multicast(server.get(), listener);
  ASSERT_TRUE(joined) << joined.error();

  obs::ListenerCounters counters("mcast-relay-test");
  Loops loops(1);
  auto relay = make_relay_server(listener, {server.get()}, counters, loops.refs(), resolver());
  relay->start();
  loops.run();

  Fd sender = loopback_multicast_sender();
  const Address to = make_address(group, port);
  for (const std::string payload : {"one", "two", ""}) {
    send_to(sender.get(), payload, to);
    Address from1;
    Address from2;
    EXPECT_EQ(receive(up1.get(), kIoTimeout, &from1), payload);
    EXPECT_EQ(receive(up2.get(), kIoTimeout, &from2), payload);
    EXPECT_EQ(from1.ip(), "127.0.0.1");
    // Replies are ignored: nothing reaches the sender.
    send_to(up1.get(), "ignored", from1);
  }
  EXPECT_FALSE(receive(sender.get(), kQuiet));
  EXPECT_EQ(counters.datagrams_received.load(), 3U);
  ASSERT_TRUE(wait_until([&] { return counters.requests.load() == 6; }));
  EXPECT_EQ(counters.upstream_bytes_sent.load(), 12U);
  EXPECT_EQ(counters.datagrams_sent.load(), 0U);
  EXPECT_EQ(counters.udp_sessions_active.load(), 0);
}

// Binds 127.0.0.1:P and [::1]:P for one port P, so an upstream named "localhost" is
// reached whichever address the resolver ranks first.
bool bind_both_loopbacks(Fd& v4, Fd& v6) {
  for (int attempt = 0; attempt < 20; ++attempt) {
    v4 = bound_socket("127.0.0.1");
    const std::uint16_t port = local_address(v4.get()).port();
    const Address a = make_address("::1", port);
    v6 = Fd(socket(AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (bind(v6.get(), a.get(), a.len) == 0) return true;
  }
  return false;
}

TEST(UdpRelay, RelaysToAnUpstreamGivenByName) {
  Fd v4;
  Fd v6;
  ASSERT_TRUE(bind_both_loopbacks(v4, v6));
  net::Endpoint named;
  named.host = "localhost";
  named.port = local_address(v4.get()).port();
  obs::ListenerCounters counters("udp-relay-test");
  Fd server = bound_socket("127.0.0.1");
  Loops loops(1);
  auto relay = make_relay_server(relay_listener({named}), {server.get()}, counters, loops.refs(), resolver());
  relay->start();
  loops.run();

  Fd client = bound_socket("127.0.0.1");
  send_to(client.get(), "by-name", local_address(server.get()));
  pollfd fds[2] = {{v4.get(), POLLIN, 0}, {v6.get(), POLLIN, 0}};
  ASSERT_GT(poll(fds, 2, static_cast<int>(std::chrono::milliseconds(kIoTimeout).count())), 0);
  const int up = (fds[0].revents & POLLIN) != 0 ? v4.get() : v6.get();
  Address from;
  EXPECT_EQ(receive(up, kIoTimeout, &from), "by-name");
  send_to(up, "answer", from);
  EXPECT_EQ(receive(client.get()), "answer");
}

TEST(UdpRelay, SessionCountersAreRenderedForPrometheus) {
  obs::Registry registry;
  auto& c = registry.listener("dns-relay");
  c.udp_sessions_active = 3;
  c.udp_sessions_evicted = 2;
  c.udp_sessions_expired = 5;
  const std::string text = registry.render_prometheus();
  EXPECT_NE(text.find("# TYPE echorelay_udp_sessions_active gauge\n"), std::string::npos);
  EXPECT_NE(text.find("echorelay_udp_sessions_active{listener=\"dns-relay\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("echorelay_udp_sessions_evicted_total{listener=\"dns-relay\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("echorelay_udp_sessions_expired_total{listener=\"dns-relay\"} 5\n"), std::string::npos);
}

}  // namespace
}  // namespace echorelay::udp
