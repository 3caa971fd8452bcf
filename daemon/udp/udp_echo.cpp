// UDP echo: one reader thread per socket receives straight into preallocated queue
// slots (recvmmsg), filters sources (denied ports, per-source rate), and a worker pool
// answers each datagram with its exact bytes from the socket it arrived on (sendmmsg).
// Sockets are borrowed: nothing here binds, closes or changes their membership.
#include "udp/udp_echo.hpp"

#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bitset>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <random>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>

namespace echorelay::udp {
namespace {

using Clock = std::chrono::steady_clock;

constexpr unsigned kBatch = 32;
constexpr std::size_t kSourceSoftCap = 65536;       // past this, sweep idle sources
constexpr std::size_t kSourceHardCap = 4 * kSourceSoftCap;  // past this after a sweep, forget all
constexpr auto kSourceIdle = std::chrono::seconds(10);
constexpr auto kSweepInterval = std::chrono::seconds(1);
constexpr int kSendWaitMs = 10;
constexpr auto kWarnInterval = std::chrono::seconds(10);
// Room for one IP_PKTINFO and one IPV6_PKTINFO: a dual-stack socket may carry either.
constexpr std::size_t kControlSize = CMSG_SPACE(sizeof(in6_pktinfo)) + CMSG_SPACE(sizeof(in_pktinfo));

std::string errno_text(int err) { return std::system_category().message(err); }

[[noreturn]] void fatal(const std::string& listener, const char* call, int err) {
  spdlog::critical("udp {}: {} on our own socket: {}", listener, call, errno_text(err));
  std::abort();
}

bool is_again(int err) { return err == EAGAIN || err == EWOULDBLOCK; }
// Errors that can only mean the fd or our arguments are wrong, never the peer.
bool is_impossible(int err) { return err == EBADF || err == ENOTSOCK || err == EFAULT || err == EINVAL; }

// At most one warning per interval for events an attacker can repeat.
class WarnGate {
 public:
  // True when a warning may be logged now; `suppressed` is how many were held back.
  bool allow(std::uint64_t& suppressed) {
    const auto now = Clock::now().time_since_epoch().count();
    auto next = next_.load(std::memory_order_relaxed);
    if (now < next ||
        !next_.compare_exchange_strong(next, now + Clock::duration(kWarnInterval).count(),
                                       std::memory_order_relaxed)) {
      suppressed_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    suppressed = suppressed_.exchange(0, std::memory_order_relaxed);
    return true;
  }

 private:
  std::atomic<Clock::rep> next_{0};
  std::atomic<std::uint64_t> suppressed_{0};
};

std::uint16_t source_port(const sockaddr_storage& addr) {
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(addr).sin_port);
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(addr).sin6_port);
  return 0;
}

// Token bucket per source address (port ignored). Owned by one reader thread: with
// SO_REUSEPORT the kernel hashes a source to one socket, so no lock is needed.
class SourceLimiter {
 public:
  explicit SourceLimiter(std::uint32_t rate) : rate_(rate), seed_(std::random_device{}()) {}

  bool admit(const sockaddr_storage& addr, Clock::time_point now) {
    const Key key = make_key(addr);
    auto it = buckets_.find(key);
    if (it == buckets_.end()) {
      if (buckets_.size() >= kSourceSoftCap) sweep(now);
      buckets_.emplace(key, Bucket{static_cast<double>(rate_) - 1.0, now});
      return true;
    }
    Bucket& b = it->second;
    const double elapsed = std::chrono::duration<double>(now - b.last).count();
    b.tokens = std::min(static_cast<double>(rate_), b.tokens + elapsed * rate_);
    b.last = now;
    if (b.tokens < 1.0) return false;
    b.tokens -= 1.0;
    return true;
  }

 private:
  // IPv4 is stored v4-mapped so a dual-stack socket sees one source, whatever the family.
  struct Key {
    std::array<std::uint64_t, 2> words{};
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    std::uint64_t seed;
    std::size_t operator()(const Key& k) const {
      // Seeded so that sources chosen by an attacker cannot aim at one hash chain.
      std::uint64_t h = seed ^ (k.words[0] * 0x9e3779b97f4a7c15ULL);
      h ^= (h >> 31) ^ (k.words[1] * 0xbf58476d1ce4e5b9ULL);
      h ^= h >> 29;
      return static_cast<std::size_t>(h * 0x94d049bb133111ebULL);
    }
  };
  struct Bucket {
    double tokens;
    Clock::time_point last;
  };

