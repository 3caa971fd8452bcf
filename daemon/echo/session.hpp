// The echo session for stream sockets (TCP, Unix, abstract): per-request deadlines,
// framing, drain at a request boundary. Runs entirely on one worker's thread, on that
// worker's Poller (not Asio's reactor): see net/poller.hpp for why.
#pragma once

#include <boost/asio/generic/stream_protocol.hpp>
#include <cstdint>
#include <memory>

#include "config/config.hpp"
#include "net/session.hpp"
#include "net/poller.hpp"
#include "obs/metrics.hpp"

namespace echorelay::echo {

// Call on the worker thread that owns `sessions` and `poller`; the session takes the
// socket's fd over from Asio. The listener spec and counters must outlive every session
// (App keeps them until workers have stopped). Null when the connection could not be
// taken over (logged; it is closed and its slot released).
net::Session* start_session(boost::asio::generic::stream_protocol::socket socket, const config::Listener& spec,
                   obs::ListenerCounters& counters, net::ConnectionSlot slot, net::SessionSet& sessions,
                   net::Poller& poller);

}  // namespace echorelay::echo
