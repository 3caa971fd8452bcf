// Stream relay session; see tcp_relay.hpp. Memory stays flat with a slow reader: a
// direction never reads again before what it read was written, so back-pressure
// reaches the sender through the kernel's buffers, and idle sessions pin no buffer
// (reads go through per-thread scratch or a pooled pipe).
#include "relay/tcp_relay.hpp"

#include <fcntl.h>
#include <sys/socket.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <array>
#include <cerrno>
#include <cstring>
#include <spdlog/spdlog.h>

#include "obs/log.hpp"
#include <span>
#include <vector>

#include "net/fd.hpp"
#include "net/own_listeners.hpp"
#include "net/socket_options.hpp"
#include "net/stream_io.hpp"
#include "upstream/dialer.hpp"
#include "upstream/proxy_protocol.hpp"

namespace echorelay::relay {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using Socket = asio::generic::stream_protocol::socket;

namespace {

std::atomic<std::uint64_t> next_relay_id{1};
constexpr std::size_t kSpliceChunk = 64 * 1024;
// A read this large means bulk data: move it with splice from then on.
constexpr std::size_t kBulkRead = 32 * 1024;
// Spliced chunks smaller than this, four in a row, mean request/response again.
constexpr std::size_t kSmallChunk = 4 * 1024;
// Reads per direction per turn (up to 1 MiB) before the other sessions get theirs.
constexpr unsigned kChunksPerTurn = 16;

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

// A relayed connection from accept to close, whichever phase it ends in (the dial, or
// the pump it is handed to whole): its identity for the one summary line, the upstream
// it holds a place of in the balancer, and why it ended.
struct RelayRecord {
  std::uint64_t id = next_relay_id.fetch_add(1, std::memory_order_relaxed);
  Clock::time_point started = Clock::now();
  std::string peer = "-";  // filled only when debug logging is on
  std::string upstream_name = "-";
  upstream::UpstreamPool::Upstream* chosen = nullptr;
  const char* reason = "closed";
  std::string detail;    // why the last upstream failed, or why the pump could not start
  bool pumped = false;   // reached the pump: `detail` then tells of an earlier failover

  // The one exit: gives the balancer its place back and logs the summary line.
  void close(RelayListener& listener, std::uint64_t bytes_up, std::uint64_t bytes_down) {
    if (chosen) listener.pool.released(*chosen);
    chosen = nullptr;
    if (!spdlog::should_log(spdlog::level::debug)) return;
    const char* open = detail.empty() ? "" : pumped ? " (after failover: " : ": ";
    const std::string why = fmt::format("{}{}{}{}", reason, open, detail, !detail.empty() && pumped ? ")" : "");
    obs::log_session_end({.id = id,
                          .listener = listener.spec.name,
                          .kind = "relay",
                          .peer = peer,
                          .upstream = upstream_name,
                          .bytes_in = bytes_up,
                          .bytes_out = bytes_down,
                          .duration = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started),
                          .reason = why});
  }
};


// After the dial: both fds on the worker's Poller, one state machine for the two
// directions. A direction never reads again before what it read was written.
class RelayPump final : public net::Session {
 public:
  struct Handover {
    int client_fd;
    net::Fd upstream;
    std::vector<char> unsent_up;  // what of the PROXY header the kernel did not take
    RelayRecord record;
    bool splice;
  };

  RelayPump(Handover h, RelayListener& listener, net::ConnectionSlot slot, net::Poller& poller)
      : client_(*this, h.client_fd, false),
        upstream_(*this, h.upstream.release(), true),
        up_{&client_, &upstream_, &listener.counters.bytes_received, &listener.counters.upstream_bytes_sent},
        down_{&upstream_, &client_, &listener.counters.upstream_bytes_received, &listener.counters.bytes_sent},
        listener_(listener),
        counters_(listener.counters),
        slot_(std::move(slot)),
        poller_(poller),
        record_(std::move(h.record)),
        splice_(h.splice) {
    up_.unsent = std::move(h.unsent_up);
    record_.pumped = true;
  }

