// Cidr; see cidr.hpp.
#include "net/cidr.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <charconv>
#include <cstring>

namespace echorelay::net {

namespace {

bool prefix_matches(const unsigned char* a, const unsigned char* b, unsigned prefix) {
  const unsigned whole = prefix / 8;
  if (std::memcmp(a, b, whole) != 0) return false;
  const unsigned rest = prefix % 8;
  if (rest == 0) return true;
  const auto mask = static_cast<unsigned char>(0xff << (8 - rest));
  return (a[whole] & mask) == (b[whole] & mask);
}

}  // namespace

bool Cidr::contains(const sockaddr_storage& address) const {
  if (address.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(address);
    if (family != AF_INET) return false;
    return prefix_matches(bytes.data(), reinterpret_cast<const unsigned char*>(&in.sin_addr), prefix);
  }
  if (address.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(address);
    const auto* raw = reinterpret_cast<const unsigned char*>(&in6.sin6_addr);
    if (family == AF_INET6) return prefix_matches(bytes.data(), raw, prefix);
    // A dual-stack socket reports IPv4 sources as ::ffff:a.b.c.d.
    if (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) return prefix_matches(bytes.data(), raw + 12, prefix);
  }
  return false;
}

std::string Cidr::to_string() const {
  char text[INET6_ADDRSTRLEN] = {};
  ::inet_ntop(family, bytes.data(), text, sizeof text);
  return std::string(text) + "/" + std::to_string(prefix);
}

Result<Cidr> parse_cidr(std::string_view text) {
  const auto slash = text.find('/');
  const std::string host(text.substr(0, slash));
  Cidr c;
  if (::inet_pton(AF_INET, host.c_str(), c.bytes.data()) == 1) {
    c.family = AF_INET;
  } else if (::inet_pton(AF_INET6, host.c_str(), c.bytes.data()) == 1) {
    c.family = AF_INET6;
  } else {
    return make_error("\"" + std::string(text) + "\" is not an address range (\"192.0.2.0/24\", \"2001:db8::/32\")");
  }
  const unsigned max = c.family == AF_INET ? 32 : 128;
  c.prefix = max;
  if (slash != std::string_view::npos) {
    const std::string_view digits = text.substr(slash + 1);
    unsigned value = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (digits.empty() || ec != std::errc{} || end != digits.data() + digits.size() || value > max) {
      return make_error("\"" + std::string(text) + "\": the prefix length must be 0.." + std::to_string(max));
    }
    c.prefix = value;
  }
  for (unsigned bit = c.prefix; bit < max; ++bit) {
    if ((c.bytes[bit / 8] >> (7 - bit % 8)) & 1) {
      return make_error("\"" + std::string(text) + "\" has bits set after the /" + std::to_string(c.prefix) +
                        " prefix: the range is written with its network address");
    }
  }
  return c;
}

bool admitted_by(const std::vector<Cidr>& ranges, const sockaddr_storage& address) {
  if (ranges.empty()) return true;
  for (const auto& r : ranges) {
    if (r.contains(address)) return true;
  }
  return false;
}

}  // namespace echorelay::net
