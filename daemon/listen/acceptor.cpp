// StreamAcceptor; see acceptor.hpp.
#include "listen/acceptor.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/basic_socket_acceptor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include "net/socket_options.hpp"

namespace echorelay::listen {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

std::uint64_t default_max_connections(const config::Listener& spec);

struct StreamAcceptor::Impl : std::enable_shared_from_this<Impl> {
  Impl(asio::io_context& c, int fd, const config::Listener& s, obs::ListenerCounters& k, Limits l, PickContext p,
       OnAccept o)
      : ctx(c), acceptor(c), timer(c), spec(s), counters(k), limits(l), pick(std::move(p)), on_accept(std::move(o)) {
    auto id = net::identify_socket(fd);
    const int family = id ? id->domain : AF_INET;
    const int protocol = family == AF_UNIX ? 0 : IPPROTO_TCP;
    boost::system::error_code ec;
    acceptor.assign(asio::generic::stream_protocol(family, protocol), ::fcntl(fd, F_DUPFD_CLOEXEC, 3), ec);
    if (ec) spdlog::error("listener {}: cannot start accepting: {}", spec.name, ec.message());
    max_connections = spec.max_connections != 0 ? spec.max_connections : default_max_connections(spec);
  }

  asio::awaitable<void> loop();
  bool allowed_peer(int fd);
  bool over_limit();

  asio::io_context& ctx;
  asio::basic_socket_acceptor<asio::generic::stream_protocol> acceptor;
  asio::steady_timer timer;
  const config::Listener& spec;
  obs::ListenerCounters& counters;
  Limits limits;
  PickContext pick;
  OnAccept on_accept;
  Clock::time_point last_warning{};
  bool paused = false;
  // max_connections, or by default a share of RLIMIT_NOFILE (see default_max_connections).
  std::uint64_t max_connections = 0;
};

bool StreamAcceptor::Impl::allowed_peer(int fd) {
  if (spec.allow_uids.empty() && spec.allow_gids.empty()) return true;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return false;
  const bool uid_ok = std::find(spec.allow_uids.begin(), spec.allow_uids.end(), cred.uid) != spec.allow_uids.end();
  const bool gid_ok = std::find(spec.allow_gids.begin(), spec.allow_gids.end(), cred.gid) != spec.allow_gids.end();
  return uid_ok || gid_ok;
}

std::uint64_t default_max_connections(const config::Listener& spec) {
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) != 0 || nofile.rlim_cur == RLIM_INFINITY) return 0;
  // An echo connection holds one fd, a relayed one two: either way one listener gets at
  // most half of the fds, and the other listeners and the admin endpoint keep the rest.
  const std::uint64_t fds_per_connection = spec.handler == config::Handler::Relay ? 2 : 1;
  return std::max<std::uint64_t>(1, static_cast<std::uint64_t>(nofile.rlim_cur) / 2 / fds_per_connection);
}

bool StreamAcceptor::Impl::over_limit() {
  const auto active = counters.connections_active.load(std::memory_order_relaxed);
  if (max_connections && static_cast<std::uint64_t>(active) >= max_connections) return true;
  const auto total = limits.total_active->load(std::memory_order_relaxed);
  return limits.max_total && static_cast<std::uint64_t>(total) >= limits.max_total;
}

asio::awaitable<void> StreamAcceptor::Impl::loop() {
  auto self = shared_from_this();
  auto backoff = std::chrono::milliseconds(0);
  while (!paused && acceptor.is_open()) {
    asio::io_context& target = pick();
    auto [ec, socket] = co_await acceptor.async_accept(target, asio::as_tuple(asio::use_awaitable));
    // A connection accepted just before pause() is served, not dropped: dropping it
    // with its request unread would reset it. The drain reaches it on its worker.
    if (ec == asio::error::operation_aborted || (ec && paused)) break;
    if (ec) {
      if (ec == asio::error::connection_aborted) continue;  // the peer gave up while queued
      // EMFILE, ENFILE, ENOBUFS, ENOMEM and anything unexpected: retrying at once would
      // spin on a condition that takes time to clear.
      counters.add(counters.accept_errors);
      backoff = backoff.count() == 0 ? std::chrono::milliseconds(5) : std::min(backoff * 2, std::chrono::milliseconds(1000));
      const auto now = Clock::now();
      if (now - last_warning >= std::chrono::seconds(5)) {
        last_warning = now;
        spdlog::warn("listener {}: accept: {}; retrying in {}ms", spec.name, ec.message(), backoff.count());
      }
      timer.expires_after(backoff);
      co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
      continue;
    }
    backoff = std::chrono::milliseconds(0);
    counters.add(counters.connections_accepted);
    if (over_limit()) {
      counters.refuse(obs::Refuse::MaxConnections);
      boost::system::error_code ignored;
      socket.close(ignored);
      continue;
    }
    if (spec.protocol == config::Protocol::Unix && !allowed_peer(socket.native_handle())) {
      counters.refuse(obs::Refuse::PeerNotAllowed);
      boost::system::error_code ignored;
      socket.close(ignored);
      continue;
    }
    // Asio leaves an accepted socket blocking until it first waits on it; the sessions
    // hand theirs to a Poller, where a blocking fd would stall the worker (splice(2)
    // blocks on one whatever its flags say).
    boost::system::error_code nb;
    socket.non_blocking(true, nb);
    if (nb) {
      spdlog::warn("listener {}: cannot make a connection non-blocking: {}", spec.name, nb.message());
      continue;  // closed by the socket's destructor
    }
    counters.connections_active.fetch_add(1, std::memory_order_relaxed);
    limits.total_active->fetch_add(1, std::memory_order_relaxed);
    on_accept(std::move(socket), lifecycle::ConnectionSlot(&counters, limits.total_active));
  }
}

StreamAcceptor::StreamAcceptor(asio::io_context& ctx, int listen_fd, const config::Listener& spec,
                               obs::ListenerCounters& counters, Limits limits, PickContext pick, OnAccept on_accept)
    : impl_(std::make_shared<Impl>(ctx, listen_fd, spec, counters, limits, std::move(pick), std::move(on_accept))) {}

StreamAcceptor::~StreamAcceptor() = default;

void StreamAcceptor::start() {
  auto impl = impl_;
  asio::co_spawn(impl->ctx, [impl] { return impl->loop(); }, asio::detached);
}

void StreamAcceptor::pause() {
  asio::post(impl_->ctx, [impl = impl_] {
    impl->paused = true;
    boost::system::error_code ignored;
    impl->timer.cancel();
    impl->acceptor.close(ignored);
  });
}

}  // namespace echorelay::listen