  // False (everything closed, logged) when the fds cannot be watched.
  bool start() {
    // Both fds are non-blocking: the acceptor and the dialer make them so.
    if (!poller_.add(client_.fd, client_) || !poller_.add(upstream_.fd, upstream_)) {
      record_.pumped = false;  // the detail is why it ends, not an earlier failover
      record_.detail = std::string("cannot watch the connection: ") + std::strerror(errno);
      abort("internal error");
      return false;
    }
    activity(Clock::now());
    return true;
  }

  // A relayed connection is not ours to cut at a request boundary: it runs until it
  // ends or the drain deadline passes.
  void drain() override {}
  // Cut by the drain deadline: reset both sides, so that neither takes the cut for a
  // stream that ended (the same as an echo session cut by it).
  void close_now() override {
    for (End* e : {&client_, &upstream_}) (void)net::set_linger(e->fd, 0);
    abort("drain timeout");
  }

 private:
  enum class Step { Go, Wait, Ended };

  struct End final : net::PollHandler {
    End(RelayPump& p, int f, bool up) : pump(p), fd(f), is_upstream(up) {}
    void on_ready(std::uint32_t events) override { pump.on_ready(*this, events); }
    void on_deadline() override { pump.idle_timeout(); }
    void abandon() override { pump.abort("shut down"); }
    RelayPump& pump;
    const int fd;
    const bool is_upstream;
    bool hup = false;  // the peer hung up: read on to its FIN after a short read
  };

  struct Direction {
    Direction(End* f, End* t, obs::Counter* r, obs::Counter* w) : from(f), to(t), read_counter(r), write_counter(w) {}
    End* from;
    End* to;
    obs::Counter* read_counter;
    obs::Counter* write_counter;
    std::uint64_t bytes = 0;
    std::vector<char> unsent;  // read but not yet taken by `to`
    PipePool::Pipe pipe;       // held only while spliced bytes are in flight
    std::size_t in_pipe = 0;
    bool spliced = false;
    unsigned small_chunks = 0;
    bool done = false;  // FIN read and passed on
    bool pending() const { return !unsent.empty() || in_pipe > 0; }
  };

