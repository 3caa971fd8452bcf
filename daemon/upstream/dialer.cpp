// Dialer; see dialer.hpp. The race is a small single-threaded state machine: every
// attempt is its own coroutine on the same executor, and the main coroutine sleeps on
// one timer that an attempt's completion cancels, so it wakes for "fallback delay
// passed", "an attempt finished" or "deadline".
#include "upstream/dialer.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <memory>

#include "net/socket_options.hpp"

namespace echorelay::upstream {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using Socket = asio::generic::stream_protocol::socket;

namespace {

obs::UpstreamError classify(int err) {
  switch (err) {
    case ECONNREFUSED: return obs::UpstreamError::Refused;
    case ECONNRESET:
    case EPIPE: return obs::UpstreamError::Reset;
    case ETIMEDOUT: return obs::UpstreamError::Timeout;
    case ENETUNREACH:
    case EHOSTUNREACH:
    case ENETDOWN:
    case EHOSTDOWN: return obs::UpstreamError::Unreachable;
    default: return obs::UpstreamError::Other;
  }
}

std::string describe(const net::SockAddr& addr) {
  const char* kind = addr.family() == AF_UNIX ? "unix" : "tcp";
  return std::string("connect ") + kind + " " + net::format_sockaddr(addr.get(), addr.len);
}

struct Race : std::enable_shared_from_this<Race> {
  explicit Race(asio::any_io_executor ex) : wake(ex) {}

  struct Attempt {
    std::unique_ptr<Socket> socket;
    bool finished = false;
  };

  asio::awaitable<void> attempt(std::size_t index, net::SockAddr addr, DialOptions options);
  void finish_attempt(std::size_t index, int err, const net::SockAddr& addr) {
    attempts[index].finished = true;
    ++finished;
    if (err == 0 && winner < 0) {
      winner = static_cast<int>(index);
    } else if (err != 0) {
      last_error = {classify(err), describe(addr) + ": " + net::errno_text(err)};
    }
    wake.cancel();
  }

  asio::steady_timer wake;
  std::vector<Attempt> attempts;
  std::size_t finished = 0;
  int winner = -1;
  bool abandoned = false;
  DialError last_error{obs::UpstreamError::Other, "no address to connect to"};
};

asio::awaitable<void> Race::attempt(std::size_t index, net::SockAddr addr, DialOptions options) {
  auto self = shared_from_this();
  const int family = addr.family();
  net::Fd fd(::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) {
    finish_attempt(index, errno, addr);
    co_return;
  }
  if (options.source_address && family != AF_UNIX) {
    net::Endpoint source = *options.source_address;
    auto src = net::to_sockaddr(source);
    if (!src || src->family() != family) {
      finish_attempt(index, EAFNOSUPPORT, addr);
      co_return;
    }
    // Without it a fixed source port would stay blocked by TIME_WAIT connections.
    (void)net::set_int_option(fd.get(), IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1, "IP_BIND_ADDRESS_NO_PORT");
    if (::bind(fd.get(), src->get(), src->len) != 0) {
      finish_attempt(index, errno, addr);
      co_return;
    }
  }
  if (family != AF_UNIX) {
    (void)net::set_int_option(fd.get(), IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
    (void)net::set_keepalive(fd.get(), std::chrono::duration_cast<std::chrono::seconds>(options.keepalive));
  }
  int err = 0;
  if (::connect(fd.get(), addr.get(), addr.len) != 0) err = errno;
  if (err != 0 && err != EINPROGRESS && err != EAGAIN) {
    finish_attempt(index, err, addr);
    co_return;
  }
  auto& slot = attempts[index];
  slot.socket = std::make_unique<Socket>(wake.get_executor());
  boost::system::error_code ec;
  slot.socket->assign(asio::generic::stream_protocol(family, family == AF_UNIX ? 0 : IPPROTO_TCP), fd.release(), ec);
  if (ec) {
    finish_attempt(index, ec.value(), addr);
    co_return;
  }
  if (err != 0) {
    auto [wait_ec] = co_await slot.socket->async_wait(Socket::wait_write, asio::as_tuple(asio::use_awaitable));
    if (abandoned || wait_ec == asio::error::operation_aborted) {
      if (!slot.finished) finish_attempt(index, ETIMEDOUT, addr);
      co_return;
    }
    socklen_t len = sizeof err;
    if (::getsockopt(slot.socket->native_handle(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  }
  finish_attempt(index, err, addr);
}

}  // namespace

Addresses interleave_families(const Addresses& addresses) {
  if (addresses.empty()) return {};
  const int first = addresses.front().family();
  Addresses preferred, other, result;
  for (const auto& a : addresses) (a.family() == first ? preferred : other).push_back(a);
  std::size_t i = 0, j = 0;
  while (i < preferred.size() || j < other.size()) {
    if (i < preferred.size()) result.push_back(preferred[i++]);
    if (j < other.size()) result.push_back(other[j++]);
  }
  return result;
}

asio::awaitable<DialResult> dial(const Addresses& addresses, const DialOptions& options, Clock::time_point deadline) {
  auto executor = co_await asio::this_coro::executor;
  auto race = std::make_shared<Race>(executor);
  const Addresses order = interleave_families(addresses);
  race->attempts.resize(order.size());
  std::size_t started = 0;
  DialResult result;

  while (true) {
    if (race->winner >= 0) break;
    const bool all_started = started == order.size();
    if (all_started && race->finished == started) break;  // everything failed
    const auto now = Clock::now();
    if (now >= deadline) {
      race->last_error = {obs::UpstreamError::Timeout,
                          (order.empty() ? std::string("connect") : describe(order.front())) + ": i/o timeout"};
      break;
    }
    // Start the next attempt at once when nothing is in flight (the previous failed),
    // else after the fallback delay.
    if (!all_started && race->finished == started) {
      asio::co_spawn(executor, race->attempt(started, order[started], options), asio::detached);
      ++started;
      continue;
    }
    const auto wake_at = all_started ? deadline : std::min(deadline, now + options.fallback_delay);
    race->wake.expires_at(wake_at);
    const std::size_t finished_before = race->finished;
    auto [ec] = co_await race->wake.async_wait(asio::as_tuple(asio::use_awaitable));
    if (!ec && race->finished == finished_before && !all_started && Clock::now() < deadline) {
      // The fallback delay passed with the current attempts still pending: race another.
      asio::co_spawn(executor, race->attempt(started, order[started], options), asio::detached);
      ++started;
    }
  }

  race->abandoned = true;
  for (std::size_t i = 0; i < race->attempts.size(); ++i) {
    auto& a = race->attempts[i];
    if (!a.socket) continue;
    if (static_cast<int>(i) == race->winner) {
      result.family = order[i].family();
      result.fd = net::Fd(a.socket->release());
    } else {
      boost::system::error_code ignored;
      a.socket->close(ignored);  // cancels a pending connect; its coroutine sees `abandoned`
    }
  }
  if (!result.fd) result.error = race->last_error;
  co_return result;
}

}  // namespace echorelay::upstream
