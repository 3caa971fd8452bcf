// Stream relay session; see tcp_relay.hpp. Memory stays flat with a slow reader: a
// direction never reads again before what it read was written, so back-pressure
// reaches the sender through the kernel's buffers, and idle sessions pin no buffer
// (reads go through per-thread scratch or a pooled pipe).
#include "relay/tcp_relay.hpp"

#include <fcntl.h>
#include <sys/socket.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <array>
#include <cerrno>
#include <spdlog/spdlog.h>
#include <span>
#include <vector>

#include "net/socket_options.hpp"
#include "relay/dialer.hpp"
#include "relay/proxy_protocol.hpp"

namespace echorelay::relay {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using Socket = asio::generic::stream_protocol::socket;
constexpr auto kUseAwaitable = asio::as_tuple(asio::use_awaitable);

namespace {

std::atomic<std::uint64_t> next_relay_id{1};
constexpr std::size_t kSpliceChunk = 64 * 1024;
// A read this large means bulk data: move it with splice from then on.
constexpr std::size_t kBulkRead = 32 * 1024;
// Spliced chunks smaller than this, four in a row, mean request/response again.
constexpr std::size_t kSmallChunk = 4 * 1024;

std::span<char> scratch() {
  thread_local std::array<char, 64 * 1024> buffer;
  return buffer;
}

// Pipes for splice(2), pooled per worker thread: a direction holds one only while
// bytes are in flight, so 10,000 idle relays do not cost 20,000 extra fds.
class PipePool {
 public:
  struct Pipe {
    int read = -1;
    int write = -1;
  };
  ~PipePool() {
    for (auto& p : free_) close(p);
  }
  bool acquire(Pipe& out) {
    if (!free_.empty()) {
      out = free_.back();
      free_.pop_back();
      return true;
    }
    int fds[2];
    if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return false;
    out = {fds[0], fds[1]};
    return true;
  }
  // Only empty pipes go back; one with bytes left is closed.
  void release(Pipe& p, bool empty) {
    if (p.read < 0) return;
    if (empty && free_.size() < 64) {
      free_.push_back(p);
    } else {
      close(p);
    }
    p = {};
  }

 private:
  static void close(Pipe& p) {
    ::close(p.read);
    ::close(p.write);
  }
  std::vector<Pipe> free_;
};

PipePool& pipes() {
  thread_local PipePool pool;
  return pool;
}


class RelaySession final : public lifecycle::Session, public std::enable_shared_from_this<RelaySession> {
 public:
  RelaySession(Socket client, RelayListener& listener, lifecycle::ConnectionSlot slot)
      : client_(std::move(client)),
        upstream_(client_.get_executor()),
        idle_timer_(client_.get_executor()),
        listener_(listener),
        counters_(listener.counters),
        slot_(std::move(slot)),
        id_(next_relay_id.fetch_add(1, std::memory_order_relaxed)),
        started_(Clock::now()) {}

  asio::awaitable<void> run();

  // A relayed connection is not ours to cut at a request boundary: it runs until it
  // ends or the drain deadline passes.
  void drain() override {}
  void close_now() override { abort("drain timeout"); }

 private:
  struct Direction {
    Socket* from;
    Socket* to;
    obs::Counter* read_counter;
    obs::Counter* write_counter;
    std::uint64_t* bytes;
  };

  asio::awaitable<bool> connect_upstream();
  // `unsent` is the direction's own buffer for what the kernel did not take at once;
  // reused, so a slow reader costs no allocation per write.
  asio::awaitable<bool> send_all(Socket& to, std::span<const char> data, obs::Counter& counter,
                                 std::vector<char>& unsent);
  asio::awaitable<void> pump(Direction d);
  void abort(const char* why) {
    if (aborted_) return;
    aborted_ = true;
    reason_ = why;
    boost::system::error_code ignored;
    client_.cancel(ignored);
    upstream_.cancel(ignored);
    idle_timer_.cancel();
  }
  void fail_io(int err, bool upstream_side) {
    if (upstream_side) counters_.upstream_error(err == ECONNRESET || err == EPIPE ? obs::UpstreamError::Reset
                                                                                : obs::UpstreamError::Other);
    abort(upstream_side ? (err == ECONNRESET ? "upstream reset" : "upstream error")
                        : (err == ECONNRESET ? "client reset" : "client error"));
  }
  void watch_idle();
  void touch() { last_activity_ = Clock::now(); }
  void finish();

