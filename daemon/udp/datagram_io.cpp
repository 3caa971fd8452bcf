// The data-plane helpers the UDP echo and relay servers share; see datagram_io.hpp.
// Behaviour moved here unchanged from the echo server.
#include "udp/datagram_io.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>
#include <new>
#include <system_error>
#include <utility>

#include "net/endpoint.hpp"
#include "net/socket_options.hpp"

namespace echorelay::udp {
namespace {

constexpr std::size_t kSourceSoftCap = 65536;               // past this, sweep idle sources
constexpr std::size_t kSourceHardCap = 4 * kSourceSoftCap;  // past this after a sweep, forget all
constexpr auto kSourceIdle = std::chrono::seconds(10);
constexpr auto kSweepInterval = std::chrono::seconds(1);
constexpr auto kWarnInterval = std::chrono::seconds(10);

// One control message holding `value`, written at `out`; its space, for msg_controllen.
template <class T>
socklen_t put_cmsg(unsigned char* out, int level, int type, const T& value) {
  auto* h = reinterpret_cast<cmsghdr*>(out);
  h->cmsg_level = level;
  h->cmsg_type = type;
  h->cmsg_len = CMSG_LEN(sizeof value);
  std::memcpy(CMSG_DATA(h), &value, sizeof value);
  return CMSG_SPACE(sizeof value);
}

}  // namespace

SlotBuffers::SlotBuffers(std::uint32_t count, std::size_t size)
    : bytes_(static_cast<std::size_t>(count) * size), size_(size) {
  void* mem = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) throw std::bad_alloc();
  base_ = static_cast<std::byte*>(mem);
}

SlotBuffers::~SlotBuffers() {
  if (base_ != nullptr) ::munmap(base_, bytes_);
}

SlotBuffers::SlotBuffers(SlotBuffers&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)), bytes_(other.bytes_), size_(other.size_) {}

SlotBuffers& SlotBuffers::operator=(SlotBuffers&& other) noexcept {
  if (this != &other) {
    if (base_ != nullptr) ::munmap(base_, bytes_);
    base_ = std::exchange(other.base_, nullptr);
    bytes_ = other.bytes_;
    size_ = other.size_;
  }
  return *this;
}

void fatal(const std::string& listener, const char* call, int err) {
  spdlog::critical("udp {}: {} on our own socket: {}", listener, call, net::errno_text(err));
  std::abort();
}

bool WarnGate::allow(std::uint64_t& suppressed) {
  const auto now = Clock::now().time_since_epoch().count();
  auto next = next_.load(std::memory_order_relaxed);
  if (now < next ||
      !next_.compare_exchange_strong(next, now + Clock::duration(kWarnInterval).count(), std::memory_order_relaxed)) {
    suppressed_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  suppressed = suppressed_.exchange(0, std::memory_order_relaxed);
  return true;
}

void WarnGate::warn(const std::string& listener, const char* call, int err) {
  std::uint64_t suppressed = 0;
  if (allow(suppressed)) {
    spdlog::warn("udp {}: {}: {} ({} similar warning(s) suppressed)", listener, call, net::errno_text(err), suppressed);
  }
}

std::uint16_t source_port(const sockaddr_storage& addr) {
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(addr).sin_port);
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(addr).sin6_port);
  return 0;
}

SourceLimiter::SourceLimiter(std::uint32_t rate)
    : rate_(rate), seed_(std::random_device{}()), buckets_(16, KeyHash{seed_}) {}

std::size_t SourceLimiter::KeyHash::operator()(const Key& k) const {
  // Seeded so that sources chosen by an attacker cannot aim at one hash chain.
  std::uint64_t h = seed ^ (k.words[0] * 0x9e3779b97f4a7c15ULL);
  h ^= (h >> 31) ^ (k.words[1] * 0xbf58476d1ce4e5b9ULL);
  h ^= h >> 29;
  return static_cast<std::size_t>(h * 0x94d049bb133111ebULL);
}

