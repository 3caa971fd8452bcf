// UDP echo on the daemon's workers. A Reader is one socket on one worker's Poller:
// edge-triggered, it takes up to kBatchesPerTurn recvmmsg batches, answers each batch
// with one sendmmsg from the same buffers, and yields to the loop's other work before
// taking more. Several workers reading one socket register with EPOLLEXCLUSIVE, so an
// arrival wakes one of them rather than all. There is no queue of our own: datagrams
// wait in the socket's receive buffer, and what the kernel drops there for want of
// room is read from SO_MEMINFO and counted as queue_full.
#include "udp/udp_echo.hpp"

#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <future>
#include <string>
#include <system_error>

#include "net/own_listeners.hpp"
#include "udp/datagram_io.hpp"

namespace echorelay::udp {

namespace {

// recvmmsg batches a stopping reader takes from its socket before it lets go for good.
constexpr unsigned kSweepBatches = 64;
// Batches per turn: enough to amortise a wake-up, few enough that a flood on one socket
// leaves the worker's other sockets and connections their turn.
constexpr unsigned kBatchesPerTurn = 4;
// How often the kernel's drop count of a socket is read (one getsockopt per socket).
constexpr auto kDropSampleInterval = std::chrono::milliseconds(500);

// Datagrams the kernel dropped on this socket since it was created (full receive
// buffer, mostly); nullopt when the kernel does not say.
std::optional<std::uint32_t> kernel_drops(int fd) {
  std::array<std::uint32_t, SK_MEMINFO_VARS> info{};
  socklen_t len = sizeof info;
  if (::getsockopt(fd, SOL_SOCKET, SO_MEMINFO, info.data(), &len) != 0 ||
      len < (SK_MEMINFO_DROPS + 1) * sizeof(std::uint32_t)) {
    return std::nullopt;
  }
  return info[SK_MEMINFO_DROPS];
}

}  // namespace

struct EchoServer::Impl {
  struct Socket {
    int fd;
    // The kernel's drop count already counted; advanced by whichever reader samples.
    std::atomic<std::uint32_t> drops_seen{0};
  };

  class Reader final : public net::PollHandler {
   public:
    Reader(Impl& server, Socket& socket, net::LoopRef loop)
        : server_(server), socket_(socket), loop_(loop), buffers_(kBatch, server.max_datagram_) {}

    void on_ready(std::uint32_t) override { server_.serve(*this, kBatchesPerTurn, false); }
    void on_deadline() override {
      server_.count_kernel_drops(socket_);
      loop_.poller->set_deadline(*this, loop_.poller->now() + kDropSampleInterval);
    }
    void abandon() override { registered_ = false; }

   private:
    friend struct Impl;
    Impl& server_;
    Socket& socket_;
    net::LoopRef loop_;
    bool registered_ = false;  // on loop_.poller; touched on the loop's thread once it runs
    SlotBuffers buffers_;
    std::array<mmsghdr, kBatch> in_{};
    std::array<iovec, kBatch> in_iov_{};
    std::array<sockaddr_storage, kBatch> names_{};
    alignas(cmsghdr) std::array<std::array<unsigned char, kControlSize>, kBatch> control_{};
    std::array<mmsghdr, kBatch> out_{};
    std::array<iovec, kBatch> out_iov_{};
    alignas(cmsghdr) std::array<std::array<unsigned char, kControlSize>, kBatch> reply_control_{};
  };

  Impl(const config::Listener& listener, std::vector<int> sockets, obs::ListenerCounters& counters,
       std::vector<net::LoopRef> loops)
      : name_(listener.name),
        max_datagram_(std::max<std::uint32_t>(listener.max_datagram, 1)),
        counters_(counters),
        queue_setting_(listener.queue) {
    for (auto port : listener.deny_source_ports) policy_.denied_ports.set(port);
    deny_our_ports_ = listener.deny_own_ports;
    policy_.set_rate(listener.rate_limit);
    for (int fd : sockets) sockets_.push_back(std::make_unique<Socket>(fd));
    // Socket i is read by `per_socket` workers starting at worker i, so that sockets
    // = workers with one worker each spreads them over every loop.
    per_socket_ = listener.workers == 0 ? static_cast<unsigned>(loops.size())
                                        : std::min<unsigned>(listener.workers, static_cast<unsigned>(loops.size()));
    for (std::size_t i = 0; i < sockets_.size(); ++i) {
      for (unsigned k = 0; k < per_socket_; ++k) {
        readers_.push_back(std::make_unique<Reader>(*this, *sockets_[i], loops[(i + k) % loops.size()]));
      }
    }
  }

