// net::Cidr: parsing allow_sources ranges and matching sources, as a UDP socket
// reports them (IPv4, IPv6, IPv4-mapped IPv6 on a dual-stack socket).
#include <arpa/inet.h>
#include <netinet/in.h>

#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "net/cidr.hpp"

namespace echorelay::net {
namespace {

sockaddr_storage address(const std::string& ip) {
  sockaddr_storage s{};
  if (ip.find(':') == std::string::npos) {
    auto& in = reinterpret_cast<sockaddr_in&>(s);
    in.sin_family = AF_INET;
    EXPECT_EQ(inet_pton(AF_INET, ip.c_str(), &in.sin_addr), 1) << ip;
  } else {
    auto& in6 = reinterpret_cast<sockaddr_in6&>(s);
    in6.sin6_family = AF_INET6;
    EXPECT_EQ(inet_pton(AF_INET6, ip.c_str(), &in6.sin6_addr), 1) << ip;
  }
  return s;
}

Cidr parsed(const std::string& text) {
  auto c = parse_cidr(text);
  EXPECT_TRUE(c) << text << ": " << (c ? "" : c.error());
  return c ? *c : Cidr{};
}

TEST(Cidr, MatchesIpv4RangesAndTheirMappedForm) {
  const Cidr net = parsed("192.0.2.0/24");
  EXPECT_EQ(net.to_string(), "192.0.2.0/24");
  EXPECT_TRUE(net.contains(address("192.0.2.1")));
  EXPECT_TRUE(net.contains(address("192.0.2.255")));
  EXPECT_FALSE(net.contains(address("192.0.3.1")));
  EXPECT_TRUE(net.contains(address("::ffff:192.0.2.7"))) << "a dual-stack socket's view of an IPv4 source";
  EXPECT_FALSE(net.contains(address("::ffff:198.51.100.7")));
  EXPECT_FALSE(net.contains(address("2001:db8::1")));
}

TEST(Cidr, MatchesIpv6RangesOnOddPrefixes) {
  const Cidr net = parsed("2001:db8::/33");
  EXPECT_TRUE(net.contains(address("2001:db8::1")));
  EXPECT_TRUE(net.contains(address("2001:db8:7fff::1")));
  EXPECT_FALSE(net.contains(address("2001:db8:8000::1")));
  EXPECT_FALSE(net.contains(address("192.0.2.1")));
}

TEST(Cidr, ASingleAddressAndEverything) {
  const Cidr one = parsed("127.0.0.2");
  EXPECT_EQ(one.prefix, 32U);
  EXPECT_TRUE(one.contains(address("127.0.0.2")));
  EXPECT_FALSE(one.contains(address("127.0.0.1")));
  EXPECT_TRUE(parsed("0.0.0.0/0").contains(address("203.0.113.9")));
  EXPECT_TRUE(parsed("::/0").contains(address("2001:db8::9")));
  EXPECT_TRUE(admitted_by({}, address("203.0.113.9"))) << "an empty list admits everyone";
  EXPECT_FALSE(admitted_by({one}, address("203.0.113.9")));
  EXPECT_TRUE(admitted_by({parsed("10.0.0.0/8"), one}, address("127.0.0.2")));
}

TEST(Cidr, RefusesWhatIsNotARange) {
  for (const char* bad : {"foo", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/x", "2001:db8::/129", "10.0.0.1/24", ""}) {
    EXPECT_FALSE(parse_cidr(bad)) << bad;
  }
  const auto host_bits = parse_cidr("10.0.0.1/24");
  ASSERT_FALSE(host_bits);
  EXPECT_NE(host_bits.error().find("network address"), std::string::npos) << host_bits.error();
}

}  // namespace
}  // namespace echorelay::net