  void on_ready(End& e, std::uint32_t events) {
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) e.hup = true;
    Direction& into = &e == &client_ ? down_ : up_;
    Direction& out = &e == &client_ ? up_ : down_;
    if (into.pending() && (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))) {
      const Step s = flush(into);
      if (s == Step::Ended) return;
      // `into` stopped reading while blocked; its source may hold bytes with no new edge.
      if (s == Step::Go && !into.done && pump(into) == Step::Ended) return;
    }
    if (!out.pending() && !out.done && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) pump(out);
  }

  // Moves bytes from d.from to d.to until d.from is empty or d.to is full. It starts
  // by copying through per-thread scratch (the cheapest path for request/response: one
  // recv, one send) and switches to splice(2) once a read fills most of the scratch,
  // i.e. when bulk data flows; a few small chunks in a row switch it back (HAProxy's
  // splice-auto idea).
  Step pump(Direction& d) {
    for (unsigned chunks = 0;; ++chunks) {
      if (chunks == kChunksPerTurn) {
        // A sender as fast as us would keep this loop (and the worker) to itself.
        poller_.defer(*d.from);
        return Step::Wait;
      }
      if (d.spliced) {
        if (d.pipe.read < 0 && !pipes().acquire(d.pipe)) return abort("pipe2 failed");
        const ssize_t n = ::splice(d.from->fd, nullptr, d.pipe.write, nullptr, kSpliceChunk,
                                   SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
        if (n < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN) {
            pipes().release(d.pipe, true);
            return Step::Wait;
          }
          return fail_io(errno, d.from->is_upstream);
        }
        if (n == 0) {
          pipes().release(d.pipe, true);
          return read_eof(d);
        }
        read(d, static_cast<std::size_t>(n));
        d.in_pipe = static_cast<std::size_t>(n);
        if (const Step s = flush(d); s != Step::Go) return s;
        if (static_cast<std::size_t>(n) < kSmallChunk && ++d.small_chunks >= 4) d.spliced = false;
        if (static_cast<std::size_t>(n) >= kSmallChunk) d.small_chunks = 0;
        continue;  // a short splice says nothing (it stops at the pipe's buffer count)
      }
      const auto buf = net::thread_scratch();
      const ssize_t n = ::recv(d.from->fd, buf.data(), buf.size(), MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return Step::Wait;
        return fail_io(errno, d.from->is_upstream);
      }
      if (n == 0) return read_eof(d);
      read(d, static_cast<std::size_t>(n));
      if (const Step s = send_some(d, std::span<const char>(buf.data(), static_cast<std::size_t>(n))); s != Step::Go) {
        return s;
      }
      if (splice_ && static_cast<std::size_t>(n) >= kBulkRead) {
        d.spliced = true;
        d.small_chunks = 0;
        continue;
      }
      // A short read emptied the socket: the next arrival is a new edge.
      if (static_cast<std::size_t>(n) < buf.size() && !d.from->hup) return Step::Wait;
    }
  }

  void read(Direction& d, std::size_t n) {
    activity(poller_.now());
    counters_.add(*d.read_counter, n);
    d.bytes += n;
  }

  // Everything read before the FIN has been written (nothing is read while bytes are
  // pending): pass the FIN on and let the other direction keep flowing (half-close).
  Step read_eof(Direction& d) {
    ::shutdown(d.to->fd, SHUT_WR);
    d.done = true;
    if (up_.done && down_.done) {
      record_.reason = "both sides closed";
      finish();
      return Step::Ended;
    }
    return Step::Wait;
  }

  // Writes what `d` holds (copied bytes or a pipe's) to d.to; Go once all is out.
  Step flush(Direction& d) {
    if (!d.unsent.empty()) return send_some(d, d.unsent);
    while (d.in_pipe > 0) {
      const ssize_t m = ::splice(d.pipe.read, nullptr, d.to->fd, nullptr, d.in_pipe, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
      if (m > 0) {
        d.in_pipe -= static_cast<std::size_t>(m);
        counters_.add(*d.write_counter, static_cast<std::uint64_t>(m));
        activity(poller_.now());
        continue;
      }
      if (m < 0 && errno == EINTR) continue;
      if (m < 0 && errno == EAGAIN) return Step::Wait;
      return fail_io(m < 0 ? errno : EPIPE, d.to->is_upstream);
    }
    pipes().release(d.pipe, true);
    return Step::Go;
  }

  // Sends `data` (the scratch, or d.unsent itself); what the kernel does not take is
  // kept in d.unsent.
  Step send_some(Direction& d, std::span<const char> data) {
    const auto out = net::send_keep_rest(d.to->fd, data, d.unsent);
    counters_.add(*d.write_counter, out.bytes);
    switch (out.result) {
      case net::SendOutcome::Result::All:
        activity(poller_.now());
        return Step::Go;
      case net::SendOutcome::Result::Blocked: return Step::Wait;
      case net::SendOutcome::Result::Failed: break;
    }
    return fail_io(out.error, d.to->is_upstream);
  }

  void activity(Clock::time_point now) {
    const auto idle = listener_.spec.idle_timeout;
    if (idle.count() > 0) poller_.set_deadline(client_, now + idle);
  }

  Step fail_io(int err, bool upstream_side) {
    if (upstream_side) {
      counters_.upstream_error(err == ECONNRESET || err == EPIPE ? obs::UpstreamError::Reset : obs::UpstreamError::Other);
    }
    return abort(upstream_side ? (err == ECONNRESET ? "upstream reset" : "upstream error")
                               : (err == ECONNRESET ? "client reset" : "client error"));
  }

  void idle_timeout() {
    counters_.refuse(obs::Refuse::IdleTimeout);
    abort("idle timeout");
  }

  Step abort(const char* why) {
    record_.reason = why;
    finish();
    return Step::Ended;
  }

  // The one way out: `this` is deleted.
  void finish() {
    record_.close(listener_, up_.bytes, down_.bytes);
    for (End* e : {&client_, &upstream_}) {
      poller_.remove(e->fd, *e);
      ::close(e->fd);
    }
    for (Direction* d : {&up_, &down_}) pipes().release(d->pipe, d->in_pipe == 0);
    delete this;
  }

  End client_;
  End upstream_;
  Direction up_;
  Direction down_;
  RelayListener& listener_;
  obs::ListenerCounters& counters_;
  net::ConnectionSlot slot_;
  net::Poller& poller_;
  RelayRecord record_;
  const bool splice_;
};

