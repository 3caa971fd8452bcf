// Endpoint parse/format and sockaddr conversion: the address forms the config and
// the probe speak. Pure; no socket is opened.
#include <gtest/gtest.h>

#include <arpa/inet.h>

#include <cstddef>
#include <cstring>

#include "net/endpoint.hpp"

namespace echorelay::net {
namespace {

Endpoint parsed(std::string_view text, HostRule rule = HostRule::IpOnly) {
  auto ep = parse_endpoint(text, rule);
  EXPECT_TRUE(ep.ok()) << text << ": " << (ep.ok() ? "" : ep.error());
  return ep.ok() ? *ep : Endpoint{};
}

std::string parse_error(std::string_view text, HostRule rule = HostRule::IpOnly) {
  auto ep = parse_endpoint(text, rule);
  EXPECT_FALSE(ep.ok()) << text << " parsed as " << (ep.ok() ? ep->to_string() : "");
  return ep.ok() ? "" : ep.error();
}

TEST(Endpoint, ParsesIpv4HostAndPort) {
  Endpoint ep = parsed("127.0.0.1:7");
  EXPECT_EQ(ep.kind, Endpoint::Kind::Inet);
  EXPECT_EQ(ep.host, "127.0.0.1");
  EXPECT_EQ(ep.port, 7);
  EXPECT_TRUE(ep.is_ip_literal());
  EXPECT_FALSE(ep.is_ipv6());
}

TEST(Endpoint, ParsesBracketedIpv6) {
  Endpoint ep = parsed("[::1]:7007");
  EXPECT_EQ(ep.host, "::1");
  EXPECT_EQ(ep.port, 7007);
  EXPECT_TRUE(ep.is_ipv6());
  EXPECT_EQ(ep.to_string(), "[::1]:7007");
}

TEST(Endpoint, CanonicalisesIpv6SpellingSoDuplicatesCompareEqual) {
  EXPECT_EQ(parsed("[0:0::1]:7"), parsed("[::1]:7"));
  EXPECT_EQ(parsed("[FF02::1]:7").host, "ff02::1");
}

TEST(Endpoint, EmptyHostMeansIpv6Wildcard) {
  EXPECT_EQ(parsed(":7").host, "::");
  EXPECT_EQ(parsed("[::]:7").host, "::");
  EXPECT_EQ(parsed(":7").to_string(), "[::]:7");
}

TEST(Endpoint, RefusesIpv6WithoutBrackets) {
  EXPECT_EQ(parse_error("::1:7"), R"("::1:7": an IPv6 address needs brackets, e.g. "[::1]:7")");
}

TEST(Endpoint, RefusesHostNameWhenOnlyIpsAreAllowed) {
  EXPECT_EQ(parse_error("example.com:7"), R"("example.com:7": host must be an IP address)");
}

TEST(Endpoint, AcceptsHostNameWhenNamesAreAllowed) {
  Endpoint ep = parsed("echo-1.example.com:7", HostRule::NamesAllowed);
  EXPECT_EQ(ep.host, "echo-1.example.com");
  EXPECT_EQ(ep.port, 7);
  EXPECT_FALSE(ep.is_ip_literal());
  EXPECT_EQ(ep.to_string(), "echo-1.example.com:7");
}

TEST(Endpoint, RefusesHostWithInvalidCharacters) {
  EXPECT_EQ(parse_error("exa_mple.com:7", HostRule::NamesAllowed), R"("exa_mple.com:7": invalid host)");
  EXPECT_EQ(parse_error("a..b:7", HostRule::NamesAllowed), R"("a..b:7": invalid host)");
}

TEST(Endpoint, RefusesBadPorts) {
  EXPECT_EQ(parse_error("127.0.0.1:65536"), R"("127.0.0.1:65536": port must be 0..65535)");
  EXPECT_EQ(parse_error("127.0.0.1:-1"), R"("127.0.0.1:-1": port must be a decimal number 0..65535)");
  EXPECT_EQ(parse_error("127.0.0.1:"), R"("127.0.0.1:": missing port)");
  EXPECT_EQ(parse_error("127.0.0.1"), R"("127.0.0.1": missing port (expected host:port))");
  EXPECT_EQ(parse_error("[::1]"), R"("[::1]": missing port after ']')");
  EXPECT_EQ(parsed("127.0.0.1:65535").port, 65535);
  EXPECT_EQ(parsed("127.0.0.1:0").port, 0);
}

TEST(Endpoint, RefusesNonIpv6InsideBrackets) {
  EXPECT_EQ(parse_error("[127.0.0.1]:7"), R"("[127.0.0.1]:7": brackets must contain an IPv6 address)");
  EXPECT_EQ(parse_error("[::1:7"), R"("[::1:7": missing ']' after the IPv6 address)");
}

TEST(Endpoint, ParsesUnixPath) {
  Endpoint ep = parsed("/run/echo.sock");
  EXPECT_EQ(ep.kind, Endpoint::Kind::UnixPath);
  EXPECT_EQ(ep.path, "/run/echo.sock");
  EXPECT_TRUE(ep.is_unix());
  EXPECT_FALSE(ep.is_ip_literal());
  EXPECT_EQ(ep.to_string(), "/run/echo.sock");
}

TEST(Endpoint, UnixPathLimitIs107Bytes) {
  std::string longest = "/" + std::string(kMaxUnixPath - 1, 'a');
  EXPECT_EQ(parsed(longest).path, longest);
  std::string too_long = longest + "a";
  EXPECT_EQ(parse_error(too_long), "\"" + too_long + "\": Unix socket path is 108 bytes, the limit is 107");
}

TEST(Endpoint, ParsesAbstractName) {
  Endpoint ep = parsed("@echorelay");
  EXPECT_EQ(ep.kind, Endpoint::Kind::UnixAbstract);
  EXPECT_EQ(ep.path, "echorelay");
  EXPECT_EQ(ep.to_string(), "@echorelay");
  EXPECT_EQ(parse_error("@"), R"("@": abstract socket name is empty)");
  std::string too_long = "@" + std::string(kMaxUnixPath + 1, 'x');
  EXPECT_EQ(parse_error(too_long), "\"" + too_long + "\": abstract socket name is 108 bytes, the limit is 107");
}

TEST(Endpoint, RefusesEmptyText) { EXPECT_EQ(parse_error(""), R"("": empty address)"); }

TEST(Endpoint, Ipv4ToSockaddr) {
  auto sa = to_sockaddr(parsed("10.1.2.3:7007"));
  ASSERT_TRUE(sa.ok());
  ASSERT_EQ(sa->family(), AF_INET);
  ASSERT_EQ(sa->len, sizeof(sockaddr_in));
  auto* in4 = reinterpret_cast<const sockaddr_in*>(sa->get());
  EXPECT_EQ(ntohs(in4->sin_port), 7007);
  EXPECT_EQ(ntohl(in4->sin_addr.s_addr), 0x0A010203U);
}

TEST(Endpoint, Ipv6ToSockaddr) {
  auto sa = to_sockaddr(parsed("[::1]:9"));
  ASSERT_TRUE(sa.ok());
  ASSERT_EQ(sa->family(), AF_INET6);
  ASSERT_EQ(sa->len, sizeof(sockaddr_in6));
  auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa->get());
  EXPECT_EQ(ntohs(in6->sin6_port), 9);
  EXPECT_TRUE(IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr));
}

TEST(Endpoint, UnixPathToSockaddrCountsTheTerminatingNul) {
  auto sa = to_sockaddr(parsed("/tmp/x.sock"));
  ASSERT_TRUE(sa.ok());
  ASSERT_EQ(sa->family(), AF_UNIX);
  EXPECT_EQ(sa->len, offsetof(sockaddr_un, sun_path) + std::strlen("/tmp/x.sock") + 1);
  EXPECT_STREQ(reinterpret_cast<const sockaddr_un*>(sa->get())->sun_path, "/tmp/x.sock");
}

TEST(Endpoint, AbstractToSockaddrHasLeadingNulAndExactLength) {
  auto sa = to_sockaddr(parsed("@echo"));
  ASSERT_TRUE(sa.ok());
  ASSERT_EQ(sa->family(), AF_UNIX);
  EXPECT_EQ(sa->len, offsetof(sockaddr_un, sun_path) + 1 + 4);
  const char* sun_path = reinterpret_cast<const sockaddr_un*>(sa->get())->sun_path;
  EXPECT_EQ(sun_path[0], '\0');
  EXPECT_EQ(std::string(sun_path + 1, 4), "echo");
}

TEST(Endpoint, ToSockaddrRefusesHostName) {
  auto sa = to_sockaddr(parsed("localhost:7", HostRule::NamesAllowed));
  ASSERT_FALSE(sa.ok());
  EXPECT_EQ(sa.error(), "to_sockaddr localhost:7: host is not an IP address");
}

TEST(Endpoint, SockaddrRoundTripsEveryKind) {
  for (std::string_view text : {"127.0.0.1:7", "[::1]:7007", "[::]:0", "/tmp/a.sock", "@abstract-name"}) {
    Endpoint ep = parsed(text);
    auto sa = to_sockaddr(ep);
    ASSERT_TRUE(sa.ok()) << text;
    EXPECT_EQ(from_sockaddr(sa->get(), sa->len), ep) << text;
    EXPECT_EQ(format_sockaddr(sa->get(), sa->len), text);
  }
}

TEST(Endpoint, FromSockaddrReadsPathWithoutTrailingNulInLength) {
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  std::memcpy(un.sun_path, "/tmp/p", 6);
  auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 6);
  Endpoint ep = from_sockaddr(reinterpret_cast<const sockaddr*>(&un), len);
  EXPECT_EQ(ep.kind, Endpoint::Kind::UnixPath);
  EXPECT_EQ(ep.path, "/tmp/p");
}