  static Key make_key(const sockaddr_storage& addr) {
    std::array<unsigned char, 16> bytes{};
    if (addr.ss_family == AF_INET) {
      bytes[10] = bytes[11] = 0xff;
      std::memcpy(&bytes[12], &reinterpret_cast<const sockaddr_in&>(addr).sin_addr, 4);
    } else if (addr.ss_family == AF_INET6) {
      std::memcpy(bytes.data(), &reinterpret_cast<const sockaddr_in6&>(addr).sin6_addr, 16);
    }
    Key key;
    std::memcpy(key.words.data(), bytes.data(), 16);
    return key;
  }

  void sweep(Clock::time_point now) {
    // A sweep is O(table); at most once per interval so a flood of new sources cannot
    // make every datagram pay for one.
    if (now < next_sweep_) return;
    next_sweep_ = now + kSweepInterval;
    std::erase_if(buckets_, [&](const auto& entry) { return now - entry.second.last > kSourceIdle; });
    // Still huge: too many live sources to track. Forgetting them grants each one a
    // fresh burst, which is what any new (or spoofed) source gets anyway.
    if (buckets_.size() >= kSourceHardCap) buckets_.clear();
  }

  std::uint32_t rate_;
  std::uint64_t seed_;
  std::unordered_map<Key, Bucket, KeyHash> buckets_{16, KeyHash{seed_}};
  Clock::time_point next_sweep_{};
};

struct Slot {
  std::byte* data = nullptr;
  std::uint32_t len = 0;
  int fd = -1;
  socklen_t addr_len = 0;
  socklen_t control_len = 0;
  sockaddr_storage addr{};
  alignas(cmsghdr) unsigned char control[kControlSize]{};
};

// The reply leaves from the address the datagram was sent to: on a wildcard-bound
// socket the routing choice can differ, and a connected client would discard it.
socklen_t reply_control(const Slot& slot, unsigned char* out) {
  if (slot.control_len == 0) return 0;
  msghdr m{};
  m.msg_control = const_cast<unsigned char*>(slot.control);
  m.msg_controllen = slot.control_len;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
      in_pktinfo got;
      std::memcpy(&got, CMSG_DATA(c), sizeof got);
      in_pktinfo info{};
      // ipi_spec_dst is the local address for a unicast datagram and an address of the
      // receiving interface for a multicast one: a valid source either way.
      info.ipi_spec_dst = got.ipi_spec_dst;
      auto* h = reinterpret_cast<cmsghdr*>(out);
      h->cmsg_level = IPPROTO_IP;
      h->cmsg_type = IP_PKTINFO;
      h->cmsg_len = CMSG_LEN(sizeof info);
      std::memcpy(CMSG_DATA(h), &info, sizeof info);
      return CMSG_SPACE(sizeof info);
    }
    if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
      in6_pktinfo got;
      std::memcpy(&got, CMSG_DATA(c), sizeof got);
      // A group address cannot be a source; let the kernel choose.
      if (IN6_IS_ADDR_MULTICAST(&got.ipi6_addr)) return 0;
      in6_pktinfo info{};
      info.ipi6_addr = got.ipi6_addr;
      auto* h = reinterpret_cast<cmsghdr*>(out);
      h->cmsg_level = IPPROTO_IPV6;
      h->cmsg_type = IPV6_PKTINFO;
      h->cmsg_len = CMSG_LEN(sizeof info);
      std::memcpy(CMSG_DATA(h), &info, sizeof info);
      return CMSG_SPACE(sizeof info);
    }
  }
  return 0;
}

void name_thread(const char* prefix, std::size_t index) {
  const std::string name = prefix + std::to_string(index);
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
}

}  // namespace

struct EchoServer::Impl {
  struct Reader {
    explicit Reader(int socket, std::uint32_t rate) : fd(socket), limiter(rate) {}
    int fd;
    std::thread thread;
    SourceLimiter limiter;
    std::array<std::uint32_t, kBatch> reserved{};
    std::array<mmsghdr, kBatch> msgs{};
    std::array<iovec, kBatch> iov{};
    // When the queue is full datagrams are still taken off the socket (to count them)
    // into one shared scratch buffer.
    std::array<sockaddr_storage, kBatch> scratch_names{};
    std::unique_ptr<std::byte[]> scratch;
  };