// Before the pump: choose and dial an upstream (Asio coroutines: resolver, Happy
// Eyeballs, failover), send the PROXY header, then hand both fds to a RelayPump.
class RelaySession final : public net::Session, public std::enable_shared_from_this<RelaySession> {
 public:
  RelaySession(Socket client, RelayListener& listener, net::ConnectionSlot slot, net::SessionSet& sessions,
               net::Poller& poller)
      : client_(std::move(client)),
        listener_(listener),
        counters_(listener.counters),
        slot_(std::move(slot)),
        sessions_(sessions),
        poller_(poller) {}

  asio::awaitable<void> run();

  void drain() override {}
  void close_now() override {
    aborted_ = true;
    record_.reason = "drain timeout";
    (void)net::set_linger(client_.native_handle(), 0);
    boost::system::error_code ignored;
    client_.cancel(ignored);
  }

 private:
  asio::awaitable<bool> connect_upstream();
  void finish();

  Socket client_;
  net::Fd upstream_;
  RelayListener& listener_;
  obs::ListenerCounters& counters_;
  net::ConnectionSlot slot_;
  net::SessionSet& sessions_;
  net::Poller& poller_;
  RelayRecord record_;
  bool aborted_ = false;
  bool upstream_is_tcp_ = false;
};

asio::awaitable<bool> RelaySession::connect_upstream() {
  const auto& spec = listener_.spec;
  const auto deadline = Clock::now() + spec.connect_timeout;
  upstream::DialOptions options{spec.connect_timeout, spec.upstream_keepalive, spec.source_address, spec.fallback_delay};
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
    upstream::Addresses addresses;
    const auto& endpoint = upstream->endpoint;
    if (endpoint.is_unix() || endpoint.is_ip_literal()) {
      auto addr = net::to_sockaddr(endpoint);
      if (addr) addresses.push_back(*addr);
    } else {
      auto resolved = co_await listener_.resolver.async_resolve(endpoint.host, endpoint.port);
      if (!resolved) {
        counters_.upstream_error(obs::UpstreamError::Resolve);
        listener_.pool.failed(*upstream);
        record_.detail = resolved.error();
        continue;
      }
      addresses = std::move(*resolved);
    }
    // An upstream that is one of our own relay listeners would chain into itself until
    // every fd is used: never dial it (names resolve only now, so --check cannot).
    std::erase_if(addresses, [](const net::SockAddr& a) { return net::own::reaches_own_relay(a.get(), a.len, SOCK_STREAM); });
    if (addresses.empty()) {
      counters_.refuse(obs::Refuse::SelfLoop);
      listener_.pool.failed(*upstream);
      record_.detail = endpoint.to_string() + " is this daemon's own relay listener";
      spdlog::warn("listener {}: upstream {} is this daemon's own relay listener; not dialed", listener_.spec.name,
                   endpoint.to_string());
      continue;
    }
    const auto dial_started = Clock::now();
    upstream::DialResult dialed = co_await upstream::dial(addresses, options, attempt_deadline);
    if (!dialed.fd) {
      counters_.upstream_error(dialed.error.kind);
      listener_.pool.failed(*upstream);
      record_.detail = dialed.error.message;
      continue;
    }
    counters_.observe_connect(std::chrono::duration<double>(Clock::now() - dial_started).count());
    listener_.pool.connected(*upstream);
    record_.chosen = upstream;
    record_.upstream_name = endpoint.to_string();
    const int family = dialed.family;
    upstream_is_tcp_ = family != AF_UNIX;
    upstream_ = std::move(dialed.fd);
    co_return true;
  }
  if (record_.detail.empty()) record_.detail = "connect timeout";
  co_return false;
}

