// UDP (and multicast) relay, served by the daemon's workers. A udp listener keeps one
// session per client address (nginx's and Envoy's model): its own connected upstream
// socket, replies sent back to that client from the listener's socket, `session_timeout`
// idle expiry, and `max_sessions` (the oldest idle session is evicted, counted). Each
// client address belongs to one worker, which keeps its session on its own loop. A
// multicast listener with handler = "relay" instead forwards every datagram to every
// upstream (fan-out) from the worker that read it, and ignores replies. Owns the serving
// of its sockets, not their binding.
#pragma once

#include <memory>
#include <vector>

#include "config/config.hpp"
#include "net/poller.hpp"
#include "obs/metrics.hpp"

namespace echorelay::upstream {
class Resolver;
}

namespace echorelay::udp {

class RelayServer {
 public:
  // `sockets`: bound, non-blocking datagram sockets of this listener; the caller keeps
  // ownership (they may be handed to a successor, and sessions reply from them until
  // stop()). `loops`: the daemon's workers; each socket is read by `workers` of them
  // (0 = all), and every loop owns the sessions of its share of the clients.
  // `resolver` outlives the server; its answers arrive on the first loop.
  RelayServer(const config::Listener& listener, std::vector<int> sockets, obs::ListenerCounters& counters,
              std::vector<net::LoopRef> loops, upstream::Resolver& resolver);
  ~RelayServer();  // stop()
  RelayServer(const RelayServer&) = delete;
  RelayServer& operator=(const RelayServer&) = delete;

  // Before the loops run (it registers with their pollers); throws std::system_error
  // naming the listener when the kernel refuses.
  void start();
  // Stop taking datagrams off the listener sockets (they stay open for a successor);
  // replies from upstreams of live sessions are still relayed until stop(). Returns
  // once no loop reads them any more. Idempotent.
  void stop_reading();
  // stop_reading(), then every session closes (its summary line logged) and nothing of
  // this server is left on the loops, whether they still run (done on each loop, waited
  // for) or have stopped. Idempotent.
  //
  // start(), stop_reading() and stop() are called from one thread that is none of the
  // loops', while the loops run or after they stopped.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace echorelay::udp
