// Pure relay pieces: Happy Eyeballs address ordering and the upstream pool's
// balancing, failover order and passive health.
#include <gtest/gtest.h>

#include <map>

#include "upstream/dialer.hpp"
#include "upstream/upstream_pool.hpp"

namespace echorelay::upstream {
namespace {

net::SockAddr addr(const std::string& text) {
  auto e = net::parse_endpoint(text);
  EXPECT_TRUE(e.ok()) << text;
  auto a = net::to_sockaddr(*e);
  EXPECT_TRUE(a.ok()) << text;
  return *a;
}

std::vector<std::string> formatted(const Addresses& addresses) {
  std::vector<std::string> out;
  for (const auto& a : addresses) out.push_back(net::format_sockaddr(a.get(), a.len));
  return out;
}

std::vector<net::Endpoint> endpoints(std::initializer_list<const char*> texts) {
  std::vector<net::Endpoint> out;
  for (const char* t : texts) out.push_back(*net::parse_endpoint(t));
  return out;
}

TEST(HappyEyeballs, InterleavesFamiliesStartingWithTheResolversFirstChoice) {
  const Addresses in = {addr("[::1]:1"), addr("[::2]:1"), addr("[::3]:1"), addr("127.0.0.1:1"), addr("127.0.0.2:1")};
  EXPECT_EQ(formatted(interleave_families(in)),
            (std::vector<std::string>{"[::1]:1", "127.0.0.1:1", "[::2]:1", "127.0.0.2:1", "[::3]:1"}));
}

TEST(HappyEyeballs, SingleFamilyKeepsItsOrder) {
  const Addresses in = {addr("127.0.0.3:1"), addr("127.0.0.1:1")};
  EXPECT_EQ(formatted(interleave_families(in)), (std::vector<std::string>{"127.0.0.3:1", "127.0.0.1:1"}));
}

TEST(UpstreamPool, RoundRobinRotatesTheFirstChoiceAndOffersTheRestForFailover) {
  UpstreamPool pool(endpoints({"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}), config::Balance::RoundRobin);
  std::map<std::uint16_t, int> first;
  for (int i = 0; i < 9; ++i) {
    auto plan = pool.plan();
    ASSERT_EQ(plan.size(), 3U);
    ++first[plan[0]->endpoint.port];
  }
  EXPECT_EQ(first[1], 3);
  EXPECT_EQ(first[2], 3);
  EXPECT_EQ(first[3], 3);
}

TEST(UpstreamPool, LeastConnectionsPicksTheLeastBusy) {
  UpstreamPool pool(endpoints({"127.0.0.1:1", "127.0.0.1:2"}), config::Balance::LeastConnections);
  auto plan = pool.plan();
  pool.connected(*plan[0]);  // one session on whichever came first
  const auto busy_port = plan[0]->endpoint.port;
  for (int i = 0; i < 4; ++i) EXPECT_NE(pool.plan()[0]->endpoint.port, busy_port);
  pool.released(*plan[0]);
}

TEST(UpstreamPool, RandomOfTwoChoicesNeverPrefersTheBusierOfTwo) {
  UpstreamPool pool(endpoints({"127.0.0.1:1", "127.0.0.1:2"}), config::Balance::Random);
  auto plan = pool.plan();
  UpstreamPool::Upstream* busy = plan[0];
  for (int i = 0; i < 10; ++i) pool.connected(*busy);
  int busy_first = 0;
  for (int i = 0; i < 200; ++i) busy_first += pool.plan()[0] == busy;
  // Only when both random choices hit the busy one (p = 1/4) may it come first.
  EXPECT_LT(busy_first, 90);
}

TEST(UpstreamPool, ConsecutiveFailuresEjectAnUpstreamToTheEndOfThePlan) {
  UpstreamPool pool(endpoints({"127.0.0.1:1", "127.0.0.1:2"}), config::Balance::RoundRobin);
  UpstreamPool::Upstream* bad = pool.plan()[0];
  for (unsigned i = 0; i < kFailuresToEject; ++i) pool.failed(*bad);
  EXPECT_TRUE(pool.ejected(*bad));
  for (int i = 0; i < 4; ++i) {
    auto plan = pool.plan();
    ASSERT_EQ(plan.size(), 2U);  // still offered, as a last resort
    EXPECT_NE(plan[0], bad);
    EXPECT_EQ(plan[1], bad);
  }
  pool.connected(*bad);  // a success heals it at once
  EXPECT_FALSE(pool.ejected(*bad));
}

TEST(UpstreamPool, FailuresBelowTheThresholdDoNotEject) {
  UpstreamPool pool(endpoints({"127.0.0.1:1"}), config::Balance::RoundRobin);
  UpstreamPool::Upstream* u = pool.plan()[0];
  for (unsigned i = 0; i + 1 < kFailuresToEject; ++i) pool.failed(*u);
  EXPECT_FALSE(pool.ejected(*u));
}

}  // namespace
}  // namespace echorelay::upstream