  ~Impl() {
    // Still registered only when the loops stopped without a stop() (a start that
    // failed, a forced exit): no thread polls now, so the pollers can be touched here.
    // A loop still running gets the removal posted, and we wait for it.
    std::vector<std::future<void>> removed;
    for (auto& r : readers_) {
      Reader* reader = r.get();
      if (reader->loop_.ctx->stopped()) {
        unregister(*reader);
      } else {
        auto done = std::make_shared<std::promise<void>>();
        removed.push_back(done->get_future());
        boost::asio::post(*reader->loop_.ctx, [this, reader, done] {
          unregister(*reader);
          done->set_value();
        });
      }
    }
    for (auto& f : removed) f.wait();
  }

  void start() {
    if (queue_setting_ != config::Listener{}.queue) {
      spdlog::warn("udp {}: queue = {} has no effect on an echo listener: its workers answer each datagram as "
                   "they read it, and datagrams wait in the socket's receive buffer (size it with recv_buffer)",
                   name_, queue_setting_);
    }
    for (auto& s : sockets_) {
      enable_pktinfo(s->fd, name_);
      // Drops from before we served this socket were a predecessor's to count.
      s->drops_seen.store(kernel_drops(s->fd).value_or(0), std::memory_order_relaxed);
    }
    const std::uint32_t events = EPOLLIN | EPOLLET | (per_socket_ > 1 ? EPOLLEXCLUSIVE : 0U);
    for (auto& r : readers_) {
      if (!r->loop_.poller->add(r->socket_.fd, *r, events)) {
        throw std::system_error(errno, std::system_category(), "udp " + name_ + ": epoll_ctl");
      }
      r->registered_ = true;
      r->loop_.poller->set_deadline(*r, net::Poller::Clock::now() + kDropSampleInterval);
    }
    spdlog::info("udp {}: serving {} socket(s), each read by {} worker(s)", name_, sockets_.size(), per_socket_);
  }

  void stop(bool sweep, std::function<void()> stopped) {
    if (stopping_.exchange(true)) return;
    if (readers_.empty()) {
      if (stopped) stopped();
      return;
    }
    stopped_ = std::move(stopped);
    pending_.store(readers_.size(), std::memory_order_relaxed);
    for (auto& r : readers_) {
      boost::asio::post(*r->loop_.ctx, [this, reader = r.get(), sweep] {
        if (reader->registered_) {
          // Bounded: a flood must not hold the stop.
          if (sweep) serve(*reader, kSweepBatches, true);
          count_kernel_drops(reader->socket_);
          unregister(*reader);
        }
        if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
          spdlog::info("udp {}: stopped reading", name_);
          if (stopped_) stopped_();
        }
      });
    }
  }

 private:
  void unregister(Reader& r) {
    if (!r.registered_) return;
    r.loop_.poller->remove(r.socket_.fd, r);
    r.registered_ = false;
  }

  // Up to `batches` batches; when the last was full, more may wait but no new edge
  // will say so: come back after the loop's other ready handlers (unless sweeping).
  void serve(Reader& r, unsigned batches, bool sweeping) {
    for (unsigned b = 0; b < batches; ++b) {
      if (!serve_batch(r)) return;
    }
    if (!sweeping) r.loop_.poller->defer(r);
  }

