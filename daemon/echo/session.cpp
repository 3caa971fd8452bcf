// Echo over a stream socket. Idle sessions pin no buffer: the session waits for
// readability, then reads into per-thread scratch; only an unfinished frame or an
// unsent answer is copied into the session's own storage.
#include "echo/session.hpp"

#include <sys/socket.h>

#include <array>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <spdlog/spdlog.h>
#include <vector>

#include "echo/framing.hpp"
#include "net/endpoint.hpp"

namespace echorelay::echo {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using Socket = asio::generic::stream_protocol::socket;
constexpr auto kUseAwaitable = asio::as_tuple(asio::use_awaitable);

namespace {

std::atomic<std::uint64_t> next_session_id{1};

// How long an idle session closed by a drain keeps reading after its FIN, so that
// closing never finds unread bytes (which would make the kernel send RST).
constexpr auto kLingerLimit = std::chrono::seconds(2);

Clock::time_point after(config::Duration d, Clock::time_point from) {
  return d.count() > 0 ? from + d : Clock::time_point::max();
}

std::span<char> scratch() {
  thread_local std::array<char, 64 * 1024> buffer;
  return buffer;
}

class EchoSession final : public lifecycle::Session, public std::enable_shared_from_this<EchoSession> {
 public:
  EchoSession(Socket socket, const config::Listener& spec, obs::ListenerCounters& counters, lifecycle::ConnectionSlot slot)
      : socket_(std::move(socket)),
        timer_(socket_.get_executor()),
        spec_(spec),
        counters_(counters),
        slot_(std::move(slot)),
        scanner_(spec.framing, spec.max_frame),
        id_(next_session_id.fetch_add(1, std::memory_order_relaxed)),
        started_(Clock::now()) {}

  asio::awaitable<void> run();

  void drain() override {
    draining_ = true;
    // Only a session waiting for the start of a request is idle; one in the middle of
    // a request finishes it and notices `draining_` at the boundary.
    if (idle_) socket_.cancel();
  }

  void close_now() override { expire(obs::Refuse::Count, "drain timeout"); }

 private:
  enum class Wait { Read, Write };

  void begin_request(Clock::time_point now) {
    request_started_ = now;
    set_deadline(std::min(after(spec_.read_timeout, now), after(spec_.request_timeout, now)),
                 spec_.request_timeout.count() > 0 && spec_.request_timeout < spec_.read_timeout
                     ? obs::Refuse::RequestTimeout
                     : obs::Refuse::ReadTimeout);
  }

  void begin_write() {
    const auto now = Clock::now();
    const auto write_deadline = after(spec_.write_timeout, now);
    const auto request_deadline = after(spec_.request_timeout, request_started_);
    if (request_deadline < write_deadline) {
      set_deadline(request_deadline, obs::Refuse::RequestTimeout);
    } else {
      set_deadline(write_deadline, obs::Refuse::WriteTimeout);
    }
  }

  // The timer is re-armed only when a deadline moves earlier; a later deadline is
  // picked up when the timer fires, so a busy session costs no timer operations.
  void set_deadline(Clock::time_point deadline, obs::Refuse reason) {
    deadline_ = deadline;
    deadline_reason_ = reason;
    if (deadline < armed_at_) arm(deadline);
  }

  void arm(Clock::time_point at) {
    armed_at_ = at;
    timer_.expires_at(at);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (ec || self->closed_) return;
      if (Clock::now() >= self->deadline_) {
        self->expire(self->deadline_reason_, self->deadline_reason_ == obs::Refuse::WriteTimeout ? "write timeout"
                                              : self->deadline_reason_ == obs::Refuse::RequestTimeout
                                                  ? "request timeout"
                                                  : "read timeout");
      } else if (self->deadline_ != Clock::time_point::max()) {
        self->arm(self->deadline_);
      } else {
        self->armed_at_ = Clock::time_point::max();
      }
    });
  }

  void expire(obs::Refuse reason, const char* why) {
    if (closed_) return;
    if (reason != obs::Refuse::Count) counters_.refuse(reason);
    reason_ = why;
    closed_ = true;
    // Cancel rather than close: the coroutine wakes with operation_aborted, sees
    // `closed_` and leaves through finish(), the one place that releases the socket.
    boost::system::error_code ignored;
    socket_.cancel(ignored);
  }

  // Waits until the socket is ready; false when the session must end.
  asio::awaitable<bool> wait(Wait what) {
    auto [ec] = co_await socket_.async_wait(what == Wait::Read ? Socket::wait_read : Socket::wait_write, kUseAwaitable);
    if (closed_) co_return false;
    if (ec == asio::error::operation_aborted) co_return true;  // a drain woke us; the loop decides
    if (ec) {
      reason_ = "wait failed";
      co_return false;
    }
    co_return true;
  }

