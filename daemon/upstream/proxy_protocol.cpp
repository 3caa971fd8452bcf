// PROXY protocol header encoding (HAProxy's proxy-protocol.txt, sections 2.1 and 2.2):
// pure byte building from two sockaddrs, no I/O. Owns the family reconciliation
// (v4-mapped IPv6 vs IPv4) so that the source and destination in one header always
// share a family, as the format requires. Sending the header is the relay's job.
#include "upstream/proxy_protocol.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>

#include "net/endpoint.hpp"

namespace echorelay::upstream {
namespace {

constexpr std::array<std::uint8_t, 12> kV2Signature = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                       0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
constexpr std::uint8_t kV2VersionProxy = 0x21;  // version 2, command PROXY
constexpr std::uint8_t kFamUnspec = 0x00;
constexpr std::uint8_t kFamTcp4 = 0x11;
constexpr std::uint8_t kFamUdp4 = 0x12;
constexpr std::uint8_t kFamTcp6 = 0x21;
constexpr std::uint8_t kFamUdp6 = 0x22;
constexpr std::uint8_t kFamUnixStream = 0x31;
constexpr std::uint8_t kFamUnixDgram = 0x32;
constexpr std::size_t kUnixAddrLen = 108;  // the spec's fixed sun_path width, whatever the OS says

// One side of an IP connection; reconcile() reduces both to the family the header uses.
using IpSide = net::IpAddress;

bool is_v4_mapped(const in6_addr& a) { return IN6_IS_ADDR_V4MAPPED(&a); }

in_addr unmap(const in6_addr& a) {
  in_addr out{};
  std::memcpy(&out, &a.s6_addr[12], 4);
  return out;
}

in6_addr map(const in_addr& a) {
  in6_addr out{};
  out.s6_addr[10] = 0xff;
  out.s6_addr[11] = 0xff;
  std::memcpy(&out.s6_addr[12], &a, 4);
  return out;
}

bool is_v4ish(const IpSide& side) {
  return side.family == AF_INET || (side.family == AF_INET6 && is_v4_mapped(side.v6));
}

// A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d while the other side
// may be plain IPv4 (or the reverse, for an IPv4 upstream socket). The header carries
// one family for both, so: IPv4 when both sides are IPv4 underneath, else IPv6 with
// the IPv4 side mapped. Both sides come back with the same family.
void reconcile(IpSide& a, IpSide& b) {
  if (is_v4ish(a) && is_v4ish(b)) {
    for (IpSide* s : {&a, &b}) {
      if (s->family == AF_INET6) {
        s->v4 = unmap(s->v6);
        s->family = AF_INET;
      }
    }
    return;
  }
  for (IpSide* s : {&a, &b}) {
    if (s->family == AF_INET) {
      s->v6 = map(s->v4);
      s->family = AF_INET6;
    }
  }
}

void append_u16(std::string& out, std::uint16_t value) {
  out.push_back(static_cast<char>(value >> 8));
  out.push_back(static_cast<char>(value & 0xff));
}

void append_bytes(std::string& out, const void* data, std::size_t n) {
  out.append(static_cast<const char*>(data), n);
}

// The 108-byte UNIX address field: the socket's sun_path bytes as the kernel reported
// them (an abstract name keeps its leading NUL and may contain more NULs, so the
// length comes from the sockaddr length, not strlen), zero-padded. An unnamed socket
// (a connecting client, usually) is all zeros.
void append_unix_path(std::string& out, const sockaddr* addr, socklen_t len) {
  std::array<char, kUnixAddrLen> field{};
  constexpr auto path_offset = offsetof(sockaddr_un, sun_path);
  if (len > static_cast<socklen_t>(path_offset)) {
    std::size_t n = static_cast<std::size_t>(len) - path_offset;
    n = std::min(n, field.size());
    const char* path = reinterpret_cast<const char*>(addr) + path_offset;
    if (n > 0 && path[0] != '\0') {
      // A path name: Linux may or may not count the terminating NUL in `len`.
      n = strnlen(path, n);
    }
    std::memcpy(field.data(), path, n);
  }
  out.append(field.data(), field.size());
}

bool is_unix(const sockaddr* addr) { return addr != nullptr && addr->sa_family == AF_UNIX; }

std::string v2_prefix(std::uint8_t fam, std::uint16_t length) {
  std::string out(reinterpret_cast<const char*>(kV2Signature.data()), kV2Signature.size());
  out.push_back(static_cast<char>(kV2VersionProxy));
  out.push_back(static_cast<char>(fam));
  append_u16(out, length);
  return out;
}

}  // namespace

std::string proxy_v1_header(const sockaddr* source, socklen_t source_len, const sockaddr* destination,
                            socklen_t destination_len) {
  auto src = net::ip_address_of(source, source_len);
  auto dst = net::ip_address_of(destination, destination_len);
  if (!src || !dst) return "PROXY UNKNOWN\r\n";
  reconcile(*src, *dst);
  std::string out = src->family == AF_INET ? "PROXY TCP4 " : "PROXY TCP6 ";
  out += src->host_text();
  out += ' ';
  out += dst->host_text();
  out += ' ';
  out += std::to_string(src->port);
  out += ' ';
  out += std::to_string(dst->port);
  out += "\r\n";
  return out;
}

std::string proxy_v2_header(const sockaddr* source, socklen_t source_len, const sockaddr* destination,
                            socklen_t destination_len, bool datagram) {
  if (is_unix(source) && is_unix(destination)) {
    std::string out = v2_prefix(datagram ? kFamUnixDgram : kFamUnixStream, 2 * kUnixAddrLen);
    append_unix_path(out, source, source_len);
    append_unix_path(out, destination, destination_len);
    return out;
  }
  auto src = net::ip_address_of(source, source_len);
  auto dst = net::ip_address_of(destination, destination_len);
  if (!src || !dst) {
    // Mixed or unknown families cannot be expressed; the spec's answer is AF_UNSPEC
    // with no address block, which tells the receiver to use the real endpoints.
    return v2_prefix(kFamUnspec, 0);
  }
  reconcile(*src, *dst);
  if (src->family == AF_INET) {
    std::string out = v2_prefix(datagram ? kFamUdp4 : kFamTcp4, 12);
    append_bytes(out, &src->v4, 4);
    append_bytes(out, &dst->v4, 4);
    append_u16(out, src->port);
    append_u16(out, dst->port);
    return out;
  }
  std::string out = v2_prefix(datagram ? kFamUdp6 : kFamTcp6, 36);
  append_bytes(out, &src->v6, 16);
  append_bytes(out, &dst->v6, 16);
  append_u16(out, src->port);
  append_u16(out, dst->port);
  return out;
}

}  // namespace echorelay::upstream
