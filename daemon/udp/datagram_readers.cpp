// DatagramReaders; see datagram_readers.hpp. A Reader is one socket on one worker's
// Poller, edge-triggered.
#include "udp/datagram_readers.hpp"

#include <linux/sock_diag.h>
#include <sys/epoll.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <future>
#include <optional>
#include <string>
#include <system_error>

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

struct DatagramReaders::Impl {
  struct Socket {
    int fd;
    // The kernel's drop count already counted; advanced by whichever reader samples.
    std::atomic<std::uint32_t> drops_seen{0};
  };

  class Reader final : public net::PollHandler {
   public:
    Reader(Impl& owner, Socket& socket, net::LoopRef loop, unsigned worker)
        : owner_(owner), socket_(socket), loop_(loop), worker_(worker), buffers_(kBatch, owner.max_datagram_) {}

    void on_ready(std::uint32_t) override { owner_.read(*this, kBatchesPerTurn, false); }
    void on_deadline() override {
      owner_.count_kernel_drops(socket_);
      loop_.poller->set_deadline(*this, loop_.poller->now() + kDropSampleInterval);
    }
    // The poller goes first: off it now (it calls this until none is left), and the
    // destructor finds nothing to unregister.
    void abandon() override { owner_.unregister(*this); }

   private:
    friend struct Impl;
    Impl& owner_;
    Socket& socket_;
    net::LoopRef loop_;
    unsigned worker_;
    bool registered_ = false;  // on loop_.poller; touched on the loop's thread once it runs
    SlotBuffers buffers_;
    std::array<mmsghdr, kBatch> msgs_{};
    std::array<iovec, kBatch> iov_{};
    std::array<sockaddr_storage, kBatch> names_{};
    alignas(cmsghdr) std::array<std::array<unsigned char, kControlSize>, kBatch> control_{};
  };

  Impl(const config::Listener& listener, std::vector<int> sockets, obs::ListenerCounters& counters,
       std::vector<net::LoopRef> loops, Serve serve)
      : name_(listener.name),
        max_datagram_(std::max<std::uint32_t>(listener.max_datagram, 1)),
        counters_(counters),
        serve_(std::move(serve)) {
    policy_.configure(listener);
    for (int fd : sockets) sockets_.push_back(std::make_unique<Socket>(fd));
    // Socket i is read by `per_socket_` workers starting at worker i, so that sockets =
    // workers with one worker each spreads them over every loop.
    per_socket_ = listener.workers == 0 ? static_cast<unsigned>(loops.size())
                                        : std::min<unsigned>(listener.workers, static_cast<unsigned>(loops.size()));
    for (std::size_t i = 0; i < sockets_.size(); ++i) {
      for (unsigned k = 0; k < per_socket_; ++k) {
        const auto worker = static_cast<unsigned>((i + k) % loops.size());
        readers_.push_back(std::make_unique<Reader>(*this, *sockets_[i], loops[worker], worker));
      }
    }
  }

  ~Impl() {
    // Still registered only when the loops stopped without a stop() (a start that
    // failed, a forced exit): then no thread polls, and the pollers can be touched
    // here. A loop still running gets the removal posted, and we wait for it.
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
          if (sweep) read(*reader, kSweepBatches, true);
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

  unsigned per_socket() const { return per_socket_; }

 private:
  void unregister(Reader& r) {
    if (!r.registered_) return;
    r.loop_.poller->remove(r.socket_.fd, r);
    r.registered_ = false;
  }

  // Up to `batches` batches; when the last was full, more may wait but no new edge
  // will say so: come back after the loop's other ready handlers (unless sweeping).
  void read(Reader& r, unsigned batches, bool sweeping) {
    for (unsigned b = 0; b < batches; ++b) {
      if (!read_batch(r)) return;
    }
    if (!sweeping) r.loop_.poller->defer(r);
  }

  // One recvmmsg, admitted datagrams served. True when the batch was full.
  bool read_batch(Reader& r) {
    for (unsigned i = 0; i < kBatch; ++i) {
      prepare_receive(r.msgs_[i], r.iov_[i], r.buffers_.slot(i), max_datagram_, r.names_[i], r.control_[i].data());
    }
    const int fd = r.socket_.fd;
    const int n = ::recvmmsg(fd, r.msgs_.data(), kBatch, MSG_DONTWAIT, nullptr);
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) return true;
      if (is_again(err)) return false;
      if (is_impossible(err)) fatal(name_, "recvmmsg", err);
      // A pending ICMP error or ENOMEM: the call consumed it; the next edge decides.
      warn_gate_.warn(name_, "recvmmsg", err);
      return false;
    }
    ReceivedBatch batch{fd, r.worker_, r.msgs_.data(), r.names_.data(), r.control_.data(), &r.buffers_, {}, 0};
    const auto now = policy_.limits_rate() ? Clock::now() : Clock::time_point{};
    std::uint64_t bytes = 0;
    for (unsigned i = 0; i < static_cast<unsigned>(n); ++i) {
      bytes += r.msgs_[i].msg_len;
      if (!policy_.admit(r.names_[i], now, counters_)) continue;
      if ((r.msgs_[i].msg_hdr.msg_flags & MSG_TRUNC) != 0) {
        counters_.drop(obs::Drop::Truncated);
        continue;
      }
      batch.index[batch.count++] = i;
    }
    counters_.add(counters_.datagrams_received, static_cast<std::uint64_t>(n));
    counters_.add(counters_.bytes_received, bytes);
    if (batch.count != 0) serve_(batch);
    return static_cast<unsigned>(n) == kBatch;
  }

  // Datagrams that reached the socket but found its receive buffer full are received
  // by the listener and dropped for a full queue, so that received = served + drops.
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

  const std::string name_;
  const std::uint32_t max_datagram_;
  obs::ListenerCounters& counters_;
  const Serve serve_;
  SourcePolicy policy_;
  unsigned per_socket_ = 1;
  std::vector<std::unique_ptr<Socket>> sockets_;
  std::vector<std::unique_ptr<Reader>> readers_;
  WarnGate warn_gate_;
  std::atomic<bool> stopping_{false};
  std::atomic<std::size_t> pending_{0};  // readers not yet let go after stop()
  std::function<void()> stopped_;
};

DatagramReaders::DatagramReaders(const config::Listener& listener, std::vector<int> sockets,
                                 obs::ListenerCounters& counters, std::vector<net::LoopRef> loops, Serve serve)
    : impl_(std::make_unique<Impl>(listener, std::move(sockets), counters, std::move(loops), std::move(serve))) {}

DatagramReaders::~DatagramReaders() = default;

void DatagramReaders::start() { impl_->start(); }
void DatagramReaders::stop(bool sweep_sockets, std::function<void()> stopped) {
  impl_->stop(sweep_sockets, std::move(stopped));
}
unsigned DatagramReaders::readers_per_socket() const { return impl_->per_socket(); }

}  // namespace echorelay::udp
