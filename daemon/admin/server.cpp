// Admin HTTP with Boost.Beast; see server.hpp. Requests are tiny and rare, so each
// connection handles requests sequentially with a short deadline against idle clients.
#include "admin/server.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <spdlog/spdlog.h>

#include "admin/route.hpp"

namespace echorelay::admin {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
constexpr auto kUseAwaitable = asio::as_tuple(asio::use_awaitable);

struct Server::Impl : std::enable_shared_from_this<Impl> {
  Impl(asio::io_context& c, const obs::Registry& m, std::function<bool()> r)
      : ctx(c), acceptor(c), metrics(m), ready(std::move(r)) {}

  asio::awaitable<void> accept_loop() {
    auto self = shared_from_this();
    for (;;) {
      auto [ec, socket] = co_await acceptor.async_accept(kUseAwaitable);
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
      if (ec) {
        // Out of fds (or another resource): retrying at once would spin the control
        // loop; the listeners' own accept loops log and count the condition.
        asio::steady_timer pause(ctx, std::chrono::milliseconds(100));
        co_await pause.async_wait(kUseAwaitable);
        continue;
      }
      // Asio accepts without SOCK_CLOEXEC; this runs on the control thread, the one
      // that forks a successor, so no fork can come between accept and this.
      ::fcntl(socket.native_handle(), F_SETFD, FD_CLOEXEC);
      // A small cap: scrapes and probes need a handful, and idle connections held open
      // by a client must not eat the fds the listeners need.
      if (active >= max_connections) {
        refused += 1;
        const auto now = std::chrono::steady_clock::now();
        if (now - last_warning >= std::chrono::seconds(5)) {
          last_warning = now;
          spdlog::warn("admin: {} connections open (max_connections); closing new ones ({} so far)", active, refused);
        }
        boost::system::error_code ignored;
        socket.close(ignored);
        continue;
      }
      ++active;
      asio::co_spawn(ctx, serve(beast::tcp_stream(std::move(socket))), [self](std::exception_ptr) { --self->active; });
    }
  }

  asio::awaitable<void> serve(beast::tcp_stream stream) {
    auto self = shared_from_this();
    beast::flat_buffer buffer;
    for (;;) {
      http::request<http::empty_body> request;
      stream.expires_after(std::chrono::seconds(10));
      auto [ec, n] = co_await http::async_read(stream, buffer, request, kUseAwaitable);
      if (ec) break;
      http::response<http::string_body> response(http::status::ok, request.version());
      response.set(http::field::server, "echorelayd");
      response.keep_alive(request.keep_alive());
      switch (route(request.method(), std::string_view(request.target().data(), request.target().size()))) {
        case Route::MethodNotAllowed:
          response.result(http::status::method_not_allowed);
          response.body() = "method not allowed\n";
          break;
        case Route::Metrics:
          response.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
          response.body() = metrics.render_prometheus();
          break;
        case Route::Healthz:
          response.body() = "ok\n";
          break;
        case Route::Readyz: {
          const bool is_ready = ready();
          response.result(is_ready ? http::status::ok : http::status::service_unavailable);
          response.body() = is_ready ? "ready\n" : "not ready\n";
          break;
        }
        case Route::NotFound:
          response.result(http::status::not_found);
          response.body() = "not found\n";
          break;
      }
      response.prepare_payload();
      auto [wec, wn] = co_await http::async_write(stream, response, kUseAwaitable);
      if (wec || !response.keep_alive()) break;
    }
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

  asio::io_context& ctx;
  std::uint64_t max_connections = 64;
  std::uint64_t active = 0;  // the control loop's thread only
  std::uint64_t refused = 0;
  std::chrono::steady_clock::time_point last_warning{};
  tcp::acceptor acceptor;
  const obs::Registry& metrics;
  std::function<bool()> ready;
};

Server::Server(asio::io_context& ctx, const obs::Registry& metrics, std::function<bool()> ready)
    : impl_(std::make_shared<Impl>(ctx, metrics, std::move(ready))) {}

Server::~Server() = default;

Result<net::Endpoint> Server::start(const net::Endpoint& listen, int inherited_fd) {
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(listen.host, ec);
  if (ec) return make_error("admin listen " + listen.to_string() + ": " + ec.message());
  const tcp::endpoint endpoint(address, listen.port);
  auto& acceptor = impl_->acceptor;
  if (inherited_fd >= 0) {
    acceptor.assign(endpoint.protocol(), ::fcntl(inherited_fd, F_DUPFD_CLOEXEC, 3), ec);
    const auto local = acceptor.local_endpoint(ec);
    // The admin address may have changed in the new config: then bind afresh.
    if (ec || local.address() != address || (listen.port != 0 && local.port() != listen.port)) {
      acceptor.close(ec);
    }
  }
  if (!acceptor.is_open()) {
    if (acceptor.open(endpoint.protocol(), ec); ec) return make_error("socket tcp " + listen.to_string() + ": " + ec.message());
    ::fcntl(acceptor.native_handle(), F_SETFD, FD_CLOEXEC);  // the control thread: no fork in between
    acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
    if (acceptor.bind(endpoint, ec); ec) return make_error("bind tcp " + listen.to_string() + " (admin): " + ec.message());
    if (acceptor.listen(64, ec); ec) return make_error("listen tcp " + listen.to_string() + " (admin): " + ec.message());
  }
  ::fcntl(acceptor.native_handle(), F_SETFD, FD_CLOEXEC);
  const auto local = acceptor.local_endpoint(ec);
  net::Endpoint bound = listen;
  bound.port = local.port();
  auto impl = impl_;
  asio::co_spawn(impl->ctx, [impl] { return impl->accept_loop(); }, asio::detached);
  return bound;
}

void Server::set_max_connections(std::uint64_t n) { impl_->max_connections = n; }

int Server::native_handle() { return impl_->acceptor.is_open() ? impl_->acceptor.native_handle() : -1; }

void Server::stop() {
  boost::system::error_code ignored;
  impl_->acceptor.close(ignored);
}

}  // namespace echorelay::admin
