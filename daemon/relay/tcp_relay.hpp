// The stream relay session (TCP, Unix, abstract; any listener kind to any upstream
// kind): pick an upstream (balancing, failover within connect_timeout), dial it, send
// the PROXY header, then pump both directions until both have ended. A FIN is passed
// on as a FIN after everything before it was written; `idle_timeout` ends a session in
// which neither side moved. Bulk TCP↔TCP transfer switches to splice(2). One summary
// log line.
#pragma once

#include <boost/asio/generic/stream_protocol.hpp>

#include "config/config.hpp"
#include "net/session.hpp"
#include "net/poller.hpp"
#include "obs/metrics.hpp"
#include "upstream/resolver.hpp"
#include "upstream/upstream_pool.hpp"

namespace echorelay::relay {

// What every session of one relay listener shares; owned by App, outlives sessions.
struct RelayListener {
  RelayListener(const config::Listener& s, obs::ListenerCounters& c, upstream::Resolver& r)
      : spec(s), counters(c), resolver(r), pool(s.upstreams, s.balance) {}
  const config::Listener& spec;
  obs::ListenerCounters& counters;
  upstream::Resolver& resolver;
  upstream::UpstreamPool pool;
};

// Call on the worker thread that owns `sessions` and `poller`; `client` lives on that
// worker. Dialing runs on the worker's io_context; once connected, the session moves
// both fds to `poller` (see net/poller.hpp).
net::Session* start_relay_session(boost::asio::generic::stream_protocol::socket client, RelayListener& listener,
                                        net::ConnectionSlot slot, net::SessionSet& sessions,
                                        net::Poller& poller);

}  // namespace echorelay::relay
