// UDP (and multicast) echo: reader threads copy datagrams into a bounded queue that a
// pool of worker threads answers by unicast to the sender. Owns its sockets' serving,
// not their binding (listen/ binds or adopts them; multicast membership is set there
// through net/multicast.hpp).
#pragma once

#include <memory>
#include <vector>

#include "config/config.hpp"
#include "net/fd.hpp"
#include "obs/metrics.hpp"

namespace echorelay::udp {

class EchoServer {
 public:
  // `sockets`: bound, non-blocking datagram sockets of this listener (one unless
  // `sockets` > 1 with SO_REUSEPORT). The server does not close them: the caller keeps
  // ownership so they can be handed to a successor.
  EchoServer(const config::Listener& listener, std::vector<int> sockets, obs::ListenerCounters& counters);
  ~EchoServer();  // stop() if still running
  EchoServer(const EchoServer&) = delete;
  EchoServer& operator=(const EchoServer&) = delete;

  void start();
  // Readers stop taking datagrams off the sockets (they stay open in the kernel, for a
  // successor); datagrams already queued are still answered. Any thread; idempotent.
  void stop_reading();
  // stop_reading(), answer what is queued, join every thread. Any thread but a pool one.
  // With `sweep_sockets`, the readers first read and answer what the sockets hold: a
  // process closing them for good (SIGTERM) is the last to read those datagrams.
  void stop(bool sweep_sockets = false);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace echorelay::udp