bool SourceLimiter::admit(const sockaddr_storage& addr, Clock::time_point now) {
  const Key key = make_key(addr);
  std::lock_guard lock(mutex_);
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

SourceLimiter::Key SourceLimiter::make_key(const sockaddr_storage& addr) {
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

void SourceLimiter::sweep(Clock::time_point now) {
  // A sweep is O(table); at most once per interval so a flood of new sources cannot
  // make every datagram pay for one.
  if (now < next_sweep_) return;
  next_sweep_ = now + kSweepInterval;
  std::erase_if(buckets_, [&](const auto& entry) { return now - entry.second.last > kSourceIdle; });
  // Still huge: too many live sources to track. Forgetting them grants each one a
  // fresh burst, which is what any new (or spoofed) source gets anyway.
  if (buckets_.size() >= kSourceHardCap) buckets_.clear();
}

void SourcePolicy::set_rate(std::uint32_t datagrams_per_second) {
  limiter = datagrams_per_second != 0 ? std::make_unique<SourceLimiter>(datagrams_per_second) : nullptr;
}

void SourcePolicy::configure(const config::Listener& listener) {
  allowed = listener.allow_sources;
  for (auto port : listener.deny_source_ports) denied_ports.set(port);
  set_rate(listener.rate_limit);
}

bool SourcePolicy::admit(const sockaddr_storage& from, Clock::time_point now, obs::ListenerCounters& counters) const {
  if (!net::admitted_by(allowed, from)) {
    counters.drop(obs::Drop::SourceNotAllowed);
    counters.refuse(obs::Refuse::SourceNotAllowed);
    return false;
  }
  if (denied_ports.test(source_port(from))) {
    counters.drop(obs::Drop::DeniedPort);
    counters.refuse(obs::Refuse::DeniedPort);
    return false;
  }
  if (limiter && !limiter->admit(from, now)) {
    counters.drop(obs::Drop::RateLimited);
    counters.refuse(obs::Refuse::RateLimited);
    return false;
  }
  return true;
}

void prepare_receive(mmsghdr& m, iovec& iov, void* buf, std::size_t len, sockaddr_storage& name,
                     unsigned char* control) {
  iov = {buf, len};
  msghdr& h = m.msg_hdr;
  h = msghdr{};
  h.msg_name = &name;
  h.msg_namelen = sizeof(sockaddr_storage);
  h.msg_iov = &iov;
  h.msg_iovlen = 1;
  h.msg_control = control;
  h.msg_controllen = kControlSize;
}

void enable_pktinfo(int fd, const std::string& listener) {
  int domain = 0;
  socklen_t len = sizeof domain;
  if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0) return;
  const int on = 1;
  // Without it replies leave with a routing-chosen source; that still works for
  // unconnected clients, so a failure here is only logged.
  int rc = 0;
  if (domain == AF_INET6) {
    rc = ::setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, sizeof on);
    // v4-mapped datagrams on a dual-stack socket report IP_PKTINFO instead.
    (void)::setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &on, sizeof on);
  } else if (domain == AF_INET) {
    rc = ::setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &on, sizeof on);
  }
  if (rc != 0) {
    spdlog::warn("udp {}: setsockopt PKTINFO: {}; replies use the routed source", listener, net::errno_text(errno));
  }
}

// The reply leaves from the address the datagram was sent to: on a wildcard-bound
// socket the routing choice can differ, and a connected client would discard it.
socklen_t reply_control(const unsigned char* control, socklen_t control_len, unsigned char* out) {
  if (control_len == 0) return 0;
  msghdr m{};
  m.msg_control = const_cast<unsigned char*>(control);
  m.msg_controllen = control_len;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
      in_pktinfo got;
      std::memcpy(&got, CMSG_DATA(c), sizeof got);
      in_pktinfo info{};
      // ipi_spec_dst is the local address for a unicast datagram and an address of the
      // receiving interface for a multicast one: a valid source either way.
      info.ipi_spec_dst = got.ipi_spec_dst;
      return put_cmsg(out, IPPROTO_IP, IP_PKTINFO, info);
    }
    if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
      in6_pktinfo got;
      std::memcpy(&got, CMSG_DATA(c), sizeof got);
      // A group address cannot be a source; let the kernel choose.
      if (IN6_IS_ADDR_MULTICAST(&got.ipi6_addr)) return 0;
      in6_pktinfo info{};
      info.ipi6_addr = got.ipi6_addr;
      return put_cmsg(out, IPPROTO_IPV6, IPV6_PKTINFO, info);
    }
  }
  return 0;
}

bool destination_address(const unsigned char* control, socklen_t control_len, std::uint16_t port,
                         sockaddr_storage& out, socklen_t& out_len) {
  if (control_len == 0) return false;
  msghdr m{};
  m.msg_control = const_cast<unsigned char*>(control);
  m.msg_controllen = control_len;
  net::IpAddress to;
  to.port = port;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr && to.family == AF_UNSPEC; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
      in_pktinfo got;
      std::memcpy(&got, CMSG_DATA(c), sizeof got);
      // ipi_addr is the header's destination (unlike ipi_spec_dst, the group for a
      // multicast datagram): what the client addressed.
      to.family = AF_INET;
      to.v4 = got.ipi_addr;
    } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
      in6_pktinfo got;
      std::memcpy(&got, CMSG_DATA(c), sizeof got);
      to.family = AF_INET6;
      to.v6 = got.ipi6_addr;
    }
  }
  if (to.family == AF_UNSPEC) return false;
  const net::SockAddr addr = net::to_sockaddr(to);
  out = addr.storage;
  out_len = addr.len;
  return true;
}

Sent send_datagrams(int fd, mmsghdr* msgs, unsigned n, const std::string& listener, obs::ListenerCounters& counters,
                    WarnGate& gate) {
  Sent total;
  unsigned done = 0;
  while (done < n) {
    const int sent = ::sendmmsg(fd, msgs + done, n - done, MSG_DONTWAIT);
    if (sent > 0) {
      for (int i = 0; i < sent; ++i) total.bytes += msgs[done + i].msg_len;
      total.datagrams += static_cast<unsigned>(sent);
      done += static_cast<unsigned>(sent);
      continue;
    }
    const int err = errno;
    if (err == EINTR) continue;
    if (is_again(err) || err == ENOBUFS) {
      counters.drop(obs::Drop::SendFailed, n - done);
      gate.warn(listener, "sendmmsg", err);
      return total;
    }
    if (err == EBADF || err == ENOTSOCK) fatal(listener, "sendmmsg", err);
    counters.drop(obs::Drop::SendFailed);
    gate.warn(listener, "sendmmsg", err);
    ++done;
  }
  return total;
}

}  // namespace echorelay::udp
