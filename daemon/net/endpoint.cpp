// Endpoint parsing and formatting, and the conversions to and from sockaddr.
// Pure text and byte shuffling (inet_pton/inet_ntop): nothing here opens a socket
// or resolves a name; host names only pass through for the relay to resolve.
#include "net/endpoint.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstddef>
#include <cstring>

namespace echorelay::net {
namespace {

std::string quoted(std::string_view text) {
  std::string out = "\"";
  out.append(text);
  out += '"';
  return out;
}

Error endpoint_error(std::string_view text, std::string_view why) {
  return make_error(quoted(text) + ": " + std::string(why));
}

bool is_ipv4_literal(const std::string& host) {
  in_addr a{};
  return inet_pton(AF_INET, host.c_str(), &a) == 1;
}

bool is_ipv6_literal(const std::string& host) {
  in6_addr a{};
  return inet_pton(AF_INET6, host.c_str(), &a) == 1;
}

// One spelling per address, so "[0::1]:7" and "[::1]:7" compare equal when the
// config looks for duplicate listeners.
std::string canonical_ip(const std::string& host) {
  char buf[INET6_ADDRSTRLEN] = {};
  in_addr a4{};
  if (inet_pton(AF_INET, host.c_str(), &a4) == 1 && inet_ntop(AF_INET, &a4, buf, sizeof buf)) return buf;
  in6_addr a6{};
  if (inet_pton(AF_INET6, host.c_str(), &a6) == 1 && inet_ntop(AF_INET6, &a6, buf, sizeof buf)) return buf;
  return host;
}

bool is_host_name(std::string_view host) {
  if (host.empty() || host.size() > 253) return false;
  if (host.front() == '-' || host.front() == '.' || host.back() == '-') return false;
  for (char c : host) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
    if (!ok) return false;
  }
  return host.find("..") == std::string_view::npos;
}

Result<std::uint16_t> parse_port(std::string_view text, std::string_view port) {
  if (port.empty()) return endpoint_error(text, "missing port");
  if (port.size() > 5) return endpoint_error(text, "port must be 0..65535");
  unsigned value = 0;
  for (char c : port) {
    if (c < '0' || c > '9') return endpoint_error(text, "port must be a decimal number 0..65535");
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (value > 65535) return endpoint_error(text, "port must be 0..65535");
  return static_cast<std::uint16_t>(value);
}

}  // namespace

bool Endpoint::is_ip_literal() const {
  return kind == Kind::Inet && (is_ipv4_literal(host) || is_ipv6_literal(host));
}

bool Endpoint::is_ipv6() const { return kind == Kind::Inet && is_ipv6_literal(host); }

std::string Endpoint::to_string() const {
  switch (kind) {
    case Kind::UnixPath:
      // An unnamed socket (socketpair, an unbound client) has no path to print.
      return path.empty() ? std::string("(unnamed)") : path;
    case Kind::UnixAbstract:
      return "@" + path;
    case Kind::Inet:
      break;
  }
  std::string out;
  if (host.find(':') != std::string::npos) {
    out = "[" + host + "]";
  } else {
    out = host;
  }
  out += ':';
  out += std::to_string(port);
  return out;
}

Result<Endpoint> parse_endpoint(std::string_view text, HostRule rule) {
  Endpoint ep;
  if (text.empty()) return endpoint_error(text, "empty address");

  if (text.front() == '/') {
    if (text.size() > kMaxUnixPath) {
      return endpoint_error(text, "Unix socket path is " + std::to_string(text.size()) + " bytes, the limit is " +
                                      std::to_string(kMaxUnixPath));
    }
    if (text.find('\0') != std::string_view::npos) return endpoint_error(text, "Unix socket path contains a NUL byte");
    ep.kind = Endpoint::Kind::UnixPath;
    ep.path = std::string(text);
    return ep;
  }

  if (text.front() == '@') {
    std::string_view name = text.substr(1);
    if (name.empty()) return endpoint_error(text, "abstract socket name is empty");
    // sun_path[0] holds the NUL that marks the abstract namespace.
    if (name.size() > kMaxUnixPath) {
      return endpoint_error(text, "abstract socket name is " + std::to_string(name.size()) + " bytes, the limit is " +
                                      std::to_string(kMaxUnixPath));
    }
    ep.kind = Endpoint::Kind::UnixAbstract;
    ep.path = std::string(name);
    return ep;
  }

  std::string host;
  std::string_view port;
  if (text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos) return endpoint_error(text, "missing ']' after the IPv6 address");
    host = std::string(text.substr(1, close - 1));
    std::string_view rest = text.substr(close + 1);
    if (rest.empty() || rest.front() != ':') return endpoint_error(text, "missing port after ']'");
    port = rest.substr(1);
    if (host.empty()) host = "::";
    if (!is_ipv6_literal(host)) return endpoint_error(text, "brackets must contain an IPv6 address");
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return endpoint_error(text, "missing port (expected host:port)");
    host = std::string(text.substr(0, colon));
    port = text.substr(colon + 1);
    if (host.find(':') != std::string::npos) {
      return endpoint_error(text, "an IPv6 address needs brackets, e.g. \"[::1]:7\"");
    }
    if (host.empty()) {
      // As Go's net.Listen: no host means every address, both families.
      host = "::";
    } else if (!is_ipv4_literal(host)) {
      if (!is_host_name(host)) return endpoint_error(text, "invalid host");
      if (rule == HostRule::IpOnly) return endpoint_error(text, "host must be an IP address");
    }
  }

  auto parsed_port = parse_port(text, port);
  if (!parsed_port) return Error{parsed_port.error()};
  ep.kind = Endpoint::Kind::Inet;
  ep.host = canonical_ip(host);
  ep.port = *parsed_port;
  return ep;
}

