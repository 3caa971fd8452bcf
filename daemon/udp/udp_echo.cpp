// UDP echo: one reader thread per socket receives straight into preallocated queue
// slots (recvmmsg), filters sources (denied ports, per-source rate), and a worker pool
// answers each datagram with its exact bytes from the socket it arrived on (sendmmsg).
// Sockets are borrowed: nothing here binds, closes or changes their membership.
#include "udp/udp_echo.hpp"

#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <thread>

#include "net/own_listeners.hpp"
#include "udp/datagram_io.hpp"

namespace echorelay::udp {

namespace {

// recvmmsg batches a stopping reader takes from its socket before it closes for good.
constexpr unsigned kSweepBatches = 64;

struct Slot {
  std::byte* data = nullptr;
  std::uint32_t len = 0;
  int fd = -1;
  socklen_t addr_len = 0;
  socklen_t control_len = 0;
  sockaddr_storage addr{};
  alignas(cmsghdr) unsigned char control[kControlSize]{};
};

}  // namespace

struct EchoServer::Impl {
  struct Sender {
    std::array<std::uint32_t, kBatch> batch{};
    std::array<mmsghdr, kBatch> msgs{};
    std::array<iovec, kBatch> iov{};
    alignas(cmsghdr) std::array<std::array<unsigned char, kControlSize>, kBatch> control{};
  };

  struct Reader {
    explicit Reader(int socket) : fd(socket) {}
    int fd;
    std::thread thread;
    std::array<std::uint32_t, kBatch> reserved{};
    std::array<mmsghdr, kBatch> msgs{};
    std::array<iovec, kBatch> iov{};
    // When the queue is full datagrams are still taken off the socket (to count them)
    // into one shared scratch buffer.
    std::array<sockaddr_storage, kBatch> scratch_names{};
    std::unique_ptr<std::byte[]> scratch;
    std::unique_ptr<Sender> sender;  // set when this reader answers itself
  };

  Impl(const config::Listener& listener, std::vector<int> sockets, obs::ListenerCounters& counters)
      : name_(listener.name),
        max_datagram_(std::max<std::uint32_t>(listener.max_datagram, 1)),
        capacity_(std::max<std::uint32_t>(listener.queue, 1)),
        worker_count_(listener.workers != 0 ? listener.workers
                                            : std::max(1U, std::thread::hardware_concurrency())),
        sockets_(std::move(sockets)),
        counters_(counters) {
    for (auto port : listener.deny_source_ports) policy_.denied_ports.set(port);
    deny_our_ports_ = listener.deny_own_ports;
    policy_.set_rate(listener.rate_limit);
    buffers_ = SlotBuffers(capacity_, max_datagram_);
    slots_.resize(capacity_);
    free_.reserve(capacity_);
    ready_.resize(capacity_);
    for (std::uint32_t i = 0; i < capacity_; ++i) {
      slots_[i].data = buffers_.slot(i);
      free_.push_back(capacity_ - 1 - i);
    }
    wake_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!wake_) throw std::system_error(errno, std::system_category(), "eventfd");
  }

  ~Impl() { stop(); }

  void start() {
    spdlog::default_logger_raw();  // see Resolver::Impl: the registry exists before our threads
    std::lock_guard guard(lifecycle_);
    if (started_) return;
    started_ = true;
    for (int fd : sockets_) enable_pktinfo(fd, name_);
    // With one worker the readers answer themselves (see drain).
    for (unsigned i = 0; worker_count_ > 1 && i < worker_count_; ++i) {
      workers_.emplace_back([this, i] {
        name_thread("udp-w", i);
        work_loop();
      });
    }
    for (std::size_t i = 0; i < sockets_.size(); ++i) {
      auto reader = std::make_unique<Reader>(sockets_[i]);
      reader->scratch = std::make_unique<std::byte[]>(max_datagram_);
      if (worker_count_ == 1) reader->sender = std::make_unique<Sender>();
      Reader& r = *reader;
      readers_.push_back(std::move(reader));
      r.thread = std::thread([this, &r, i] {
        name_thread("udp-r", i);
        read_loop(r);
      });
    }
    spdlog::info("udp {}: serving {} socket(s) with {} worker(s), queue {} x {} bytes", name_,
                 sockets_.size(), worker_count_, capacity_, max_datagram_);
  }

  void stop_reading() {
    if (stop_reader_threads(stop_reading_, wake_.get(), lifecycle_, readers_)) {
      spdlog::info("udp {}: stopped reading; sockets left open", name_);
    }
  }

  void stop(bool sweep_sockets = false) {
    if (sweep_sockets) sweep_.store(true, std::memory_order_release);
    stop_reading();
    {
      std::lock_guard lock(mutex_);
      finishing_ = true;
    }
    ready_cv_.notify_all();
    std::lock_guard guard(lifecycle_);
    bool joined = false;
    for (auto& w : workers_) {
      if (w.joinable()) {
        w.join();
        joined = true;
      }
    }
    if (joined) spdlog::info("udp {}: stopped; queue answered", name_);
  }