TEST(Endpoint, FromSockaddrHandlesUnnamedUnixSocket) {
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path));
  Endpoint ep = from_sockaddr(reinterpret_cast<const sockaddr*>(&un), len);
  EXPECT_EQ(ep.kind, Endpoint::Kind::UnixPath);
  EXPECT_EQ(ep.path, "");
  EXPECT_EQ(format_sockaddr(reinterpret_cast<const sockaddr*>(&un), len), "(unnamed)");
}

TEST(Endpoint, FormatSockaddrNamesUnknownFamily) {
  sockaddr_storage ss{};
  ss.ss_family = AF_PACKET;
  EXPECT_EQ(format_sockaddr(reinterpret_cast<const sockaddr*>(&ss), sizeof ss),
            "(address family " + std::to_string(AF_PACKET) + ")");
  EXPECT_EQ(format_sockaddr(nullptr, 0), "(no address)");
}

TEST(Endpoint, MulticastAddressRanges) {
  EXPECT_TRUE(is_multicast_address("224.0.0.1"));
  EXPECT_TRUE(is_multicast_address("239.255.77.77"));
  EXPECT_FALSE(is_multicast_address("223.255.255.255"));
  EXPECT_FALSE(is_multicast_address("240.0.0.1"));
  EXPECT_TRUE(is_multicast_address("ff02::1"));
  EXPECT_FALSE(is_multicast_address("fe80::1"));
  EXPECT_FALSE(is_multicast_address("not-an-ip"));
}

}  // namespace
}  // namespace echorelay::net
