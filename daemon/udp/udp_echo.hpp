// UDP (and multicast) echo, served by the daemon's workers: each worker that serves a
// socket reads it on its own loop (recvmmsg) and answers each datagram by unicast to
// its sender from the socket it arrived on (sendmmsg), with no hand-off between
// threads. Owns its sockets' serving, not their binding (listen/ binds or adopts
// them; multicast membership is set there through net/multicast.hpp).
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "config/config.hpp"
#include "net/poller.hpp"
#include "obs/metrics.hpp"
#include "udp/datagram_server.hpp"

namespace echorelay::udp {

class EchoServer final : public DatagramServer {
 public:
  // `sockets`: bound, non-blocking datagram sockets of this listener (one unless
  // `sockets` > 1 with SO_REUSEPORT). The server does not close them: the caller keeps
  // ownership so they can be handed to a successor. `loops`: the daemon's workers;
  // each socket is read by `workers` of them (0 = all).
  EchoServer(const config::Listener& listener, std::vector<int> sockets, obs::ListenerCounters& counters,
             std::vector<net::LoopRef> loops);
  // The loops must have stopped running, or stop()'s `stopped` have run: what is still
  // registered is taken off the pollers here, which only the loop's own thread may do.
  ~EchoServer();
  EchoServer(const EchoServer&) = delete;
  EchoServer& operator=(const EchoServer&) = delete;

  // See DatagramServer. A process closing the sockets for good (SIGTERM) sweeps: it is
  // the last to read what they hold.
  void start() override;
  void stop(bool sweep_sockets, std::function<void()> stopped) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace echorelay::udp