 private:
  unsigned reserve(std::array<std::uint32_t, kBatch>& out) {
    std::lock_guard lock(mutex_);
    const auto k = static_cast<unsigned>(std::min<std::size_t>(kBatch, free_.size()));
    for (unsigned i = 0; i < k; ++i) {
      out[i] = free_.back();
      free_.pop_back();
    }
    return k;
  }

  // The first `accepted` of `reserved` go to the ready queue, the rest of the `k`
  // back to the free list.
  void publish(const std::array<std::uint32_t, kBatch>& reserved, unsigned accepted, unsigned k) {
    if (k == 0) return;
    {
      std::lock_guard lock(mutex_);
      for (unsigned i = 0; i < accepted; ++i) ready_[(head_ + count_++) % capacity_] = reserved[i];
      for (unsigned i = accepted; i < k; ++i) free_.push_back(reserved[i]);
    }
    if (accepted == 1) {
      ready_cv_.notify_one();
    } else if (accepted > 1) {
      ready_cv_.notify_all();
    }
  }

  void read_loop(Reader& r) {
    read_until_stopped(name_, r.fd, wake_.get(), stop_reading_, warn_gate_, [this, &r] { drain(r); });
    // Bounded: a flood must not hold the stop.
    if (sweep_.load(std::memory_order_acquire)) drain(r, kSweepBatches);
  }

  // Until the socket is empty; after stop_reading() only when sweeping, `sweep` batches.
  void drain(Reader& r, unsigned sweep = 0) {
    while (sweep > 0 ? sweep-- > 0 : !stop_reading_.load(std::memory_order_acquire)) {
      const unsigned k = reserve(r.reserved);
      const unsigned want = k != 0 ? k : kBatch;
      for (unsigned i = 0; i < want; ++i) {
        msghdr& h = r.msgs[i].msg_hdr;
        h = msghdr{};
        if (k != 0) {
          Slot& s = slots_[r.reserved[i]];
          r.iov[i] = {s.data, max_datagram_};
          h.msg_name = &s.addr;
          h.msg_control = s.control;
          h.msg_controllen = sizeof s.control;
        } else {
          r.iov[i] = {r.scratch.get(), max_datagram_};
          h.msg_name = &r.scratch_names[i];
        }
        h.msg_namelen = sizeof(sockaddr_storage);
        h.msg_iov = &r.iov[i];
        h.msg_iovlen = 1;
      }
      const int n = ::recvmmsg(r.fd, r.msgs.data(), want, MSG_DONTWAIT, nullptr);
      if (n < 0) {
        const int err = errno;
        publish(r.reserved, 0, k);
        if (err == EINTR) continue;
        if (is_again(err)) return;
        if (is_impossible(err)) fatal(name_, "recvmmsg", err);
        // A pending ICMP error or ENOMEM: the call consumed it; poll decides what is next.
        warn("recvmmsg", err);
        return;
      }
      const auto now = policy_.limits_rate() ? Clock::now() : Clock::time_point{};
      unsigned accepted = 0;
      std::uint64_t bytes = 0;
      for (unsigned i = 0; i < static_cast<unsigned>(n); ++i) {
        const msghdr& h = r.msgs[i].msg_hdr;
        const auto len = r.msgs[i].msg_len;
        bytes += len;
        const auto& from = *static_cast<const sockaddr_storage*>(h.msg_name);
        if (!policy_.admit(from, now, counters_)) continue;
        if ((h.msg_flags & MSG_TRUNC) != 0) {
          counters_.drop(obs::Drop::Truncated);
          continue;
        }
        if (k == 0) {
          counters_.drop(obs::Drop::QueueFull);
          continue;
        }
        Slot& s = slots_[r.reserved[i]];
        s.len = len;
        s.fd = r.fd;
        s.addr_len = h.msg_namelen;
        s.control_len = (h.msg_flags & MSG_CTRUNC) != 0 ? 0 : static_cast<socklen_t>(h.msg_controllen);
        // Never answer one of our own listening addresses (an answer of ours coming
        // back would loop), nor by default any of our UDP ports, as with port 7.
        if (from_ourselves(from, s)) {
          counters_.drop(obs::Drop::DeniedPort);
          counters_.refuse(obs::Refuse::DeniedPort);
          continue;
        }
        // Positions before i are already decided, so swapping keeps the rest intact.
        std::swap(r.reserved[accepted++], r.reserved[i]);
      }
      counters_.add(counters_.datagrams_received, static_cast<std::uint64_t>(n));
      counters_.add(counters_.bytes_received, bytes);
      if (r.sender) {
        // A pool of one would only add a hand-off (two context switches on a busy CPU):
        // the reader answers, and the slots go straight back.
        std::copy_n(r.reserved.begin(), accepted, r.sender->batch.begin());
        send_batch(*r.sender, accepted);
        publish(r.reserved, 0, k);
      } else {
        publish(r.reserved, accepted, k);
      }
      if (static_cast<unsigned>(n) < want) return;  // the socket is empty: back to poll
    }
  }

