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


// Call on the worker thread that owns `sessions`. Starts the session on `socket`'s executor (which must be `sessions`' worker). The
// listener spec and counters must outlive every session (App keeps them until workers
// have stopped).
void start_session(boost::asio::generic::stream_protocol::socket socket, const config::Listener& spec,
                   obs::ListenerCounters& counters, lifecycle::ConnectionSlot slot, lifecycle::SessionSet& sessions);

}  // namespace echorelay::echo
