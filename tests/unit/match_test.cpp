// Inherited-socket matching (listen/match.*): the pure decision inside
// InheritedSockets::take. tests/fuzz/fuzz_inherited.cpp fuzzes it against a reference;
// these pin the rules by example.
#include <gtest/gtest.h>

#include <sys/socket.h>

#include <vector>

#include "listen/match.hpp"

namespace echorelay::listen {
namespace {

config::Listener listener(const char* name, config::Protocol protocol, const char* address) {
  config::Listener l;
  l.name = name;
  l.protocol = protocol;
  l.endpoint = net::parse_endpoint(address).value();
  return l;
}

InheritedFacts socket(const char* name, int type, const char* address, bool available = true) {
  InheritedFacts s;
  s.name = name;
  s.available = available;
  s.type = type;
  s.local = net::parse_endpoint(address).value();
  return s;
}

using Indices = std::vector<std::size_t>;

TEST(MatchInherited, ByNameBeforeAddress) {
  const auto l = listener("echo", config::Protocol::Tcp, "127.0.0.1:7000");
  const std::vector<InheritedFacts> s = {socket("other", SOCK_STREAM, "127.0.0.1:7000"),
                                         socket("echo", SOCK_STREAM, "127.0.0.1:7000")};
  EXPECT_EQ(match_inherited(l, s), Indices{1});
}

TEST(MatchInherited, ByAddressWhenNoNameFits) {
  const auto l = listener("renamed", config::Protocol::Tcp, "127.0.0.1:7000");
  const std::vector<InheritedFacts> s = {socket("echo", SOCK_STREAM, "127.0.0.1:7000"),
                                         socket("echo", SOCK_DGRAM, "127.0.0.1:7000"),
                                         socket("x", SOCK_STREAM, "127.0.0.1:7001")};
  EXPECT_EQ(match_inherited(l, s), Indices{0});
}

TEST(MatchInherited, TakesAWholeReusePortGroupAndSkipsTakenOnes) {
  const auto l = listener("udp", config::Protocol::Udp, "127.0.0.1:7000");
  const std::vector<InheritedFacts> s = {socket("udp", SOCK_DGRAM, "127.0.0.1:7000"),
                                         socket("udp", SOCK_DGRAM, "127.0.0.1:7000", false),
                                         socket("udp", SOCK_DGRAM, "127.0.0.1:7000")};
  EXPECT_EQ(match_inherited(l, s), (Indices{0, 2}));
}

TEST(MatchInherited, PortZeroNeedsTheName) {
  const auto l = listener("echo", config::Protocol::Tcp, "127.0.0.1:0");
  EXPECT_EQ(match_inherited(l, {socket("echo", SOCK_STREAM, "127.0.0.1:41000")}), Indices{0});
  EXPECT_EQ(match_inherited(l, {socket("other", SOCK_STREAM, "127.0.0.1:41000")}), Indices{});
}

TEST(MatchInherited, AnUnidentifiableSocketIsNeverTaken) {
  const auto l = listener("echo", config::Protocol::Unix, "/run/e.sock");
  InheritedFacts unknown;
  unknown.name = "echo";
  unknown.available = true;
  EXPECT_EQ(match_inherited(l, {unknown, socket("echo", SOCK_STREAM, "/run/e.sock")}), Indices{1});
}

}  // namespace
}  // namespace echorelay::listen
