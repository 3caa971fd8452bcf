// Echo over a stream socket: a state machine on the worker's Poller. Idle sessions pin
// no buffer: the socket is read into per-thread scratch; only an unfinished frame or an
// unsent answer is copied into the session's own storage. While an answer is unsent
// the socket is not read: that is the back-pressure, and it keeps answers in order.
#include "echo/session.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <spdlog/spdlog.h>

#include "obs/log.hpp"
#include <vector>

#include "echo/framing.hpp"
#include "net/endpoint.hpp"
#include "net/socket_options.hpp"
#include "net/stream_io.hpp"

namespace echorelay::echo {

using Clock = std::chrono::steady_clock;

namespace {

std::atomic<std::uint64_t> next_session_id{1};

// How long an idle session closed by a drain keeps reading after its FIN, so that
// closing never finds unread bytes (which would make the kernel send RST).
constexpr auto kLingerLimit = std::chrono::seconds(2);
// A draining session between requests waits this long for the next one, to answer it
// and close right behind the answer (the client then reads answer and EOF together and
// knows it must reconnect before it sends again); only a client quiet for that long is
// closed unasked, and only then can a request of its cross our FIN.
constexpr auto kDrainIdleGrace = std::chrono::seconds(1);
// Full reads (up to 1 MiB) per turn before the worker's other sessions get theirs.
constexpr unsigned kReadsPerTurn = 16;

Clock::time_point after(config::Duration d, Clock::time_point from) {
  return d.count() > 0 ? from + d : Clock::time_point::max();
}

class EchoSession final : public net::Session, public net::PollHandler {
 public:
  EchoSession(int fd, const config::Listener& spec, obs::ListenerCounters& counters, net::ConnectionSlot slot,
              net::Poller& poller)
      : fd_(fd),
        poller_(poller),
        spec_(spec),
        counters_(counters),
        slot_(std::move(slot)),
        scanner_(spec.framing, spec.max_frame),
        id_(next_session_id.fetch_add(1, std::memory_order_relaxed)),
        started_(Clock::now()) {}

  // After Poller::add: whatever the peer sent before it is reported as the first edge.
  void start() { begin_request(started_); }

  void on_ready(std::uint32_t events) override {
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) peer_done_ = true;
    if (phase_ == Phase::Lingering) {
      linger_read();
    } else {
      serve(poller_.now());
    }
  }

  void on_deadline() override {
    switch (deadline_) {
      case Deadline::Read: return expire(obs::Refuse::ReadTimeout, "read timeout");
      case Deadline::Request: return expire(obs::Refuse::RequestTimeout, "request timeout");
      case Deadline::Write: return expire(obs::Refuse::WriteTimeout, "write timeout");
      case Deadline::DrainGrace:
        if (!close_at_boundary(poller_.now())) serve(poller_.now());
        return;
      case Deadline::Linger: return finish();  // the peer never sent its FIN; nothing was lost
    }
  }

  void abandon() override {
    reason_ = "shut down";
    finish();
  }

  // Closing happens only right behind an answer, so a client never sees a clean EOF in
  // place of an answer to a request it sent (see kDrainIdleGrace for the exception).
  // A connection that has not been answered yet is not idle: its first request may be
  // on the way (the client connected just before the drain); it is served, or closed
  // by its read_timeout or the drain deadline.
  void drain() override {
    if (phase_ != Phase::Serving) return;
    phase_ = Phase::Draining;
    if (!unsent_.empty() || !pending_.empty()) return;  // closes at the boundary
    if (waiting_in_socket()) return serve(Clock::now());
    if (requests_ == 0) return;
    const auto now = Clock::now();
    if (now + kDrainIdleGrace < poller_deadline_) set_deadline(now + kDrainIdleGrace, Deadline::DrainGrace);
  }

  // Cut by the drain deadline: a reset, so that the client can tell it from an answer
  // that simply ended.
  void close_now() override {
    (void)net::set_linger(fd_, 0);
    reason_ = "drain timeout";
    finish();
  }

