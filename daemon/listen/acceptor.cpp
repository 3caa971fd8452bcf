// StreamAcceptor; see acceptor.hpp.
#include "listen/acceptor.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/basic_socket_acceptor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/system_error.hpp>
#include <spdlog/spdlog.h>

#include "net/socket_options.hpp"

namespace echorelay::listen {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

std::uint64_t default_max_connections(const config::Listener& spec);

namespace {

// Accepts per turn of the worker's loop before it serves its sessions again.
constexpr unsigned kAcceptsPerTurn = 64;
// Queued connections a stopping listener takes over before it closes.
constexpr unsigned kBacklogTakeLimit = 4096;

}  // namespace

struct StreamAcceptor::Impl : std::enable_shared_from_this<Impl> {
  Impl(asio::io_context& c, int fd, const config::Listener& s, obs::ListenerCounters& k, Limits l, PickContext p,
       OnAccept o)
      : ctx(c),
        protocol(protocol_of(fd)),
        acceptor(c),
        timer(c),
        spec(s),
        counters(k),
        limits(l),
        pick(std::move(p)),
        on_accept(std::move(o)) {
    boost::system::error_code ec;
    const int duplicate = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (duplicate < 0) {
      ec.assign(errno, boost::system::system_category());
    } else {
      acceptor.assign(protocol, duplicate, ec);
      if (ec) ::close(duplicate);
    }
    // accept4 runs until the queue is empty: on a blocking socket (systemd passes
    // them blocking unless NonBlocking=yes) the last call would stall the worker.
    if (!ec) acceptor.non_blocking(true, ec);
    // A listener that cannot accept must fail the start (App reports it and exits 1),
    // never let the process report READY=1 with a dead listener.
    if (ec) throw boost::system::system_error(ec, "listener " + spec.name + ": cannot start accepting");
    max_connections = spec.max_connections != 0 ? spec.max_connections : default_max_connections(spec);
  }

  static asio::generic::stream_protocol protocol_of(int fd) {
    auto id = net::identify_socket(fd);
    const int family = id ? id->domain : AF_INET;
    return {family, family == AF_UNIX ? 0 : IPPROTO_TCP};
  }

  asio::awaitable<void> loop();
  int accept_one();
  bool allowed_peer(int fd);
  bool over_limit();

  asio::io_context& ctx;
  const asio::generic::stream_protocol protocol;
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
    auto [ec] = co_await acceptor.async_wait(asio::socket_base::wait_read, asio::as_tuple(asio::use_awaitable));
    if (ec == asio::error::operation_aborted || paused) break;
    int err = ec ? ec.value() : 0;
    // Edge-triggered underneath: accept until the queue is empty, yielding now and
    // then so that one listener's burst does not starve the worker's sessions.
    for (unsigned n = 1; err == 0 && !paused; ++n) {
      err = accept_one();
      if (err == 0 && n % kAcceptsPerTurn == 0) co_await asio::post(ctx, asio::use_awaitable);
    }
    if (err == EAGAIN || paused) {
      backoff = std::chrono::milliseconds(0);
      continue;
    }
    // EMFILE, ENFILE, ENOBUFS, ENOMEM and anything unexpected: retrying at once would
    // spin on a condition that takes time to clear.
    counters.add(counters.accept_errors);
    backoff = backoff.count() == 0 ? std::chrono::milliseconds(5) : std::min(backoff * 2, std::chrono::milliseconds(1000));
    const auto now = Clock::now();
    if (now - last_warning >= std::chrono::seconds(5)) {
      last_warning = now;
      spdlog::warn("listener {}: accept: {}; retrying in {}ms", spec.name, std::strerror(err), backoff.count());
    }
    timer.expires_after(backoff);
    co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
  }
}

// One connection off the queue, handed on or refused; 0, or the errno that ends the
// round (EAGAIN: the queue is empty).
int StreamAcceptor::Impl::accept_one() {
  // Close-on-exec from birth: a hot restart's fork must not hand connections to the
  // successor (it would hold them for its whole life, and pass them on again).
  const int fd = ::accept4(acceptor.native_handle(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    // The peer gave up while queued, or a signal: go on with the next one.
    if (err == ECONNABORTED || err == EINTR || err == EPROTO) return 0;
    return err == EWOULDBLOCK ? EAGAIN : err;
  }
  counters.add(counters.connections_accepted);
  if (over_limit()) {
    counters.refuse(obs::Refuse::MaxConnections);
    ::close(fd);
    return 0;
  }
  if (spec.protocol == config::Protocol::Unix && !allowed_peer(fd)) {
    counters.refuse(obs::Refuse::PeerNotAllowed);
    ::close(fd);
    return 0;
  }
  StreamSocket socket(pick());
  boost::system::error_code ec;
  socket.assign(protocol, fd, ec);
  // Asio keeps its own idea of the blocking mode; the fd is non-blocking already, and
  // the sessions hand theirs to a Poller, where a blocking fd would stall the worker.
  if (!ec) socket.non_blocking(true, ec);
  if (ec) {
    spdlog::warn("listener {}: cannot take an accepted connection: {}", spec.name, ec.message());
    if (!socket.is_open()) ::close(fd);
    return 0;
  }
  counters.connections_active.fetch_add(1, std::memory_order_relaxed);
  limits.total_active->fetch_add(1, std::memory_order_relaxed);
  on_accept(std::move(socket), net::ConnectionSlot(&counters, limits.total_active, limits.last_connection));
  return 0;
}

StreamAcceptor::StreamAcceptor(asio::io_context& ctx, int listen_fd, const config::Listener& spec,
                               obs::ListenerCounters& counters, Limits limits, PickContext pick, OnAccept on_accept)
    : impl_(std::make_shared<Impl>(ctx, listen_fd, spec, counters, limits, std::move(pick), std::move(on_accept))) {}

StreamAcceptor::~StreamAcceptor() = default;

void StreamAcceptor::start() {
  auto impl = impl_;
  asio::co_spawn(impl->ctx, [impl] { return impl->loop(); }, asio::detached);
}

void StreamAcceptor::pause(bool take_backlog, std::function<void()> paused) {
  asio::post(impl_->ctx, [impl = impl_, take_backlog, paused = std::move(paused)] {
    impl->paused = true;
    if (take_backlog && impl->acceptor.is_open()) {
      // Bounded: a flood arriving faster than we take it must not hold the drain.
      for (unsigned n = 0; n < kBacklogTakeLimit && impl->accept_one() == 0; ++n) {
      }
    }
    boost::system::error_code ignored;
    impl->timer.cancel();
    impl->acceptor.close(ignored);
    if (paused) paused();
  });
}

}  // namespace echorelay::listen