  bool from_ourselves(const sockaddr_storage& from, const Slot& s) const {
    const std::uint16_t port = source_port(from);
    if (!net::own::is_our_udp_port(port)) return false;
    if (deny_our_ports_) return true;
    sockaddr_storage to{};
    socklen_t to_len = 0;
    const bool known = destination_address(s.control, s.control_len, 0, to, to_len);
    return net::own::is_our_udp_address(from, known ? &to : nullptr);
  }

  void work_loop() {
    Sender s;
    unsigned held = 0;
    std::unique_lock lock(mutex_);
    for (;;) {
      // The previous batch's slots go back under the same lock that takes the next.
      for (unsigned i = 0; i < held; ++i) free_.push_back(s.batch[i]);
      held = 0;
      ready_cv_.wait(lock, [&] { return count_ > 0 || finishing_; });
      if (count_ == 0) break;  // finishing and drained
      // Share a burst among the pool rather than letting the first waker take it all.
      const auto share = std::max<std::size_t>(1, count_ / worker_count_);
      held = static_cast<unsigned>(std::min<std::size_t>({kBatch, share, count_}));
      for (unsigned i = 0; i < held; ++i) {
        s.batch[i] = ready_[head_];
        head_ = (head_ + 1) % capacity_;
        --count_;
      }
      lock.unlock();
      send_batch(s, held);
      lock.lock();
    }
  }

  void send_batch(Sender& s, unsigned n) {
    for (unsigned i = 0; i < n; ++i) {
      Slot& slot = slots_[s.batch[i]];
      s.iov[i] = {slot.data, slot.len};
      msghdr& h = s.msgs[i].msg_hdr;
      h = msghdr{};
      h.msg_name = &slot.addr;
      h.msg_namelen = slot.addr_len;
      h.msg_iov = &s.iov[i];
      h.msg_iovlen = 1;
      const socklen_t control = reply_control(slot.control, slot.control_len, s.control[i].data());
      if (control != 0) {
        h.msg_control = s.control[i].data();
        h.msg_controllen = control;
      }
    }
    // One sendmmsg per run of datagrams that arrived on the same socket.
    for (unsigned i = 0; i < n;) {
      const int fd = slots_[s.batch[i]].fd;
      unsigned j = i + 1;
      while (j < n && slots_[s.batch[j]].fd == fd) ++j;
      send_run(fd, s.msgs.data() + i, j - i);
      i = j;
    }
  }

  void send_run(int fd, mmsghdr* msgs, unsigned n) {
    const Sent sent = send_datagrams(fd, msgs, n, name_, counters_, warn_gate_);
    counters_.add(counters_.datagrams_sent, sent.datagrams);
    counters_.add(counters_.requests, sent.datagrams);
    counters_.add(counters_.bytes_sent, sent.bytes);
  }

  void warn(const char* call, int err) { warn_gate_.warn(name_, call, err); }

  const std::string name_;
  const std::uint32_t max_datagram_;
  const std::uint32_t capacity_;
  const unsigned worker_count_;
  SourcePolicy policy_;
  bool deny_our_ports_ = true;
  const std::vector<int> sockets_;
  obs::ListenerCounters& counters_;

  SlotBuffers buffers_;
  std::vector<Slot> slots_;

  // The queue: every slot is in exactly one of free_, ready_ (a FIFO ring), or held
  // by a reader or worker between two lock sections, so ready_ can never overflow.
  std::mutex mutex_;
  std::condition_variable ready_cv_;
  std::vector<std::uint32_t> free_;
  std::vector<std::uint32_t> ready_;
  std::size_t head_ = 0;
  std::size_t count_ = 0;
  bool finishing_ = false;

  net::Fd wake_;  // eventfd; readable once stop_reading() ran
  std::atomic<bool> stop_reading_{false};
  std::atomic<bool> sweep_{false};  // stop(true): read the sockets empty before the readers end
  std::mutex lifecycle_;  // start/stop/joins
  bool started_ = false;
  std::vector<std::unique_ptr<Reader>> readers_;
  std::vector<std::thread> workers_;
  WarnGate warn_gate_;
};

EchoServer::EchoServer(const config::Listener& listener, std::vector<int> sockets, obs::ListenerCounters& counters)
    : impl_(std::make_unique<Impl>(listener, std::move(sockets), counters)) {}

EchoServer::~EchoServer() = default;

void EchoServer::start() { impl_->start(); }
void EchoServer::stop_reading() { impl_->stop_reading(); }
void EchoServer::stop(bool sweep_sockets) { impl_->stop(sweep_sockets); }

}  // namespace echorelay::udp