 private:
  enum class Sent { All, Blocked, Failed };

  // Where the session is in its life; an event means what the phase says it means.
  //
  //   Serving ──drain()──▶ Draining ──at a request boundary──▶ Lingering ──peer's FIN──▶ closed
  //      │                    │  └─(Unix) read side shut─▶ Closing ──┘  └──Linger deadline──▶ closed
  //      └────────────────────┴──peer FIN, error, timeout, frame too large──────────────▶ closed
  //
  // Draining still answers: it closes only right behind an answer (or after
  // kDrainIdleGrace with nothing asked), so the client never meets EOF in place of one.
  // Closing (Unix sockets only) answers what was queued before our read side shut.
  enum class Phase { Serving, Draining, Closing, Lingering };
  // What the one pending deadline means when it passes.
  enum class Deadline { Read, Request, Write, DrainGrace, Linger };

  void begin_request(Clock::time_point now) {
    request_started_ = now;
    const bool request_first = spec_.request_timeout.count() > 0 &&
                               (spec_.read_timeout.count() == 0 || spec_.request_timeout < spec_.read_timeout);
    set_deadline(std::min(after(spec_.read_timeout, now), after(spec_.request_timeout, now)),
                 request_first ? Deadline::Request : Deadline::Read);
  }

  void begin_write(Clock::time_point now) {
    const auto write_deadline = after(spec_.write_timeout, now);
    const auto request_deadline = after(spec_.request_timeout, request_started_);
    if (request_deadline < write_deadline) {
      set_deadline(request_deadline, Deadline::Request);
    } else {
      set_deadline(write_deadline, Deadline::Write);
    }
  }

  bool draining() const { return phase_ == Phase::Draining || phase_ == Phase::Closing; }

  // Closes right behind the last answer. False when a request is still queued: answer it
  // first (the session goes on serving, and comes back here at the next boundary).
  //
  // TCP sends the last answer and the FIN as one segment (corked), so a client reads
  // both before it can send again. AF_UNIX has no cork: a busy client woken by the
  // answer could queue its next request before our FIN, and meet EOF after sending it.
  // So on a Unix socket the read side shuts first: from then on the client's send fails
  // with EPIPE (the kernel refuses to queue to a peer that shut its read side), which it
  // sees as a closed connection before anything was sent; what was queued before is
  // still read and answered; only then does the FIN go.
  bool close_at_boundary(Clock::time_point now) {
    if (spec_.protocol != config::Protocol::Tcp && phase_ == Phase::Draining) {
      ::shutdown(fd_, SHUT_RD);
      phase_ = Phase::Closing;
      if (waiting_in_socket()) return false;
    }
    reason_ = "drained";
    start_linger(now);
    return true;
  }

  void set_deadline(Clock::time_point deadline, Deadline kind) {
    deadline_ = kind;
    poller_deadline_ = deadline;
    poller_.set_deadline(*this, deadline);
  }

  bool waiting_in_socket() {
    char probe;
    return ::recv(fd_, &probe, 1, MSG_PEEK | MSG_DONTWAIT) == 1;
  }

