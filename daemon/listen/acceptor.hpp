// The accept loop of one stream listener: backs off on resource exhaustion (EMFILE,
// ENFILE, ENOBUFS, ENOMEM: 5 ms doubling to 1 s, rate-limited warning, never spins),
// ignores ECONNABORTED, enforces max_connections (listener and daemon-wide) and the
// Unix SO_PEERCRED allow lists, then hands each connection to `on_accept`.
#pragma once

#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>
#include <functional>
#include <memory>

#include "config/config.hpp"
#include "net/session.hpp"
#include "obs/metrics.hpp"

namespace echorelay::listen {

using StreamSocket = boost::asio::generic::stream_protocol::socket;

class StreamAcceptor {
 public:
  // Chooses the io_context a new connection will live on.
  using PickContext = std::function<boost::asio::io_context&()>;
  // Called on the acceptor's thread with a socket bound to the picked context.
  using OnAccept = std::function<void(StreamSocket, net::ConnectionSlot)>;

  struct Limits {
    obs::Gauge* total_active = nullptr;
    std::uint64_t max_total = 0;  // 0 = no daemon-wide limit
    const net::LastConnectionWatch* last_connection = nullptr;  // the drain's gate, if any
  };

  // `listen_fd` stays owned by the caller: the acceptor works on a duplicate, so
  // stopping it never closes the listening socket (a successor may hold it). Throws
  // boost::system::system_error, naming the listener, when it cannot accept on it.
  StreamAcceptor(boost::asio::io_context& ctx, int listen_fd, const config::Listener& spec,
                 obs::ListenerCounters& counters, Limits limits, PickContext pick, OnAccept on_accept);
  ~StreamAcceptor();

  void start();  // any thread; the loop runs on `ctx`
  // Stop accepting and close our duplicate of the listening socket; posts to `ctx`.
  // With `take_backlog`, connections the kernel already completed are accepted first
  // (they are served like any other): nobody else will accept them once the last
  // holder closes the socket, and the kernel would reset them. Without, they wait in
  // the backlog for whoever else holds the socket (a successor).
  // `paused` runs on the acceptor's thread once it accepts no more: every connection it
  // took is counted by then, so a drain that waits for it cannot end in between.
  void pause(bool take_backlog = false, std::function<void()> paused = {});

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace echorelay::listen
