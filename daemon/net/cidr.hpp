// Address ranges for allow lists ("192.0.2.0/24", "2001:db8::/32", or one address).
// An IPv4 range also matches IPv4-mapped IPv6 sources, as a dual-stack socket sees them.
#pragma once

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "util/result.hpp"

namespace echorelay::net {

struct Cidr {
  int family = 0;                       // AF_INET or AF_INET6
  std::array<unsigned char, 16> bytes{};  // network address, host bits zero
  unsigned prefix = 0;                  // 0..32 or 0..128

  bool contains(const sockaddr_storage& address) const;
  std::string to_string() const;  // "192.0.2.0/24"
  friend bool operator==(const Cidr&, const Cidr&) = default;
};

// "ADDR/PREFIX" or "ADDR" (a single host). Host bits set under the prefix are refused:
// "192.0.2.1/24" is more likely a typo than a range.
Result<Cidr> parse_cidr(std::string_view text);

// True when `address` is in any of `ranges` (an empty list admits everyone).
bool admitted_by(const std::vector<Cidr>& ranges, const sockaddr_storage& address);

}  // namespace echorelay::net
