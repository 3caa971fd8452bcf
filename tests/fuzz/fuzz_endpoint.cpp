// Endpoint parse/format (daemon/net/endpoint.*): whatever parses formats to a text that
// parses back to the same endpoint and formats the same (format(parse(x)) is stable);
// IP-literal and Unix endpoints survive the trip through a sockaddr; and
// from_sockaddr/format_sockaddr read raw sockaddr bytes of any length within bounds.
//
// Input: mode (1 byte), then text or raw sockaddr bytes.
#include <sys/socket.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "fuzz_input.hpp"
#include "net/endpoint.hpp"

namespace {

using namespace echorelay::net;

void check_text(const std::string& text, HostRule rule) {
  auto first = parse_endpoint(text, rule);
  if (!first) {
    FUZZ_CHECK(!first.error().empty());
    return;
  }
  const std::string formatted = first->to_string();
  auto second = parse_endpoint(formatted, rule);
  FUZZ_CHECK(second.ok());
  FUZZ_CHECK(*second == *first);
  FUZZ_CHECK(second->to_string() == formatted);
  // An IP-only parse is also a names-allowed parse, with the same result.
  if (rule == HostRule::IpOnly) {
    auto named = parse_endpoint(text, HostRule::NamesAllowed);
    FUZZ_CHECK(named.ok() && *named == *first);
  }
  if (first->is_unix() || first->is_ip_literal()) {
    auto sa = to_sockaddr(*first);
    FUZZ_CHECK(sa.ok());
    FUZZ_CHECK(sa->len <= static_cast<socklen_t>(sizeof(sockaddr_storage)));
    FUZZ_CHECK(from_sockaddr(sa->get(), sa->len) == *first);
    FUZZ_CHECK(format_sockaddr(sa->get(), sa->len) == formatted);
  } else {
    FUZZ_CHECK(rule == HostRule::NamesAllowed);
    FUZZ_CHECK(!to_sockaddr(*first).ok());
  }
}

void check_sockaddr(const std::string& raw) {
  if (raw.size() > sizeof(sockaddr_storage)) return;
  // Exactly `len` bytes on the heap, so a read past them is an ASan report.
  auto buf = std::make_unique<char[]>(raw.empty() ? 1 : raw.size());
  std::memcpy(buf.get(), raw.data(), raw.size());
  const auto* addr = reinterpret_cast<const sockaddr*>(buf.get());
  const auto len = static_cast<socklen_t>(raw.size());
  if (raw.size() < sizeof(sa_family_t)) {
    FUZZ_CHECK(format_sockaddr(addr, len) == "(no address)");
    return;
  }
  const Endpoint ep = from_sockaddr(addr, len);
  const std::string text = format_sockaddr(addr, len);
  FUZZ_CHECK(!text.empty());
  if (addr->sa_family == AF_INET || addr->sa_family == AF_INET6 ||
      (addr->sa_family == AF_UNIX && !(ep.kind == Endpoint::Kind::UnixPath && ep.path.empty()))) {
    FUZZ_CHECK(text == ep.to_string());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  switch (in.pick(3)) {
    case 0:
      check_text(in.rest(), HostRule::IpOnly);
      break;
    case 1:
      check_text(in.rest(), HostRule::NamesAllowed);
      break;
    default:
      check_sockaddr(in.rest());
      break;
  }
  return 0;
}
