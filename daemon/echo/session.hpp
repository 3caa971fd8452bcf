// The echo session for stream sockets (TCP, Unix, abstract): per-request deadlines,
// framing, drain at a request boundary. Runs entirely on one worker's io_context.
#pragma once

#include <boost/asio/generic/stream_protocol.hpp>
#include <cstdint>
#include <memory>

#include "config/config.hpp"
#include "lifecycle/session.hpp"
#include "obs/metrics.hpp"

namespace echorelay::echo {

// Releases a connection's place in the per-listener and daemon-wide counts when the
// session ends, whichever thread that happens on.
struct ConnectionSlot {
  obs::ListenerCounters* counters = nullptr;
  obs::Gauge* total = nullptr;
  ConnectionSlot() = default;
  ConnectionSlot(obs::ListenerCounters* c, obs::Gauge* t) : counters(c), total(t) {}
  ConnectionSlot(ConnectionSlot&& o) noexcept : counters(std::exchange(o.counters, nullptr)), total(o.total) {}
  ConnectionSlot& operator=(ConnectionSlot&&) = delete;
  ~ConnectionSlot() {
    if (counters) {
      counters->connections_active.fetch_sub(1, std::memory_order_relaxed);
      total->fetch_sub(1, std::memory_order_relaxed);
    }
  }
};

// Call on the worker thread that owns `sessions`. Starts the session on `socket`'s executor (which must be `sessions`' worker). The
// listener spec and counters must outlive every session (App keeps them until workers
// have stopped).
void start_session(boost::asio::generic::stream_protocol::socket socket, const config::Listener& spec,
                   obs::ListenerCounters& counters, ConnectionSlot slot, lifecycle::SessionSet& sessions);

}  // namespace echorelay::echo
