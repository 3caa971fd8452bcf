// PROXY protocol v1/v2 (daemon/upstream/proxy_protocol.*): encode two sockaddrs, decode
// the header with the minimal decoder below (written from HAProxy's proxy-protocol.txt,
// not from the encoder), and compare with what the addresses say: IPv4, IPv6 (and
// v4-mapped IPv6 against IPv4: one family per header), Unix paths and abstract names
// (v2), and UNKNOWN/UNSPEC for everything else.
//
// Input: for each side a kind byte and its address bytes, then the datagram flag.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

#include "fuzz_input.hpp"
#include "upstream/proxy_protocol.hpp"

namespace {

struct Side {
  sockaddr_storage storage{};
  socklen_t len = 0;
  // What a receiver must learn from the header.
  enum class Kind { V4, V6, Unix, Other } kind = Kind::Other;
  std::array<std::uint8_t, 16> ip{};  // V4: first 4 bytes; V6: all 16
  std::uint16_t port = 0;
  std::string unix_field;  // Unix: sun_path bytes as the kernel reported them
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
};

Side make_side(fuzz::Input& in) {
  Side s;
  switch (in.pick(7)) {
    case 0: {  // IPv4
      auto* sin = reinterpret_cast<sockaddr_in*>(&s.storage);
      sin->sin_family = AF_INET;
      const std::uint32_t a = in.u32();
      std::memcpy(&sin->sin_addr, &a, 4);
      s.port = in.u16();
      sin->sin_port = htons(s.port);
      s.len = sizeof(sockaddr_in);
      s.kind = Side::Kind::V4;
      std::memcpy(s.ip.data(), &a, 4);
      break;
    }
    case 1:    // IPv6
    case 2: {  // v4-mapped IPv6, as a dual-stack listener reports IPv4 clients
      const bool mapped = in.byte() % 2 == 0;
      auto* sin6 = reinterpret_cast<sockaddr_in6*>(&s.storage);
      sin6->sin6_family = AF_INET6;
      for (auto& b : s.ip) b = in.byte();
      if (mapped) {
        std::memset(s.ip.data(), 0, 10);
        s.ip[10] = s.ip[11] = 0xff;
      }
      std::memcpy(&sin6->sin6_addr, s.ip.data(), 16);
      s.port = in.u16();
      sin6->sin6_port = htons(s.port);
      s.len = sizeof(sockaddr_in6);
      s.kind = Side::Kind::V6;
      break;
    }
    case 3: {  // Unix path, with or without the NUL counted in len
      auto* sun = reinterpret_cast<sockaddr_un*>(&s.storage);
      sun->sun_family = AF_UNIX;
      std::string path = in.bytes(in.pick(sizeof sun->sun_path));
      for (char& c : path) c = c == '\0' ? 'x' : c;
      if (path.empty()) path = "/";
      if (path.size() > sizeof sun->sun_path) path.resize(sizeof sun->sun_path);
      std::memcpy(sun->sun_path, path.data(), path.size());
      const bool nul = path.size() < sizeof sun->sun_path && in.flag();
      s.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (nul ? 1 : 0));
      s.kind = Side::Kind::Unix;
      s.unix_field = path;
      break;
    }
    case 4: {  // abstract name: leading NUL, any bytes (NULs too), length from len
      auto* sun = reinterpret_cast<sockaddr_un*>(&s.storage);
      sun->sun_family = AF_UNIX;
      std::string name = in.bytes(in.pick(sizeof sun->sun_path));
      if (name.size() > sizeof sun->sun_path - 1) name.resize(sizeof sun->sun_path - 1);
      std::memcpy(sun->sun_path + 1, name.data(), name.size());
      s.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
      s.kind = Side::Kind::Unix;
      s.unix_field = std::string(1, '\0') + name;
      break;
    }
    case 5: {  // unnamed Unix socket: only the family
      auto* sun = reinterpret_cast<sockaddr_un*>(&s.storage);
      sun->sun_family = AF_UNIX;
      s.len = sizeof(sa_family_t);
      s.kind = Side::Kind::Unix;
      break;
    }
    default: {  // something else: a short IP sockaddr or another family
      s.storage.ss_family = static_cast<sa_family_t>(in.flag() ? AF_INET6 : AF_UNSPEC);
      s.len = static_cast<socklen_t>(in.pick(sizeof(sockaddr_in6)));
      if (s.storage.ss_family == AF_UNSPEC) s.len = sizeof(sockaddr_in6);
      break;
    }
  }
  return s;
}

bool v4_mapped(const Side& s) {
  static constexpr std::uint8_t kPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return s.kind == Side::Kind::V6 && std::memcmp(s.ip.data(), kPrefix, 12) == 0;
}
bool is_ip(const Side& s) { return s.kind == Side::Kind::V4 || s.kind == Side::Kind::V6; }
bool is_v4ish(const Side& s) { return s.kind == Side::Kind::V4 || v4_mapped(s); }

// The 4 or 16 address bytes the header must carry for `s` in family v4/v6.
std::string wire_ip(const Side& s, bool v4) {
  const char* p = reinterpret_cast<const char*>(s.ip.data());
  if (v4) return s.kind == Side::Kind::V4 ? std::string(p, 4) : std::string(p + 12, 4);
  if (s.kind == Side::Kind::V6) return std::string(p, 16);
  std::string mapped(10, '\0');
  mapped += "\xff\xff";
  return mapped + std::string(p, 4);
}