  struct Sender {
    std::array<std::uint32_t, kBatch> batch{};
    std::array<mmsghdr, kBatch> msgs{};
    std::array<iovec, kBatch> iov{};
    alignas(cmsghdr) std::array<std::array<unsigned char, kControlSize>, kBatch> control{};
  };

  Impl(const config::Listener& listener, std::vector<int> sockets, obs::ListenerCounters& counters)
      : name_(listener.name),
        max_datagram_(std::max<std::uint32_t>(listener.max_datagram, 1)),
        capacity_(std::max<std::uint32_t>(listener.queue, 1)),
        worker_count_(listener.workers != 0 ? listener.workers
                                            : std::max(1U, std::thread::hardware_concurrency())),
        rate_(listener.rate_limit),
        sockets_(std::move(sockets)),
        counters_(counters) {
    for (auto port : listener.deny_source_ports) denied_ports_.set(port);
    // MAP_NORESERVE: a large queue costs address space only; pages are committed as
    // datagrams first touch them, and the LIFO free list keeps reusing the warm ones.
    buffer_bytes_ = static_cast<std::size_t>(capacity_) * max_datagram_;
    void* mem = ::mmap(nullptr, buffer_bytes_, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) throw std::bad_alloc();
    buffers_ = static_cast<std::byte*>(mem);
    slots_.resize(capacity_);
    free_.reserve(capacity_);
    ready_.resize(capacity_);
    for (std::uint32_t i = 0; i < capacity_; ++i) {
      slots_[i].data = buffers_ + static_cast<std::size_t>(i) * max_datagram_;
      free_.push_back(capacity_ - 1 - i);
    }
    wake_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!wake_) {
      const int err = errno;
      ::munmap(buffers_, buffer_bytes_);
      throw std::system_error(err, std::system_category(), "eventfd");
    }
  }

  ~Impl() {
    stop();
    ::munmap(buffers_, buffer_bytes_);
  }

  void start() {
    std::lock_guard guard(lifecycle_);
    if (started_) return;
    started_ = true;
    for (int fd : sockets_) enable_pktinfo(fd);
    for (unsigned i = 0; i < worker_count_; ++i) {
      workers_.emplace_back([this, i] {
        name_thread("udp-w", i);
        work_loop();
      });
    }
    for (std::size_t i = 0; i < sockets_.size(); ++i) {
      auto reader = std::make_unique<Reader>(sockets_[i], rate_);
      reader->scratch = std::make_unique<std::byte[]>(max_datagram_);
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
    stop_reading_.store(true, std::memory_order_release);
    const std::uint64_t one = 1;
    // Level-triggered: every reader polling the eventfd wakes, and it is never read.
    [[maybe_unused]] auto n = ::write(wake_.get(), &one, sizeof one);
    std::lock_guard guard(lifecycle_);
    bool joined = false;
    for (auto& r : readers_) {
      if (r->thread.joinable()) {
        r->thread.join();
        joined = true;
      }
    }
    if (joined) spdlog::info("udp {}: stopped reading; sockets left open", name_);
  }

  void stop() {
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
  void enable_pktinfo(int fd) {
    int domain = 0;
    socklen_t len = sizeof domain;
    if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0) return;
    const int on = 1;
    // Without it replies leave with a routing-chosen source; echo still works for
    // unconnected clients, so a failure here is only logged.
    int rc = 0;
    if (domain == AF_INET6) {
      rc = ::setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, sizeof on);
      // v4-mapped datagrams on a dual-stack socket report IP_PKTINFO instead.
      (void)::setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &on, sizeof on);
    } else if (domain == AF_INET) {
      rc = ::setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &on, sizeof on);
    }
    if (rc != 0) spdlog::warn("udp {}: setsockopt PKTINFO: {}; replies use the routed source", name_, errno_text(errno));
  }

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
    pollfd fds[2] = {{r.fd, POLLIN, 0}, {wake_.get(), POLLIN, 0}};
    while (!stop_reading_.load(std::memory_order_acquire)) {
      const int n = ::poll(fds, 2, -1);
      if (n < 0) {
        const int err = errno;
        if (err == EINTR) continue;
        if (is_impossible(err)) fatal(name_, "poll", err);
        warn("poll", err);
        ::poll(nullptr, 0, kSendWaitMs);  // ENOMEM: back off instead of spinning
        continue;
      }
      if (fds[1].revents != 0) break;
      if ((fds[0].revents & POLLNVAL) != 0) fatal(name_, "poll", EBADF);
      drain(r);
    }
  }

  bool admit(Reader& r, const sockaddr_storage& from, Clock::time_point now) {
    if (denied_ports_.test(source_port(from))) {
      counters_.drop(obs::Drop::DeniedPort);
      counters_.refuse(obs::Refuse::DeniedPort);
      return false;
    }
    if (rate_ != 0 && !r.limiter.admit(from, now)) {
      counters_.drop(obs::Drop::RateLimited);
      counters_.refuse(obs::Refuse::RateLimited);
      return false;
    }
    return true;
  }

  void drain(Reader& r) {
    while (!stop_reading_.load(std::memory_order_acquire)) {
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
      const auto now = rate_ != 0 ? Clock::now() : Clock::time_point{};
      unsigned accepted = 0;
      std::uint64_t bytes = 0;
      for (unsigned i = 0; i < static_cast<unsigned>(n); ++i) {
        const msghdr& h = r.msgs[i].msg_hdr;
        const auto len = r.msgs[i].msg_len;
        bytes += len;
        const auto& from = *static_cast<const sockaddr_storage*>(h.msg_name);
        if (!admit(r, from, now)) continue;
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
        // Positions before i are already decided, so swapping keeps the rest intact.
        std::swap(r.reserved[accepted++], r.reserved[i]);
      }
      counters_.add(counters_.datagrams_received, static_cast<std::uint64_t>(n));
      counters_.add(counters_.bytes_received, bytes);
      publish(r.reserved, accepted, k);
      if (static_cast<unsigned>(n) < want) return;  // the socket is empty: back to poll
    }
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
      const socklen_t control = reply_control(slot, s.control[i].data());
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
    unsigned done = 0;
    bool waited = false;
    while (done < n) {
      const int sent = ::sendmmsg(fd, msgs + done, n - done, MSG_DONTWAIT);
      if (sent > 0) {
        std::uint64_t bytes = 0;
        for (int i = 0; i < sent; ++i) bytes += msgs[done + i].msg_len;
        counters_.add(counters_.datagrams_sent, static_cast<std::uint64_t>(sent));
        counters_.add(counters_.requests, static_cast<std::uint64_t>(sent));
        counters_.add(counters_.bytes_sent, bytes);
        done += static_cast<unsigned>(sent);
        waited = false;
        continue;
      }
      const int err = errno;
      if (err == EINTR) continue;
      if (is_again(err) || err == ENOBUFS) {
        if (!waited) {
          waited = true;
          pollfd p{fd, POLLOUT, 0};
          if (::poll(&p, 1, kSendWaitMs) > 0) continue;
        }
        // The send buffer stayed full for the whole wait: shed this run rather than
        // stall the pool behind one socket.
        counters_.drop(obs::Drop::SendFailed, n - done);
        warn("sendmmsg", err);
        return;
      }
      if (err == EBADF || err == ENOTSOCK) fatal(name_, "sendmmsg", err);
      // The peer's address or route is at fault (EINVAL for a bogus family, ENETUNREACH,
      // EPERM from a firewall): drop this one, keep the rest.
      counters_.drop(obs::Drop::SendFailed);
      warn("sendmmsg", err);
      ++done;
      waited = false;
    }
  }

  void warn(const char* call, int err) {
    std::uint64_t suppressed = 0;
    if (warn_gate_.allow(suppressed)) {
      spdlog::warn("udp {}: {}: {} ({} similar warning(s) suppressed)", name_, call, errno_text(err), suppressed);
    }
  }

  const std::string name_;
  const std::uint32_t max_datagram_;
  const std::uint32_t capacity_;
  const unsigned worker_count_;
  const std::uint32_t rate_;
  std::bitset<65536> denied_ports_;
  const std::vector<int> sockets_;
  obs::ListenerCounters& counters_;

  std::byte* buffers_ = nullptr;
  std::size_t buffer_bytes_ = 0;
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
void EchoServer::stop() { impl_->stop(); }

}  // namespace echorelay::udp
