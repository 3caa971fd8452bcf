// The config loader (daemon/config/*): TOML text -> diagnostics or a Config. Never
// crashes or hangs (libFuzzer's -timeout); `--check` (load_config on the same bytes as a
// file) says the same, diagnostic for diagnostic, so loading is deterministic and never
// accepts what --check refuses; and what it accepts holds the invariants the rest of the
// daemon relies on.
#include <sys/mman.h>
#include <unistd.h>

#include <cctype>
#include <cstdint>
#include <set>
#include <cstring>
#include <string>
#include <string_view>

#include "config/config.hpp"
#include "fuzz_input.hpp"

namespace {

using namespace echorelay::config;
using echorelay::net::Endpoint;

// --check: load_config() on a file holding exactly these bytes.
std::string check_path() {
  static int fd = ::memfd_create("fuzz.toml", 0);
  FUZZ_CHECK(fd >= 0);
  return "/proc/self/fd/" + std::to_string(fd);
}

LoadResult check_file(std::string_view text) {
  const int fd = std::stoi(check_path().substr(std::strlen("/proc/self/fd/")));
  FUZZ_CHECK(::ftruncate(fd, 0) == 0);
  FUZZ_CHECK(::pwrite(fd, text.data(), text.size(), 0) == static_cast<ssize_t>(text.size()));
  return load_config(check_path());
}

void check_endpoint_round_trip(const Endpoint& e) {
  auto again = echorelay::net::parse_endpoint(e.to_string(), echorelay::net::HostRule::NamesAllowed);
  FUZZ_CHECK(again.ok() && *again == e);
}

void check_invariants(const Config& c) {
  FUZZ_CHECK(!c.listeners.empty());
  FUZZ_CHECK(c.daemon.drain_timeout.count() >= 0 && c.daemon.restart_timeout.count() >= 0);
  FUZZ_CHECK(c.resolver.timeout.count() > 0 && c.resolver.attempts >= 1);
  if (c.admin.enabled) {
    FUZZ_CHECK(c.admin.listen.kind == Endpoint::Kind::Inet && c.admin.listen.is_ip_literal());
  }
  std::set<std::string> names;
  std::set<std::string> identities;
  for (const Listener& l : c.listeners) {
    FUZZ_CHECK(!l.name.empty());
    FUZZ_CHECK(names.insert(l.name).second);  // unique names
    FUZZ_CHECK(l.endpoint.is_unix() == (l.protocol == Protocol::Unix));
    if (!l.endpoint.is_unix()) FUZZ_CHECK(l.endpoint.is_ip_literal());
    if (l.protocol == Protocol::Multicast) {
      FUZZ_CHECK(echorelay::net::is_multicast_address(l.endpoint.host));
      FUZZ_CHECK(l.sockets == 1);
    }
    check_endpoint_round_trip(l.endpoint);
    const bool ephemeral = !l.endpoint.is_unix() && l.endpoint.port == 0;
    if (!ephemeral) {
      // One listener per (protocol, address); the admin endpoint is not a listener's.
      FUZZ_CHECK(identities.insert(std::string(to_string(l.protocol)) + " " + l.endpoint.to_string()).second);
      if (c.admin.enabled && l.protocol == Protocol::Tcp) FUZZ_CHECK(!(l.endpoint == c.admin.listen));
    }
    FUZZ_CHECK(l.backlog >= 1 && l.sockets >= 1 && l.queue >= 1);
    FUZZ_CHECK(l.read_timeout.count() >= 0 && l.write_timeout.count() >= 0 && l.request_timeout.count() >= 0);
    FUZZ_CHECK(l.keepalive.count() >= 0 && l.keepalive.count() % 1000 == 0);
    if (l.v6only && l.protocol == Protocol::Tcp) FUZZ_CHECK(l.endpoint.is_ipv6());
    FUZZ_CHECK(l.upstream_samples.size() == l.upstreams.size());
    for (std::uint32_t n : l.upstream_samples) FUZZ_CHECK(n >= 1);
    if (l.handler == Handler::Mirror) {
      FUZZ_CHECK(l.is_datagram() && !l.upstreams.empty());
      for (const Endpoint& u : l.upstreams) FUZZ_CHECK(!u.is_unix());
    } else {
      FUZZ_CHECK(!l.preserve_source);
      for (std::uint32_t n : l.upstream_samples) FUZZ_CHECK(n == 1);
    }
    if (l.is_stream()) FUZZ_CHECK(l.allow_sources.empty());
    if (l.handler == Handler::Relay) {
      FUZZ_CHECK(!l.upstreams.empty());
      for (const Endpoint& u : l.upstreams) {
        if (l.is_datagram()) FUZZ_CHECK(!u.is_unix());
        check_endpoint_round_trip(u);
      }
      if (l.is_datagram()) FUZZ_CHECK(l.proxy_protocol != ProxyProtocol::V1);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 16 * 1024) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const LoadResult first = parse_config(text, "fuzz.toml");
  FUZZ_CHECK(first.config.has_value() == first.diagnostics.empty());
  for (const auto& d : first.diagnostics) FUZZ_CHECK(d.text.rfind("fuzz.toml", 0) == 0);

  // --check (load_config on a file with these bytes) gives the same answer word for word
  // as parsing the bytes under that file's name: the loader is deterministic and --check
  // is what starts. (Not by rewriting one name into the other: a value may hold the name.)
  const LoadResult checked = check_file(text);
  const LoadResult same_name = parse_config(text, check_path());
  FUZZ_CHECK(checked.config.has_value() == first.config.has_value());
  FUZZ_CHECK(same_name.config.has_value() == first.config.has_value());
  FUZZ_CHECK(checked.diagnostics.size() == same_name.diagnostics.size());
  FUZZ_CHECK(checked.diagnostics.size() == first.diagnostics.size());
  for (std::size_t i = 0; i < checked.diagnostics.size(); ++i) {
    FUZZ_CHECK(checked.diagnostics[i].text == same_name.diagnostics[i].text);
  }

  if (first.config) check_invariants(*first.config);
  return 0;
}
