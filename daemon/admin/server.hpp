// The admin HTTP endpoint: GET /metrics (Prometheus text), /healthz, /readyz.
// Runs on the control io_context; one short-lived coroutine per request.
#pragma once

#include <boost/asio/io_context.hpp>
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
  // Binds and starts serving; the real bound address is returned (port 0 binds).
  Result<net::Endpoint> start(const net::Endpoint& listen);
  void stop();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace echorelay::admin