  // Reads and answers until the socket has nothing more, an answer cannot be sent
  // whole (the Poller reports writability), or the session ends (then `this` is gone).
  void serve(Clock::time_point now) {
    if (!unsent_.empty()) {
      switch (send_some(unsent_)) {
        case Sent::Failed: return finish();
        case Sent::Blocked: return;
        case Sent::All: answered(unsent_frames_, now); break;
      }
    }
    for (unsigned reads = 0;; ++reads) {
      if (reads == kReadsPerTurn) {
        // A client sending as fast as we answer would keep the worker to itself.
        poller_.defer(*this);
        return;
      }
      if (draining() && pending_.empty() && requests_ > 0 && !waiting_in_socket()) {
        // Right behind an answer, nothing more sent: the request boundary.
        if (close_at_boundary(now)) return;
        continue;
      }
      const auto buf = net::thread_scratch();
      const ssize_t n = ::recv(fd_, buf.data(), buf.size(), MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return;
        reason_ = errno == ECONNRESET ? "peer reset" : "recv failed";
        return finish();
      }
      if (n == 0) {
        // Everything read so far has been answered (nothing is read while an answer
        // is unsent), so the FIN can be returned: RFC 862 half-close for raw.
        reason_ = pending_.empty() ? "peer closed" : "peer closed mid-frame";
        ::shutdown(fd_, SHUT_WR);
        return finish();
      }
      counters_.add(counters_.bytes_received, static_cast<std::uint64_t>(n));
      bytes_in_ += static_cast<std::uint64_t>(n);
      if (deadline_ == Deadline::DrainGrace) begin_request(now);  // a request came: its own timeouts apply
      if (!consume(std::span<const char>(buf.data(), static_cast<std::size_t>(n)), now)) return;
      // A short read emptied the socket: the next arrival is a new edge. After a
      // hang-up keep reading, to meet the FIN; while draining, go round to close at
      // this request boundary.
      if (static_cast<std::size_t>(n) < buf.size() && !peer_done_ && phase_ == Phase::Serving) return;
    }
  }

  // Answers the complete frames in `data` (which may be the scratch); false when the
  // session ended or an answer waits for writability.
  bool consume(std::span<const char> data, Clock::time_point now) {
    const bool from_scratch = pending_.empty();
    if (!from_scratch) {
      pending_.insert(pending_.end(), data.begin(), data.end());
      data = pending_;
    }
    const Scan scan = scanner_.scan(data);
    if (scan.too_large) {
      counters_.refuse(obs::Refuse::FrameTooLarge);
      reason_ = "frame too large";
      finish();
      return false;
    }
    if (scan.complete == 0) {
      if (from_scratch) pending_.assign(data.begin(), data.end());
      return true;
    }
    // The last answer of a draining session leaves with the FIN in the same segment
    // (corked until the shutdown), so a client that reads it sees EOF at once and
    // never sends another request into a closing connection.
    const bool last = draining() && scan.complete == data.size() && !waiting_in_socket();
    if (last) cork(true);
    // send_some copies what it cannot send before pending_ changes under `data`.
    const Sent sent = send_some(data.first(scan.complete));
    if (last && sent == Sent::All) {
      pending_.clear();
      answered(scan.frames, now);
      // A Unix request that came in before our read side shut is answered too.
      return !close_at_boundary(now);
    }
    if (last) cork(false);
    if (sent == Sent::Failed) {
      finish();
      return false;
    }
    if (from_scratch) {
      pending_.assign(data.begin() + static_cast<std::ptrdiff_t>(scan.complete), data.end());
    } else {
      pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(scan.complete));
    }
    if (sent == Sent::Blocked) {
      unsent_frames_ = scan.frames;
      begin_write(now);
      return false;
    }
    answered(scan.frames, now);
    return true;
  }

  // Sends as much of `data` as the socket takes; the rest is kept in unsent_ (which
  // `data` may already be).
  Sent send_some(std::span<const char> data) {
    const auto out = net::send_keep_rest(fd_, data, unsent_);
    counters_.add(counters_.bytes_sent, out.bytes);
    bytes_out_ += out.bytes;
    switch (out.result) {
      case net::SendOutcome::Result::All: return Sent::All;
      case net::SendOutcome::Result::Blocked: return Sent::Blocked;
      case net::SendOutcome::Result::Failed: break;
    }
    reason_ = out.error == EPIPE || out.error == ECONNRESET ? "peer reset" : "send failed";
    return Sent::Failed;
  }

  void answered(std::size_t frames, Clock::time_point now) {
    requests_ += frames;
    counters_.add(counters_.requests, frames);
    // A new request starts once the previous answer is out; raw has no requests, so its
    // read_timeout is simply the idle limit.
    begin_request(now);
  }