std::string text_ip(const std::string& wire) {
  char buf[INET6_ADDRSTRLEN] = {};
  FUZZ_CHECK(inet_ntop(wire.size() == 4 ? AF_INET : AF_INET6, wire.data(), buf, sizeof buf) != nullptr);
  return buf;
}

std::uint16_t be16(const std::string& s, std::size_t at) {
  return static_cast<std::uint16_t>(static_cast<unsigned char>(s[at]) << 8 | static_cast<unsigned char>(s[at + 1]));
}

// v1: "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" or "PROXY UNKNOWN\r\n", at most 107 bytes.
void check_v1(const Side& src, const Side& dst) {
  const std::string h = echorelay::upstream::proxy_v1_header(src.get(), src.len, dst.get(), dst.len);
  FUZZ_CHECK(h.size() <= 107);
  FUZZ_CHECK(h.size() >= 8 && h.compare(h.size() - 2, 2, "\r\n") == 0);
  FUZZ_CHECK(h.find('\r') == h.size() - 2 && h.find('\n') == h.size() - 1);
  if (!is_ip(src) || !is_ip(dst)) {
    FUZZ_CHECK(h == "PROXY UNKNOWN\r\n");
    return;
  }
  // Split on single spaces.
  std::string fields[6];
  std::size_t pos = 0;
  for (int i = 0; i < 6; ++i) {
    const std::size_t end = i < 5 ? h.find(' ', pos) : h.size() - 2;
    FUZZ_CHECK(end != std::string::npos && end > pos);
    fields[i] = h.substr(pos, end - pos);
    pos = end + 1;
  }
  FUZZ_CHECK(fields[0] == "PROXY");
  const bool v4 = is_v4ish(src) && is_v4ish(dst);
  FUZZ_CHECK(fields[1] == (v4 ? "TCP4" : "TCP6"));
  // The addresses parse in that family and equal the sockets' addresses.
  for (int i = 0; i < 2; ++i) {
    const Side& s = i == 0 ? src : dst;
    std::array<std::uint8_t, 16> parsed{};
    FUZZ_CHECK(inet_pton(v4 ? AF_INET : AF_INET6, fields[2 + i].c_str(), parsed.data()) == 1);
    FUZZ_CHECK(std::memcmp(parsed.data(), wire_ip(s, v4).data(), v4 ? 4 : 16) == 0);
    FUZZ_CHECK(fields[2 + i] == text_ip(wire_ip(s, v4)));
    // Ports: decimal, no leading zero (except "0"), equal.
    const std::string& p = fields[4 + i];
    FUZZ_CHECK(!p.empty() && p.size() <= 5 && (p == "0" || p[0] != '0'));
    unsigned value = 0;
    for (char c : p) {
      FUZZ_CHECK(c >= '0' && c <= '9');
      value = value * 10 + static_cast<unsigned>(c - '0');
    }
    FUZZ_CHECK(value == s.port);
  }
}

void check_v2(const Side& src, const Side& dst, bool datagram) {
  const std::string h = echorelay::upstream::proxy_v2_header(src.get(), src.len, dst.get(), dst.len, datagram);
  static const std::string kSig("\r\n\r\n\0\r\nQUIT\n", 12);
  FUZZ_CHECK(h.size() >= 16 && h.compare(0, 12, kSig) == 0);
  FUZZ_CHECK(static_cast<unsigned char>(h[12]) == 0x21);  // version 2, PROXY
  const unsigned fam = static_cast<unsigned char>(h[13]);
  const std::size_t len = be16(h, 14);
  FUZZ_CHECK(h.size() == 16 + len);
  const std::string body = h.substr(16);
  const unsigned transport = datagram ? 2 : 1;
  if (src.kind == Side::Kind::Unix && dst.kind == Side::Kind::Unix) {
    FUZZ_CHECK(fam == (0x30 | transport));
    FUZZ_CHECK(len == 216);
    for (int i = 0; i < 2; ++i) {
      const std::string field = body.substr(i * 108, 108);
      const std::string& want = (i == 0 ? src : dst).unix_field;
      FUZZ_CHECK(field.compare(0, want.size(), want) == 0);
      FUZZ_CHECK(field.find_first_not_of('\0', want.size()) == std::string::npos);
    }
    return;
  }
  if (!is_ip(src) || !is_ip(dst)) {
    FUZZ_CHECK(fam == 0x00 && len == 0);
    return;
  }
  const bool v4 = is_v4ish(src) && is_v4ish(dst);
  FUZZ_CHECK(fam == ((v4 ? 0x10u : 0x20u) | transport));
  const std::size_t n = v4 ? 4 : 16;
  FUZZ_CHECK(len == 2 * n + 4);
  FUZZ_CHECK(body.substr(0, n) == wire_ip(src, v4));
  FUZZ_CHECK(body.substr(n, n) == wire_ip(dst, v4));
  FUZZ_CHECK(be16(body, 2 * n) == src.port);
  FUZZ_CHECK(be16(body, 2 * n + 2) == dst.port);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  const Side src = make_side(in);
  const Side dst = make_side(in);
  const bool datagram = in.flag();
  check_v1(src, dst);
  check_v2(src, dst, datagram);
  return 0;
}
