// UDP (and multicast) relay. A udp listener keeps one session per client address
// (nginx's and Envoy's model): its own connected upstream socket, replies sent back to
// that client from the listener's socket, `session_timeout` idle expiry, and
// `max_sessions` (the oldest idle session is evicted, counted). A multicast listener
// with handler = "relay" instead forwards every datagram to every upstream (fan-out)
// and ignores replies. Owns the serving of its sockets, not their binding.
#pragma once

#include <memory>
#include <vector>

#include "config/config.hpp"
#include "obs/metrics.hpp"
#include "upstream/resolver.hpp"
#include "upstream/upstream_pool.hpp"

namespace echorelay::udp {

class RelayServer {
 public:
  // `sockets`: bound, non-blocking datagram sockets of this listener; the caller keeps
  // ownership (they may be handed to a successor). `resolver` outlives the server.
  RelayServer(const config::Listener& listener, std::vector<int> sockets, obs::ListenerCounters& counters,
              upstream::Resolver& resolver);
  ~RelayServer();  // stop() if still running
  RelayServer(const RelayServer&) = delete;
  RelayServer& operator=(const RelayServer&) = delete;

  void start();
  // Stop taking datagrams off the listener sockets (they stay open for a successor);
  // replies from upstreams of live sessions are still relayed until stop(). Idempotent.
  void stop_reading();
  // stop_reading(), close every session, join every thread.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace echorelay::udp
