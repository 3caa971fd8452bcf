// UDP mirror: every datagram a udp or multicast listener receives goes, byte for
// byte, to every upstream (collector), one 1-in-`sample` where an upstream says so.
// One-way: what collectors send back is read and dropped. Served on the daemon's
// workers like the echo (udp/datagram_readers.hpp): each worker sends a batch to each
// collector with one sendmmsg on a socket of its own connected to that collector, never
// waiting: a collector whose socket buffer is full loses the datagrams
// (upstream_busy), so a slow or dead one never slows the others. With
// `preserve_source` the copies leave from the exporter's address and port through a
// raw socket (CAP_NET_RAW), since collectors tell exporters apart by source address.
#pragma once

#include <boost/asio/io_context.hpp>
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

// `sockets` are borrowed (kept by the caller for a successor). `resolver` is needed
// only when an upstream is a host name; names are resolved on `control` and
// re-resolved as their answers expire. Per-upstream counters come from `metrics`. Its
// start() throws std::system_error naming the listener when the kernel refuses
// (preserve_source without CAP_NET_RAW names the capability).
std::unique_ptr<DatagramServer> make_mirror_server(const config::Listener& listener, std::vector<int> sockets,
                                                   obs::Registry& metrics, std::vector<net::LoopRef> loops,
                                                   upstream::Resolver* resolver, boost::asio::io_context& control);

}  // namespace echorelay::udp