  // Sends all of `data`. Whatever the kernel does not take at once is copied into the
  // session's own buffer before suspending: `data` may be the thread's scratch.
  asio::awaitable<bool> write_all(std::span<const char> data) {
    begin_write();
    while (!data.empty()) {
      const ssize_t n = ::send(socket_.native_handle(), data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        counters_.add(counters_.bytes_sent, static_cast<std::uint64_t>(n));
        bytes_out_ += static_cast<std::uint64_t>(n);
        data = data.subspan(static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno != EAGAIN) {
        reason_ = errno == EPIPE || errno == ECONNRESET ? "peer reset" : "send failed";
        co_return false;
      }
      // Once only: after a partial send `data` already points into `unsent_`.
      const bool copied =
          !unsent_.empty() && data.data() >= unsent_.data() && data.data() < unsent_.data() + unsent_.size();
      if (!copied) {
        unsent_.assign(data.begin(), data.end());
        data = unsent_;
      }
      if (!co_await wait(Wait::Write)) co_return false;
    }
    unsent_.clear();
    co_return true;
  }

  // Half-close, then read and discard until the peer's FIN: closing with unread bytes
  // would reset the connection and could destroy the peer's last answer in flight.
  asio::awaitable<void> linger_close() {
    ::shutdown(socket_.native_handle(), SHUT_WR);
    set_deadline(Clock::now() + kLingerLimit, obs::Refuse::Count);
    for (;;) {
      idle_ = false;
      if (!co_await wait(Wait::Read)) co_return;
      const ssize_t n = ::recv(socket_.native_handle(), scratch().data(), scratch().size(), MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) co_return;
    }
  }

  void finish() {
    closed_ = true;
    timer_.cancel();
    boost::system::error_code ignored;
    if (spdlog::should_log(spdlog::level::debug)) {
      // The peer may already be gone (getpeername fails): the id still ties the lines.
      const auto peer = socket_.remote_endpoint(ignored);
      spdlog::debug("[c{} {}] closed: peer {}, {} bytes in, {} bytes out, {} requests, {}ms, {}", id_, spec_.name,
                  ignored ? std::string("-") : net::format_sockaddr(peer.data(), static_cast<socklen_t>(peer.size())),
                  bytes_in_, bytes_out_, requests_,
                  std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started_).count(), reason_);
    }
    socket_.close(ignored);
  }

  Socket socket_;
  asio::steady_timer timer_;
  const config::Listener& spec_;
  obs::ListenerCounters& counters_;
  lifecycle::ConnectionSlot slot_;
  FrameScanner scanner_;
  std::vector<char> pending_;  // an unfinished frame
  std::vector<char> unsent_;   // answer bytes the kernel has not taken yet
  Clock::time_point deadline_ = Clock::time_point::max();
  Clock::time_point armed_at_ = Clock::time_point::max();
  Clock::time_point request_started_{};
  obs::Refuse deadline_reason_ = obs::Refuse::ReadTimeout;
  const std::uint64_t id_;
  const Clock::time_point started_;
  std::uint64_t bytes_in_ = 0;
  std::uint64_t bytes_out_ = 0;
  std::uint64_t requests_ = 0;
  const char* reason_ = "closed";
  bool closed_ = false;
  bool draining_ = false;
  bool idle_ = false;
};

asio::awaitable<void> EchoSession::run() {
  begin_request(Clock::now());
  for (;;) {
    idle_ = pending_.empty();
    if (draining_ && idle_) {
      // A request already waiting in the socket is one the peer sent before we
      // closed: answer it first; only a truly idle connection is closed.
      char probe;
      if (::recv(socket_.native_handle(), &probe, 1, MSG_PEEK | MSG_DONTWAIT) != 1) {
        reason_ = "drained";
        co_await linger_close();
        break;
      }
      idle_ = false;
    }
    if (!co_await wait(Wait::Read)) break;
    idle_ = false;
    auto buf = scratch();
    const ssize_t n = ::recv(socket_.native_handle(), buf.data(), buf.size(), MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      reason_ = errno == ECONNRESET ? "peer reset" : "recv failed";
      break;
    }
    if (n == 0) {
      // Everything read so far has been answered (writes complete before the next
      // read), so the FIN can be returned: RFC 862 half-close for raw.
      reason_ = pending_.empty() ? "peer closed" : "peer closed mid-frame";
      ::shutdown(socket_.native_handle(), SHUT_WR);
      break;
    }
    counters_.add(counters_.bytes_received, static_cast<std::uint64_t>(n));
    bytes_in_ += static_cast<std::uint64_t>(n);

    std::span<const char> data(buf.data(), static_cast<std::size_t>(n));
    const bool from_scratch = pending_.empty();
    if (!from_scratch) {
      pending_.insert(pending_.end(), data.begin(), data.end());
      data = pending_;
    }
    const Scan scan = scanner_.scan(data);
    if (scan.too_large) {
      counters_.refuse(obs::Refuse::FrameTooLarge);
      reason_ = "frame too large";
      break;
    }
    if (scan.complete == 0) {
      if (from_scratch) pending_.assign(data.begin(), data.end());
      continue;
    }
    std::span<const char> answer = data.first(scan.complete);
    if (from_scratch) {
      // The unfinished tail must leave the scratch before any suspension.
      pending_.assign(data.begin() + static_cast<std::ptrdiff_t>(scan.complete), data.end());
      if (!co_await write_all(answer)) break;
    } else {
      if (!co_await write_all(answer)) break;
      pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(scan.complete));
    }
    requests_ += scan.frames;
    counters_.add(counters_.requests, scan.frames);
    // A new request starts once the previous answer is out; raw has no requests, so its
    // read_timeout is simply the idle limit.
    begin_request(Clock::now());
  }
  finish();
}

}  // namespace

void start_session(Socket socket, const config::Listener& spec, obs::ListenerCounters& counters, lifecycle::ConnectionSlot slot,
                   lifecycle::SessionSet& sessions) {
  auto executor = socket.get_executor();
  auto session = std::make_shared<EchoSession>(std::move(socket), spec, counters, std::move(slot));
  sessions.push_back(*session);
  asio::co_spawn(executor, [session]() { return session->run(); }, asio::detached);
}

}  // namespace echorelay::echo
