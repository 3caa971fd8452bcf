// UDP (and multicast) echo, served by the daemon's workers: each worker that serves a
// socket reads it on its own loop (recvmmsg) and answers each datagram by unicast to
// its sender from the socket it arrived on (sendmmsg), with no hand-off between
// threads. Owns its sockets' serving, not their binding (listen/ binds or adopts
// them; multicast membership is set there through net/multicast.hpp).
#pragma once

#include <memory>
#include <vector>

#include "config/config.hpp"
#include "net/poller.hpp"
#include "obs/metrics.hpp"
#include "udp/datagram_server.hpp"

namespace echorelay::udp {

// `sockets`: bound, non-blocking datagram sockets of this listener (one unless
// `sockets` > 1 with SO_REUSEPORT). The server does not close them: the caller keeps
// ownership so they can be handed to a successor. `loops`: the daemon's workers; each
// socket is read by `workers` of them (0 = all). Its stop() sweeps when asked: a
// process closing the sockets for good (SIGTERM) is the last to read what they hold.
std::unique_ptr<DatagramServer> make_echo_server(const config::Listener& listener, std::vector<int> sockets,
                                                 obs::ListenerCounters& counters, std::vector<net::LoopRef> loops);

}  // namespace echorelay::udp
