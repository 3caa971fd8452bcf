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
#include "udp/datagram_server.hpp"

namespace echorelay::upstream {
class Resolver;
}

namespace echorelay::udp {

// `sockets`: bound, non-blocking datagram sockets of this listener. The caller keeps
// them (for a successor) and may close them once stop()'s `stopped` has run, like an
// echo's: the server reads and replies through duplicates of its own (F_DUPFD_CLOEXEC,
// made here; throws std::system_error naming the listener when the kernel refuses),
// closed by its destructor after the last session, so no number a session still sends
// on can be given to another socket meanwhile. `loops`: the daemon's workers; each
// socket is read by `workers` of them (0 = all), and every loop owns the sessions of its
// share of the clients. `resolver` outlives the server; its answers arrive on the first
// loop.
//
// stop(sweep, stopped) ends the reading only (with `sweep`, what the sockets hold is
// forwarded first, bounded, as the echo answers it): live sessions go on relaying their
// upstreams' replies to their clients. The destructor ends every session (its summary
// line logged) and leaves nothing on the loops: directly when they have stopped (App
// destroys its servers after its worker pool), else done on each loop and waited for.
std::unique_ptr<DatagramServer> make_relay_server(const config::Listener& listener, std::vector<int> sockets,
                                                  obs::ListenerCounters& counters, std::vector<net::LoopRef> loops,
                                                  upstream::Resolver& resolver);

}  // namespace echorelay::udp