Result<SockAddr> to_sockaddr(const Endpoint& endpoint) {
  SockAddr sa;
  switch (endpoint.kind) {
    case Endpoint::Kind::UnixPath:
    case Endpoint::Kind::UnixAbstract: {
      auto* un = reinterpret_cast<sockaddr_un*>(&sa.storage);
      un->sun_family = AF_UNIX;
      if (endpoint.path.empty() || endpoint.path.size() > kMaxUnixPath) {
        return make_error("to_sockaddr " + endpoint.to_string() + ": Unix address must be 1.." +
                          std::to_string(kMaxUnixPath) + " bytes");
      }
      if (endpoint.kind == Endpoint::Kind::UnixPath) {
        std::memcpy(un->sun_path, endpoint.path.data(), endpoint.path.size());
        sa.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + endpoint.path.size() + 1);
      } else {
        // Abstract names are not NUL-terminated: the length is the name, so it
        // must not count a trailing NUL or the kernel sees a different name.
        un->sun_path[0] = '\0';
        std::memcpy(un->sun_path + 1, endpoint.path.data(), endpoint.path.size());
        sa.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + endpoint.path.size());
      }
      return sa;
    }
    case Endpoint::Kind::Inet:
      break;
  }
  auto* in4 = reinterpret_cast<sockaddr_in*>(&sa.storage);
  if (inet_pton(AF_INET, endpoint.host.c_str(), &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons(endpoint.port);
    sa.len = sizeof(sockaddr_in);
    return sa;
  }
  sa.storage = {};
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&sa.storage);
  if (inet_pton(AF_INET6, endpoint.host.c_str(), &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(endpoint.port);
    sa.len = sizeof(sockaddr_in6);
    return sa;
  }
  return make_error("to_sockaddr " + endpoint.to_string() + ": host is not an IP address");
}

Endpoint from_sockaddr(const sockaddr* addr, socklen_t len) {
  Endpoint ep;
  if (addr == nullptr || len < static_cast<socklen_t>(sizeof(sa_family_t))) return ep;
  switch (addr->sa_family) {
    case AF_INET:
    case AF_INET6: {
      if (auto ip = ip_address_of(addr, len)) {
        ep.host = ip->host_text();
        ep.port = ip->port;
      }
      return ep;
    }
    case AF_UNIX: {
      constexpr auto kPathOffset = offsetof(sockaddr_un, sun_path);
      ep.kind = Endpoint::Kind::UnixPath;
      auto size = static_cast<std::size_t>(len);
      if (size <= kPathOffset) return ep;  // unnamed: the kernel returns only the family
      size = std::min(size - kPathOffset, sizeof(sockaddr_un::sun_path));
      const char* sun_path = reinterpret_cast<const sockaddr_un*>(addr)->sun_path;
      if (sun_path[0] == '\0') {
        // Abstract: every byte after the leading NUL up to `len` is the name.
        ep.kind = Endpoint::Kind::UnixAbstract;
        ep.path.assign(sun_path + 1, size - 1);
        return ep;
      }
      // Paths may or may not include their terminating NUL in `len`.
      ep.path.assign(sun_path, strnlen(sun_path, size));
      return ep;
    }
    default:
      return ep;
  }
}

std::optional<IpAddress> ip_address_of(const sockaddr* addr, socklen_t len) {
  if (addr == nullptr) return std::nullopt;
  IpAddress ip;
  ip.family = addr->sa_family;
  // Copied out: `addr` may point into a byte buffer with no alignment to speak of.
  if (ip.family == AF_INET && len >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
    sockaddr_in in4{};
    std::memcpy(&in4, addr, sizeof in4);
    ip.v4 = in4.sin_addr;
    ip.port = ntohs(in4.sin_port);
    return ip;
  }
  if (ip.family == AF_INET6 && len >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
    sockaddr_in6 in6{};
    std::memcpy(&in6, addr, sizeof in6);
    ip.v6 = in6.sin6_addr;
    ip.port = ntohs(in6.sin6_port);
    return ip;
  }
  return std::nullopt;
}

SockAddr to_sockaddr(const IpAddress& ip) {
  SockAddr out;
  if (ip.family == AF_INET) {
    auto& in4 = reinterpret_cast<sockaddr_in&>(out.storage);
    in4.sin_family = AF_INET;
    in4.sin_port = htons(ip.port);
    in4.sin_addr = ip.v4;
    out.len = sizeof in4;
  } else {
    auto& in6 = reinterpret_cast<sockaddr_in6&>(out.storage);
    in6.sin6_family = AF_INET6;
    in6.sin6_port = htons(ip.port);
    in6.sin6_addr = ip.v6;
    out.len = sizeof in6;
  }
  return out;
}

std::string IpAddress::host_text() const {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(family, family == AF_INET ? static_cast<const void*>(&v4) : static_cast<const void*>(&v6), buf, sizeof buf);
  return buf;
}

std::string format_sockaddr(const sockaddr* addr, socklen_t len) {
  if (addr == nullptr || len < static_cast<socklen_t>(sizeof(sa_family_t))) return "(no address)";
  int family = addr->sa_family;
  if (family != AF_INET && family != AF_INET6 && family != AF_UNIX) {
    return "(address family " + std::to_string(family) + ")";
  }
  return from_sockaddr(addr, len).to_string();
}

bool is_multicast_address(std::string_view ip_literal) {
  std::string host(ip_literal);
  in_addr a4{};
  if (inet_pton(AF_INET, host.c_str(), &a4) == 1) return (ntohl(a4.s_addr) >> 28) == 0xE;
  in6_addr a6{};
  if (inet_pton(AF_INET6, host.c_str(), &a6) == 1) return a6.s6_addr[0] == 0xFF;
  return false;
}

}  // namespace echorelay::net
