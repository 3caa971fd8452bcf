// The dialer: Go's net.Dialer for relay upstreams. One connect covers the whole
// `connect_timeout`; `source_address` is bound before connecting; `upstream_keepalive`
// is set on the connected socket; names with several addresses are raced per RFC 8305
// (Happy Eyeballs v2): families interleaved, the next attempt starts after
// `fallback_delay` or as soon as the previous one fails, the first to connect wins and
// the rest are closed. Runs on the calling coroutine's executor (one worker thread).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <optional>

#include "config/config.hpp"
#include "net/fd.hpp"
#include "obs/metrics.hpp"
#include "upstream/resolver.hpp"

namespace echorelay::upstream {

struct DialOptions {
  config::Duration connect_timeout = std::chrono::seconds(3);
  config::Duration keepalive = std::chrono::seconds(30);
  std::optional<net::Endpoint> source_address;
  config::Duration fallback_delay = std::chrono::milliseconds(300);
};

struct DialError {
  obs::UpstreamError kind = obs::UpstreamError::Other;
  std::string message;  // "connect tcp 127.0.0.1:9: connection refused"
};

struct DialResult {
  net::Fd fd;      // connected, non-blocking; invalid on failure
  int family = 0;  // AF_INET, AF_INET6 or AF_UNIX of `fd`
  DialError error;
};

// Sorts addresses for Happy Eyeballs: alternate families, starting with the family of
// the resolver's first choice (RFC 8305 section 4). Pure; unit-tested.
Addresses interleave_families(const Addresses& addresses);

// Connects to one of `addresses` before `deadline`.
boost::asio::awaitable<DialResult> dial(const Addresses& addresses, const DialOptions& options,
                                        std::chrono::steady_clock::time_point deadline);

}  // namespace echorelay::upstream
