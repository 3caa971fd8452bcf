// Endpoint: the address forms the config speaks (tcp/udp "host:port", "[v6]:port",
// Unix "/path", abstract "@name") with pure parse/format and sockaddr conversion.
// No sockets are opened here; resolving host names is the relay's job.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "util/result.hpp"

namespace echorelay::net {

// Linux limits sun_path to 108 bytes including the terminating NUL.
inline constexpr std::size_t kMaxUnixPath = sizeof(sockaddr_un::sun_path) - 1;

struct Endpoint {
  enum class Kind { Inet, UnixPath, UnixAbstract };

  Kind kind = Kind::Inet;
  std::string host;  // Inet: an IP literal (no brackets) or, where names are allowed, a host name
  std::uint16_t port = 0;
  std::string path;  // UnixPath: the file path; UnixAbstract: the name without '@'

  bool is_unix() const { return kind != Kind::Inet; }
  bool is_ip_literal() const;  // Inet with a numeric host
  bool is_ipv6() const;        // Inet with an IPv6 literal host
  // "0.0.0.0:7", "[::1]:7", "/run/x.sock", "@name"
  std::string to_string() const;

  friend bool operator==(const Endpoint&, const Endpoint&) = default;
};

struct SockAddr {
  sockaddr_storage storage{};
  socklen_t len = 0;
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
  sockaddr* get() { return reinterpret_cast<sockaddr*>(&storage); }
  int family() const { return storage.ss_family; }
};

enum class HostRule { IpOnly, NamesAllowed };

// Parses "host:port", "[v6]:port", "/path", "@name". `host` may be empty ("":7 / ":7")
// meaning the IPv6 wildcard with dual stack, as Go's net.Listen does.
Result<Endpoint> parse_endpoint(std::string_view text, HostRule rule = HostRule::IpOnly);

// Only for endpoints whose host is an IP literal (or Unix kinds).
Result<SockAddr> to_sockaddr(const Endpoint& endpoint);
// The inverse, for getsockname/getpeername/recvfrom results.
Endpoint from_sockaddr(const sockaddr* addr, socklen_t len);
std::string format_sockaddr(const sockaddr* addr, socklen_t len);

// An IPv4 or IPv6 address with its port, taken apart from (or put into) a sockaddr:
// the one place that knows the two layouts, for code that works on the address itself
// (PROXY headers, PKTINFO, text).
struct IpAddress {
  int family = AF_UNSPEC;  // AF_INET (v4 holds the address) or AF_INET6 (v6 does)
  in_addr v4{};
  in6_addr v6{};
  std::uint16_t port = 0;  // host order

  std::string host_text() const;  // "192.0.2.1", "2001:db8::1": no port, no brackets
};
// nullopt for any other family, or a length too short for the family's sockaddr.
std::optional<IpAddress> ip_address_of(const sockaddr* addr, socklen_t len);
SockAddr to_sockaddr(const IpAddress& ip);

// True for IPv4 224.0.0.0/4 and IPv6 ff00::/8 literals.
bool is_multicast_address(std::string_view ip_literal);

}  // namespace echorelay::net