  Socket client_;
  Socket upstream_;
  asio::steady_timer idle_timer_;
  RelayListener& listener_;
  obs::ListenerCounters& counters_;
  lifecycle::ConnectionSlot slot_;
  UpstreamPool::Upstream* chosen_ = nullptr;
  const std::uint64_t id_;
  const Clock::time_point started_;
  Clock::time_point last_activity_ = Clock::now();
  std::uint64_t client_to_upstream_ = 0;
  std::uint64_t upstream_to_client_ = 0;
  std::string upstream_name_ = "-";
  std::string peer_ = "-";  // filled only when debug logging is on
  const char* reason_ = "closed";
  std::string error_detail_;
  bool aborted_ = false;
  bool splice_ = false;
  bool upstream_is_tcp_ = false;
};

asio::awaitable<bool> RelaySession::connect_upstream() {
  const auto& spec = listener_.spec;
  const auto deadline = Clock::now() + spec.connect_timeout;
  DialOptions options{spec.connect_timeout, spec.upstream_keepalive, spec.source_address, spec.fallback_delay};
  // Each upstream in the balancer's order, until one connects or the connect_timeout
  // (which covers the whole failover) runs out.
  const auto plan = listener_.pool.plan();
  for (std::size_t i = 0; i < plan.size(); ++i) {
    auto* upstream = plan[i];
    const auto now = Clock::now();
    if (aborted_ || now >= deadline) break;
    // Go's partialDeadline: the time left is shared among the upstreams left, so an
    // unanswered first choice cannot use up the whole connect_timeout; but each try
    // gets at least 2 s (or all that is left) to stay meaningful.
    const auto remaining = deadline - now;
    auto share = remaining / static_cast<long>(plan.size() - i);
    constexpr auto kMinimumTry = std::chrono::seconds(2);
    if (share < kMinimumTry) share = std::min<Clock::duration>(remaining, kMinimumTry);
    const auto attempt_deadline = now + share;
    Addresses addresses;
    const auto& endpoint = upstream->endpoint;
    if (endpoint.is_unix() || endpoint.is_ip_literal()) {
      auto addr = net::to_sockaddr(endpoint);
      if (addr) addresses.push_back(*addr);
    } else {
      auto resolved = co_await listener_.resolver.async_resolve(endpoint.host, endpoint.port);
      if (!resolved) {
        counters_.upstream_error(obs::UpstreamError::Resolve);
        listener_.pool.failed(*upstream);
        error_detail_ = resolved.error();
        continue;
      }
      addresses = std::move(*resolved);
    }
    const auto dial_started = Clock::now();
    DialResult dialed = co_await dial(addresses, options, attempt_deadline);
    if (!dialed.fd) {
      counters_.upstream_error(dialed.error.kind);
      listener_.pool.failed(*upstream);
      error_detail_ = dialed.error.message;
      continue;
    }
    counters_.observe_connect(std::chrono::duration<double>(Clock::now() - dial_started).count());
    listener_.pool.connected(*upstream);
    chosen_ = upstream;
    upstream_name_ = endpoint.to_string();
    const int family = dialed.family;
    upstream_is_tcp_ = family != AF_UNIX;
    boost::system::error_code ec;
    upstream_.assign(asio::generic::stream_protocol(family, family == AF_UNIX ? 0 : IPPROTO_TCP), dialed.fd.release(), ec);
    co_return !ec;
  }
  if (error_detail_.empty()) error_detail_ = "connect timeout";
  co_return false;
}

asio::awaitable<bool> RelaySession::send_all(Socket& to, std::span<const char> data, obs::Counter& counter,
                                             std::vector<char>& unsent) {
  unsent.clear();
  while (!data.empty()) {
    const ssize_t n = ::send(to.native_handle(), data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      counters_.add(counter, static_cast<std::uint64_t>(n));
      data = data.subspan(static_cast<std::size_t>(n));
      touch();
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN) {
      fail_io(errno, &to == &upstream_);
      co_return false;
    }
    // `data` may be the thread's scratch: keep our own copy across the suspension
    // (once; after a partial send it already points into that copy).
    const bool copied = !unsent.empty() && data.data() >= unsent.data() && data.data() < unsent.data() + unsent.size();
    if (!copied) {
      unsent.assign(data.begin(), data.end());
      data = unsent;
    }
    auto [ec] = co_await to.async_wait(Socket::wait_write, kUseAwaitable);
    if (aborted_ || ec) co_return false;
  }
  co_return true;
}

// One direction of the relay. It starts by copying through per-thread scratch (the
// cheapest path for small request/response traffic: one recv, one send) and switches
// to splice(2) once a read fills most of the scratch, i.e. when bulk data is flowing;
// a few small chunks in a row switch it back (HAProxy's splice-auto idea).
asio::awaitable<void> RelaySession::pump(Direction d) {
  PipePool::Pipe pipe;
  std::vector<char> unsent;
  std::size_t in_pipe = 0;
  bool spliced = false;
  unsigned small_chunks = 0;
  for (;;) {
    auto [ec] = co_await d.from->async_wait(Socket::wait_read, kUseAwaitable);
    if (aborted_ || ec) break;
    if (!spliced) {
      auto buf = scratch();
      const ssize_t n = ::recv(d.from->native_handle(), buf.data(), buf.size(), MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        fail_io(errno, d.from == &upstream_);
        break;
      }
      if (n == 0) {
        // Everything read before the FIN has been written: pass the FIN on and let
        // the other direction keep flowing (half-close).
        ::shutdown(d.to->native_handle(), SHUT_WR);
        break;
      }
      touch();
      counters_.add(*d.read_counter, static_cast<std::uint64_t>(n));
      *d.bytes += static_cast<std::uint64_t>(n);
      if (!co_await send_all(*d.to, std::span<const char>(buf.data(), static_cast<std::size_t>(n)), *d.write_counter,
                             unsent)) {
        break;
      }
      if (splice_ && static_cast<std::size_t>(n) >= kBulkRead) {
        spliced = true;
        small_chunks = 0;
      }
      continue;
    }
    if (pipe.read < 0 && !pipes().acquire(pipe)) {
      abort("pipe2 failed");
      break;
    }
    const ssize_t n = ::splice(d.from->native_handle(), nullptr, pipe.write, nullptr, kSpliceChunk,
                               SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      fail_io(errno, d.from == &upstream_);
      break;
    }
    if (n == 0) {
      ::shutdown(d.to->native_handle(), SHUT_WR);
      break;
    }
    touch();
    counters_.add(*d.read_counter, static_cast<std::uint64_t>(n));
    *d.bytes += static_cast<std::uint64_t>(n);
    in_pipe = static_cast<std::size_t>(n);
    while (in_pipe > 0) {
      const ssize_t m =
          ::splice(pipe.read, nullptr, d.to->native_handle(), nullptr, in_pipe, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
      if (m > 0) {
        in_pipe -= static_cast<std::size_t>(m);
        counters_.add(*d.write_counter, static_cast<std::uint64_t>(m));
        touch();
        continue;
      }
      if (m < 0 && errno == EINTR) continue;
      if (m < 0 && errno != EAGAIN) {
        fail_io(errno, d.to == &upstream_);
        break;
      }
      auto [wec] = co_await d.to->async_wait(Socket::wait_write, kUseAwaitable);
      if (aborted_ || wec) break;
    }
    if (in_pipe > 0) break;
    pipes().release(pipe, true);
    if (static_cast<std::size_t>(n) < kSmallChunk && ++small_chunks >= 4) spliced = false;
    if (static_cast<std::size_t>(n) >= kSmallChunk) small_chunks = 0;
  }
  pipes().release(pipe, in_pipe == 0);
}

void RelaySession::watch_idle() {
  const auto idle = listener_.spec.idle_timeout;
  if (idle.count() <= 0) return;
  idle_timer_.expires_at(last_activity_ + idle);
  idle_timer_.async_wait([self = shared_from_this(), idle](const boost::system::error_code& ec) {
    if (ec || self->aborted_) return;
    if (Clock::now() - self->last_activity_ >= idle) {
      self->abort("idle timeout");
    } else {
      self->watch_idle();
    }
  });
}

void RelaySession::finish() {
  if (chosen_) listener_.pool.released(*chosen_);
  idle_timer_.cancel();
  boost::system::error_code ec;
  spdlog::debug("[c{} {}] relay closed: peer {}, upstream {}, {} bytes up, {} bytes down, {}ms, {}{}{}{}", id_,
                listener_.spec.name, peer_, upstream_name_, client_to_upstream_, upstream_to_client_,
                std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started_).count(), reason_,
                error_detail_.empty() ? "" : chosen_ ? " (after failover: " : ": ", error_detail_,
                error_detail_.empty() || !chosen_ ? "" : ")");
  client_.close(ec);
  upstream_.close(ec);
}

asio::awaitable<void> RelaySession::run() {
  using namespace asio::experimental::awaitable_operators;
  if (spdlog::should_log(spdlog::level::debug)) {
    boost::system::error_code ec;
    const auto peer = client_.remote_endpoint(ec);
    if (!ec) peer_ = net::format_sockaddr(peer.data(), static_cast<socklen_t>(peer.size()));
  }
  if (!co_await connect_upstream()) {
    if (!aborted_) reason_ = "no upstream";
    finish();
    co_return;
  }
  const auto& spec = listener_.spec;
  if (spec.proxy_protocol != config::ProxyProtocol::Off) {
    net::SockAddr peer, local;
    peer.len = local.len = sizeof(sockaddr_storage);
    ::getpeername(client_.native_handle(), peer.get(), &peer.len);
    ::getsockname(client_.native_handle(), local.get(), &local.len);
    const std::string header = spec.proxy_protocol == config::ProxyProtocol::V1
                                   ? proxy_v1_header(peer.get(), peer.len, local.get(), local.len)
                                   : proxy_v2_header(peer.get(), peer.len, local.get(), local.len, false);
    std::vector<char> unsent;
    if (!co_await send_all(upstream_, header, counters_.upstream_bytes_sent, unsent)) {
      finish();
      co_return;
    }
  }
  splice_ = spec.splice && spec.protocol == config::Protocol::Tcp && upstream_is_tcp_;
  touch();
  watch_idle();
  Direction up{&client_, &upstream_, &counters_.bytes_received, &counters_.upstream_bytes_sent, &client_to_upstream_};
  Direction down{&upstream_, &client_, &counters_.upstream_bytes_received, &counters_.bytes_sent, &upstream_to_client_};
  co_await (pump(up) && pump(down));
  if (!aborted_) reason_ = "both sides closed";
  finish();
}

}  // namespace

void start_relay_session(Socket client, RelayListener& listener, lifecycle::ConnectionSlot slot,
                         lifecycle::SessionSet& sessions) {
  auto executor = client.get_executor();
  auto session = std::make_shared<RelaySession>(std::move(client), listener, std::move(slot));
  sessions.push_back(*session);
  asio::co_spawn(executor, [session]() { return session->run(); }, asio::detached);
}

}  // namespace echorelay::relay