void RelaySession::finish() {
  record_.close(listener_, 0, 0);  // nothing is pumped before the hand-over
  boost::system::error_code ignored;
  client_.close(ignored);
}

asio::awaitable<void> RelaySession::run() {
  if (spdlog::should_log(spdlog::level::debug)) {
    boost::system::error_code ec;
    const auto peer = client_.remote_endpoint(ec);
    if (!ec) record_.peer = net::format_sockaddr(peer.data(), static_cast<socklen_t>(peer.size()));
  }
  if (!co_await connect_upstream()) {
    if (!aborted_) record_.reason = "no upstream";
    finish();
    co_return;
  }
  if (aborted_) {
    finish();
    co_return;
  }
  const auto& spec = listener_.spec;
  std::vector<char> unsent_up;
  if (spec.proxy_protocol != config::ProxyProtocol::Off) {
    net::SockAddr peer, local;
    peer.len = local.len = sizeof(sockaddr_storage);
    ::getpeername(client_.native_handle(), peer.get(), &peer.len);
    ::getsockname(client_.native_handle(), local.get(), &local.len);
    const std::string header = spec.proxy_protocol == config::ProxyProtocol::V1
                                   ? upstream::proxy_v1_header(peer.get(), peer.len, local.get(), local.len)
                                   : upstream::proxy_v2_header(peer.get(), peer.len, local.get(), local.len, false);
    // A fresh connection's send buffer takes a header of at most a few hundred bytes;
    // should it not, the pump sends the rest before any client byte.
    ssize_t n;
    do {
      n = ::send(upstream_.get(), header.data(), header.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && errno != EAGAIN) {
      counters_.upstream_error(errno == ECONNRESET || errno == EPIPE ? obs::UpstreamError::Reset
                                                                     : obs::UpstreamError::Other);
      record_.reason = errno == ECONNRESET ? "upstream reset" : "upstream error";
      finish();
      co_return;
    }
    const std::size_t sent = n > 0 ? static_cast<std::size_t>(n) : 0;
    if (sent > 0) counters_.add(counters_.upstream_bytes_sent, sent);
    unsent_up.assign(header.begin() + static_cast<std::ptrdiff_t>(sent), header.end());
  }
  boost::system::error_code ec;
  const int client_fd = client_.release(ec);
  if (ec) {
    record_.reason = "cannot take over the client connection";
    finish();
    co_return;
  }
  const bool splice = spec.splice && spec.protocol == config::Protocol::Tcp && upstream_is_tcp_;
  auto* pump = new RelayPump(RelayPump::Handover{client_fd, std::move(upstream_), std::move(unsent_up),
                                                 std::move(record_), splice},
                             listener_, std::move(slot_), poller_);
  record_.chosen = nullptr;  // the pump holds the upstream's place now
  sessions_.push_back(*pump);
  pump->start();
  // This object leaves the session set when the coroutine drops the last reference.
}

}  // namespace

net::Session* start_relay_session(Socket client, RelayListener& listener, net::ConnectionSlot slot,
                                        net::SessionSet& sessions, net::Poller& poller) {
  auto executor = client.get_executor();
  auto session = std::make_shared<RelaySession>(std::move(client), listener, std::move(slot), sessions, poller);
  sessions.push_back(*session);
  asio::co_spawn(executor, [session]() { return session->run(); }, asio::detached);
  return session.get();
}

}  // namespace echorelay::relay