  // One recvmmsg and the sendmmsg answering it. True when the batch was full.
  bool serve_batch(Reader& r) {
    for (unsigned i = 0; i < kBatch; ++i) {
      prepare_receive(r.in_[i], r.in_iov_[i], r.buffers_.slot(i), max_datagram_, r.names_[i], r.control_[i].data());
    }
    const int fd = r.socket_.fd;
    const int n = ::recvmmsg(fd, r.in_.data(), kBatch, MSG_DONTWAIT, nullptr);
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) return true;
      if (is_again(err)) return false;
      if (is_impossible(err)) fatal(name_, "recvmmsg", err);
      // A pending ICMP error or ENOMEM: the call consumed it; the next edge decides.
      warn_gate_.warn(name_, "recvmmsg", err);
      return false;
    }
    const auto now = policy_.limits_rate() ? Clock::now() : Clock::time_point{};
    unsigned accepted = 0;
    std::uint64_t bytes = 0;
    for (unsigned i = 0; i < static_cast<unsigned>(n); ++i) {
      const msghdr& h = r.in_[i].msg_hdr;
      const auto len = r.in_[i].msg_len;
      bytes += len;
      const auto& from = r.names_[i];
      if (!policy_.admit(from, now, counters_)) continue;
      if ((h.msg_flags & MSG_TRUNC) != 0) {
        counters_.drop(obs::Drop::Truncated);
        continue;
      }
      const socklen_t control_len = (h.msg_flags & MSG_CTRUNC) != 0 ? 0 : static_cast<socklen_t>(h.msg_controllen);
      // Never answer one of our own listening addresses (an answer of ours coming
      // back would loop), nor by default any of our UDP ports, as with port 7.
      if (from_ourselves(from, r.control_[i].data(), control_len)) {
        counters_.drop(obs::Drop::DeniedPort);
        counters_.refuse(obs::Refuse::DeniedPort);
        continue;
      }
      r.out_iov_[accepted] = {r.buffers_.slot(i), len};
      msghdr& out = r.out_[accepted].msg_hdr;
      out = msghdr{};
      out.msg_name = &r.names_[i];
      out.msg_namelen = h.msg_namelen;
      out.msg_iov = &r.out_iov_[accepted];
      out.msg_iovlen = 1;
      const socklen_t control = reply_control(r.control_[i].data(), control_len, r.reply_control_[accepted].data());
      if (control != 0) {
        out.msg_control = r.reply_control_[accepted].data();
        out.msg_controllen = control;
      }
      ++accepted;
    }
    counters_.add(counters_.datagrams_received, static_cast<std::uint64_t>(n));
    counters_.add(counters_.bytes_received, bytes);
    if (accepted != 0) {
      const Sent sent = send_datagrams(fd, r.out_.data(), accepted, name_, counters_, warn_gate_);
      counters_.add(counters_.datagrams_sent, sent.datagrams);
      counters_.add(counters_.requests, sent.datagrams);
      counters_.add(counters_.bytes_sent, sent.bytes);
    }
    return static_cast<unsigned>(n) == kBatch;
  }

  // Datagrams that reached the socket but found its receive buffer full are received
  // by the listener and dropped for a full queue, so that received = answered + drops.
  void count_kernel_drops(Socket& s) {
    const auto now = kernel_drops(s.fd);
    if (!now) return;
    std::uint32_t seen = s.drops_seen.load(std::memory_order_relaxed);
    // The kernel's count is 32 bits and wraps; a reader that lost the race retries.
    while (static_cast<std::int32_t>(*now - seen) > 0) {
      if (s.drops_seen.compare_exchange_weak(seen, *now, std::memory_order_relaxed)) {
        const std::uint32_t fresh = *now - seen;
        counters_.drop(obs::Drop::QueueFull, fresh);
        counters_.add(counters_.datagrams_received, fresh);
        return;
      }
    }
  }

  bool from_ourselves(const sockaddr_storage& from, const unsigned char* control, socklen_t control_len) const {
    const std::uint16_t port = source_port(from);
    if (!net::own::is_our_udp_port(port)) return false;
    if (deny_our_ports_) return true;
    sockaddr_storage to{};
    socklen_t to_len = 0;
    const bool known = destination_address(control, control_len, 0, to, to_len);
    return net::own::is_our_udp_address(from, known ? &to : nullptr);
  }

  const std::string name_;
  const std::uint32_t max_datagram_;
  obs::ListenerCounters& counters_;
  const std::uint32_t queue_setting_;
  SourcePolicy policy_;
  bool deny_our_ports_ = true;
  unsigned per_socket_ = 1;
  std::vector<std::unique_ptr<Socket>> sockets_;
  std::vector<std::unique_ptr<Reader>> readers_;
  WarnGate warn_gate_;
  std::atomic<bool> stopping_{false};
  std::atomic<std::size_t> pending_{0};  // readers not yet let go after stop()
  std::function<void()> stopped_;
};

EchoServer::EchoServer(const config::Listener& listener, std::vector<int> sockets, obs::ListenerCounters& counters,
                       std::vector<net::LoopRef> loops)
    : impl_(std::make_unique<Impl>(listener, std::move(sockets), counters, std::move(loops))) {}

EchoServer::~EchoServer() = default;

void EchoServer::start() { impl_->start(); }
void EchoServer::stop(bool sweep_sockets, std::function<void()> stopped) {
  impl_->stop(sweep_sockets, std::move(stopped));
}

}  // namespace echorelay::udp