  void expire(obs::Refuse reason, const char* why) {
    counters_.refuse(reason);
    reason_ = why;
    finish();
  }

  void cork(bool on) {
    if (spec_.protocol != config::Protocol::Tcp) return;
    const int value = on ? 1 : 0;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_CORK, &value, sizeof value);
  }

  // Half-close, then wait for the peer's FIN: closing with unread bytes would reset the
  // connection and could destroy the peer's last answer in flight.
  void start_linger(Clock::time_point now) {
    ::shutdown(fd_, SHUT_WR);
    cork(false);
    phase_ = Phase::Lingering;
    set_deadline(now + kLingerLimit, Deadline::Linger);
    linger_read();
  }

  void linger_read() {
    const auto scratch = net::thread_scratch();
    for (;;) {
      const ssize_t n = ::recv(fd_, scratch.data(), scratch.size(), MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) return;
      if (n > 0) {
        // A request that crossed our FIN: it will not be answered, so the client must
        // not take our FIN for a complete exchange. A reset tells it so on its next
        // send or read.
        reason_ = "request after drain close: reset";
        (void)net::set_linger(fd_, 0);
      }
      return finish();
    }
  }

  // The one way out: `this` is deleted.
  void finish() {
    poller_.remove(fd_, *this);
    if (spdlog::should_log(spdlog::level::debug)) {
      // The peer may already be gone (getpeername fails): the id still ties the lines.
      sockaddr_storage peer{};
      socklen_t len = sizeof peer;
      const bool known = ::getpeername(fd_, reinterpret_cast<sockaddr*>(&peer), &len) == 0;
      const std::string peer_text =
          known ? net::format_sockaddr(reinterpret_cast<const sockaddr*>(&peer), len) : std::string("-");
      obs::log_session_end({.id = id_,
                            .listener = spec_.name,
                            .kind = "echo",
                            .peer = peer_text,
                            .bytes_in = bytes_in_,
                            .bytes_out = bytes_out_,
                            .requests = static_cast<std::int64_t>(requests_),
                            .duration = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started_),
                            .reason = reason_});
    }
    ::close(fd_);
    delete this;
  }

  const int fd_;
  net::Poller& poller_;
  const config::Listener& spec_;
  obs::ListenerCounters& counters_;
  net::ConnectionSlot slot_;
  FrameScanner scanner_;
  std::vector<char> pending_;  // an unfinished frame
  std::vector<char> unsent_;   // answer bytes the kernel has not taken yet
  std::size_t unsent_frames_ = 0;
  Clock::time_point request_started_{};
  Deadline deadline_ = Deadline::Read;
  const std::uint64_t id_;
  const Clock::time_point started_;
  std::uint64_t bytes_in_ = 0;
  std::uint64_t bytes_out_ = 0;
  std::uint64_t requests_ = 0;
  const char* reason_ = "closed";
  Clock::time_point poller_deadline_ = Clock::time_point::max();
  Phase phase_ = Phase::Serving;
  bool peer_done_ = false;  // the peer hung up or closed its side: read on to its FIN
};

}  // namespace

net::Session* start_session(boost::asio::generic::stream_protocol::socket socket, const config::Listener& spec,
                                  obs::ListenerCounters& counters, net::ConnectionSlot slot,
                                  net::SessionSet& sessions, net::Poller& poller) {
  boost::system::error_code ec;
  const int fd = socket.release(ec);
  if (ec) {
    spdlog::warn("listener {}: cannot take over an accepted connection: {}", spec.name, ec.message());
    return nullptr;
  }
  auto* session = new EchoSession(fd, spec, counters, std::move(slot), poller);
  if (!poller.add(fd, *session)) {
    spdlog::warn("listener {}: cannot watch an accepted connection: {}", spec.name, std::strerror(errno));
    ::close(fd);
    delete session;
    return nullptr;
  }
  sessions.push_back(*session);
  session->start();
  return session;
}

}  // namespace echorelay::echo
