// The admin HTTP endpoint: GET /metrics (Prometheus text), /healthz, /readyz.
// Runs on the control io_context; one short-lived coroutine per request.
#pragma once

#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <functional>
#include <memory>

#include "net/endpoint.hpp"
#include "obs/metrics.hpp"
#include "util/result.hpp"

namespace echorelay::admin {

class Server {
 public:
  // `ready` answers /readyz: true while listeners accept (false during a drain).
  Server(boost::asio::io_context& ctx, const obs::Registry& metrics, std::function<bool()> ready);
  ~Server();
  // Serves on `inherited` when it is a listening socket for `listen` (a hot restart
  // hands the admin socket over like any listener), else binds. Returns the real bound
  // address (port 0 binds).
  Result<net::Endpoint> start(const net::Endpoint& listen, int inherited_fd = -1);
  // The listening socket, for handing over; -1 when not started.
  int native_handle();
  // Connections served at once; one more is closed at once (its fd is not kept).
  void set_max_connections(std::uint64_t n);
  void stop();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace echorelay::admin
