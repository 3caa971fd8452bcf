// PROXY protocol v1/v2 headers, byte for byte against the layouts written out in
// HAProxy's proxy-protocol.txt (the expected bytes are spelled out here by hand, not
// built with the code under test). Pure; no socket is opened.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <cstddef>
#include <cstring>
#include <string>

#include "upstream/proxy_protocol.hpp"

namespace echorelay::upstream {
namespace {

const std::string kSig("\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A", 12);

struct Addr {
  sockaddr_storage storage{};
  socklen_t len = 0;
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
};

Addr v4(const char* ip, std::uint16_t port) {
  Addr a;
  auto* sin = reinterpret_cast<sockaddr_in*>(&a.storage);
  sin->sin_family = AF_INET;
  sin->sin_port = htons(port);
  EXPECT_EQ(inet_pton(AF_INET, ip, &sin->sin_addr), 1) << ip;
  a.len = sizeof(sockaddr_in);
  return a;
}

Addr v6(const char* ip, std::uint16_t port) {
  Addr a;
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(&a.storage);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(port);
  EXPECT_EQ(inet_pton(AF_INET6, ip, &sin6->sin6_addr), 1) << ip;
  a.len = sizeof(sockaddr_in6);
  return a;
}

// `name` may contain NULs (abstract names start with one); the length is what the
// kernel would report: the family plus the bytes of the name.
Addr unix_addr(const std::string& name, bool count_nul = false) {
  Addr a;
  auto* sun = reinterpret_cast<sockaddr_un*>(&a.storage);
  sun->sun_family = AF_UNIX;
  std::memcpy(sun->sun_path, name.data(), name.size());
  a.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + (count_nul ? 1 : 0));
  return a;
}

Addr unnamed_unix() {
  Addr a;
  a.storage.ss_family = AF_UNIX;
  a.len = sizeof(sa_family_t);
  return a;
}

std::string v1(const Addr& s, const Addr& d) { return proxy_v1_header(s.get(), s.len, d.get(), d.len); }
std::string v2(const Addr& s, const Addr& d, bool dgram = false) {
  return proxy_v2_header(s.get(), s.len, d.get(), d.len, dgram);
}

std::string bytes(std::initializer_list<int> list) {
  std::string out;
  for (int b : list) out.push_back(static_cast<char>(b));
  return out;
}

std::string hex(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

// Compares as hex so a failure shows where the bytes differ.
#define EXPECT_BYTES(actual, expected) EXPECT_EQ(hex(actual), hex(expected))

TEST(ProxyV1, Tcp4HeaderIsTheSpecLine) {
  EXPECT_EQ(v1(v4("1.2.3.4", 1111), v4("5.6.7.8", 2222)), "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n");
}

TEST(ProxyV1, Tcp6HeaderUsesCompressedAddresses) {
  EXPECT_EQ(v1(v6("2001:db8:0:0:0:0:0:1", 56324), v6("::1", 443)),
            "PROXY TCP6 2001:db8::1 ::1 56324 443\r\n");
}

TEST(ProxyV1, UnixClientsAreUnknown) {
  EXPECT_EQ(v1(unnamed_unix(), unix_addr("/run/echo.sock")), "PROXY UNKNOWN\r\n");
  EXPECT_EQ(v1(v4("1.2.3.4", 1), unix_addr("/run/echo.sock")), "PROXY UNKNOWN\r\n");
  EXPECT_EQ(proxy_v1_header(nullptr, 0, nullptr, 0), "PROXY UNKNOWN\r\n");
}

TEST(ProxyV1, BothSidesV4MappedBecomeTcp4) {
  EXPECT_EQ(v1(v6("::ffff:10.0.0.1", 40000), v6("::ffff:10.0.0.2", 7)), "PROXY TCP4 10.0.0.1 10.0.0.2 40000 7\r\n");
}

TEST(ProxyV1, V4MappedClientAndIpv4ListenerBecomeTcp4) {
  EXPECT_EQ(v1(v6("::ffff:192.0.2.9", 5), v4("192.0.2.1", 80)), "PROXY TCP4 192.0.2.9 192.0.2.1 5 80\r\n");
}

TEST(ProxyV1, Ipv4NextToRealIpv6IsMapped) {
  EXPECT_EQ(v1(v4("192.0.2.9", 5), v6("2001:db8::2", 80)), "PROXY TCP6 ::ffff:192.0.2.9 2001:db8::2 5 80\r\n");
}

TEST(ProxyV2, Tcp4) {
  std::string expected = kSig + bytes({0x21, 0x11, 0x00, 0x0C,   // ver/cmd, TCP4, length 12
                                       1, 2, 3, 4, 5, 6, 7, 8,   // src, dst
                                       0x04, 0x57, 0x08, 0xAE});  // 1111, 2222
  EXPECT_BYTES(v2(v4("1.2.3.4", 1111), v4("5.6.7.8", 2222)), expected);
  EXPECT_EQ(expected.size(), 16u + 12u);
}

TEST(ProxyV2, Udp4) {
  std::string expected = kSig + bytes({0x21, 0x12, 0x00, 0x0C, 127, 0, 0, 1, 127, 0, 0, 2, 0xC3, 0x50, 0x00, 0x35});
  EXPECT_BYTES(v2(v4("127.0.0.1", 50000), v4("127.0.0.2", 53), true), expected);
}

TEST(ProxyV2, Tcp6) {
  std::string expected = kSig + bytes({0x21, 0x21, 0x00, 0x24});  // TCP6, length 36
  expected += bytes({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01});  // 2001:db8::1
  expected += bytes({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01});              // ::1
  expected += bytes({0xDC, 0x04, 0x01, 0xBB});                                         // 56324, 443
  EXPECT_BYTES(v2(v6("2001:db8::1", 56324), v6("::1", 443)), expected);
  EXPECT_EQ(expected.size(), 16u + 36u);
}

TEST(ProxyV2, Udp6) {
  std::string expected = kSig + bytes({0x21, 0x22, 0x00, 0x24});
  expected += bytes({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01});
  expected += bytes({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02});
  expected += bytes({0x00, 0x01, 0x00, 0x02});
  EXPECT_BYTES(v2(v6("::1", 1), v6("::2", 2), true), expected);
}

TEST(ProxyV2, BothSidesV4MappedBecomeTcp4) {
  std::string expected = kSig + bytes({0x21, 0x11, 0x00, 0x0C, 10, 0, 0, 1, 10, 0, 0, 2, 0x9C, 0x40, 0x00, 0x07});
  EXPECT_BYTES(v2(v6("::ffff:10.0.0.1", 40000), v6("::ffff:10.0.0.2", 7)), expected);
  // One side plain IPv4 is the same case.
  EXPECT_BYTES(v2(v6("::ffff:10.0.0.1", 40000), v4("10.0.0.2", 7)), expected);
}

TEST(ProxyV2, Ipv4NextToRealIpv6IsMapped) {
  std::string expected = kSig + bytes({0x21, 0x21, 0x00, 0x24});
  expected += bytes({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 9});                  // ::ffff:192.0.2.9
  expected += bytes({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02});          // 2001:db8::2
  expected += bytes({0x00, 0x05, 0x00, 0x50});
  EXPECT_BYTES(v2(v4("192.0.2.9", 5), v6("2001:db8::2", 80)), expected);
}

TEST(ProxyV2, UnixStreamCarriesBothPaths) {
  std::string src_field = "/tmp/client.sock";
  std::string dst_field = "/run/echorelay/listen.sock";
  src_field.resize(108, '\0');
  dst_field.resize(108, '\0');
  std::string expected = kSig + bytes({0x21, 0x31, 0x00, 0xD8}) + src_field + dst_field;  // length 216
  EXPECT_BYTES(v2(unix_addr("/tmp/client.sock"), unix_addr("/run/echorelay/listen.sock", true)), expected);
  EXPECT_EQ(expected.size(), 16u + 216u);
}

TEST(ProxyV2, UnixDgramAndUnnamedClient) {
  std::string dst_field = "/run/dgram.sock";
  dst_field.resize(108, '\0');
  std::string expected = kSig + bytes({0x21, 0x32, 0x00, 0xD8}) + std::string(108, '\0') + dst_field;
  EXPECT_BYTES(v2(unnamed_unix(), unix_addr("/run/dgram.sock"), true), expected);
}

TEST(ProxyV2, AbstractNamesKeepTheirLeadingNul) {
  std::string name = std::string("\0echorelay", 10);
  std::string field = name;
  field.resize(108, '\0');
  std::string expected = kSig + bytes({0x21, 0x31, 0x00, 0xD8}) + std::string(108, '\0') + field;
  std::string header = v2(unnamed_unix(), unix_addr(name));
  EXPECT_BYTES(header, expected);
  EXPECT_EQ(header[16 + 108], '\0');
  EXPECT_EQ(header.substr(16 + 109, 9), "echorelay");
}

TEST(ProxyV2, MixedFamiliesAreUnspecWithoutAddresses) {
  std::string expected = kSig + bytes({0x21, 0x00, 0x00, 0x00});
  EXPECT_BYTES(v2(v4("1.2.3.4", 1), unix_addr("/run/x.sock")), expected);
}

}  // namespace
}  // namespace echorelay::upstream
