// What the UDP echo and relay servers share on their data planes: errno classes,
// rate-limited warnings, the per-source token bucket, source admission (denied ports,
// rate), and IP_PKTINFO handling (reply from the address a datagram was sent to).
// No threads or sockets are owned here; every function is safe on any thread unless
// its type says otherwise.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <bitset>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "config/config.hpp"
#include "net/cidr.hpp"
#include "obs/metrics.hpp"

namespace echorelay::udp {

using Clock = std::chrono::steady_clock;

// Datagrams per recvmmsg/sendmmsg call.
inline constexpr unsigned kBatch = 32;
// Room for one IP_PKTINFO and one IPV6_PKTINFO: a dual-stack socket may carry either.
inline constexpr std::size_t kControlSize = CMSG_SPACE(sizeof(in6_pktinfo)) + CMSG_SPACE(sizeof(in_pktinfo));

// For errors on our own fd, which no peer can cause: log and abort.
[[noreturn]] void fatal(const std::string& listener, const char* call, int err);
inline bool is_again(int err) { return err == EAGAIN || err == EWOULDBLOCK; }
// Errors that can only mean the fd or our arguments are wrong, never the peer.
inline bool is_impossible(int err) { return err == EBADF || err == ENOTSOCK || err == EFAULT || err == EINVAL; }

// At most one warning per interval for events an attacker can repeat. Thread-safe.
// The payload room of a datagram queue: `count` slots of `size` bytes in one anonymous
// mapping. MAP_NORESERVE: a large queue costs address space only; pages are committed
// as datagrams first touch them, and a LIFO free list keeps reusing the warm ones.
class SlotBuffers {
 public:
  SlotBuffers() = default;
  SlotBuffers(std::uint32_t count, std::size_t size);  // std::bad_alloc when mmap fails
  ~SlotBuffers();
  SlotBuffers(SlotBuffers&& other) noexcept;
  SlotBuffers& operator=(SlotBuffers&& other) noexcept;
  SlotBuffers(const SlotBuffers&) = delete;
  SlotBuffers& operator=(const SlotBuffers&) = delete;

  std::byte* slot(std::uint32_t index) const { return base_ + static_cast<std::size_t>(index) * size_; }

 private:
  std::byte* base_ = nullptr;
  std::size_t bytes_ = 0;
  std::size_t size_ = 0;
};

class WarnGate {
 public:
  // True when a warning may be logged now; `suppressed` is how many were held back.
  bool allow(std::uint64_t& suppressed);
  // Logs "udp LISTENER: CALL: ERRNO (N similar warning(s) suppressed)" when allowed.
  void warn(const std::string& listener, const char* call, int err);

 private:
  std::atomic<Clock::rep> next_{0};
  std::atomic<std::uint64_t> suppressed_{0};
};

std::uint16_t source_port(const sockaddr_storage& addr);

// Token buckets per source address (rate datagrams/s, burst of one second's worth),
// shared by all of a listener's readers: with SO_REUSEPORT the kernel hashes
// each source address *and port* to a socket, so one host's ports spread over the
// sockets and a per-socket limit would let it send `sockets` times the rate.
class SourceLimiter {
 public:
  explicit SourceLimiter(std::uint32_t rate);
  bool admit(const sockaddr_storage& addr, Clock::time_point now);

 private:
  // IPv4 is stored v4-mapped so a dual-stack socket sees one source, whatever the family.
  struct Key {
    std::array<std::uint64_t, 2> words{};
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    std::uint64_t seed;
    std::size_t operator()(const Key& k) const;
  };
  struct Bucket {
    double tokens;
    Clock::time_point last;
  };

  static Key make_key(const sockaddr_storage& addr);
  void sweep(Clock::time_point now);

  std::uint32_t rate_;
  std::uint64_t seed_;
  std::mutex mutex_;
  std::unordered_map<Key, Bucket, KeyHash> buckets_;
  Clock::time_point next_sweep_{};
};

// The client checks every UDP server applies before a datagram is served: a source
// outside allow_sources, a denied source port, then the per-source rate (0 = off). A
// refusal bumps the drop and refuse counters. One per listener; any of its readers may
// call admit().
struct SourcePolicy {
  std::vector<net::Cidr> allowed;  // empty = every source
  std::bitset<65536> denied_ports;
  std::unique_ptr<SourceLimiter> limiter;  // none when rate_limit is 0 (off)

  // allow_sources, deny_source_ports and rate_limit of `listener`.
  void configure(const config::Listener& listener);
  void set_rate(std::uint32_t datagrams_per_second);
  bool limits_rate() const { return limiter != nullptr; }
  bool admit(const sockaddr_storage& from, Clock::time_point now, obs::ListenerCounters& counters) const;
};

// Points `m` at one datagram's room for recvmmsg: `len` payload bytes at `buf`, the
// sender's address in `name`, kControlSize bytes of control data (PKTINFO) at `control`.
void prepare_receive(mmsghdr& m, iovec& iov, void* buf, std::size_t len, sockaddr_storage& name,
                     unsigned char* control);

// Turns on IP_PKTINFO / IPV6_RECVPKTINFO so each datagram reports the address it was
// sent to. A failure is logged: replies then leave from a routing-chosen source.
void enable_pktinfo(int fd, const std::string& listener);

// From the control data received with a datagram, the control data for a reply that
// leaves from the address the datagram was sent to (written to `out`, which has
// kControlSize bytes); returns its length, 0 for "let the kernel choose".
socklen_t reply_control(const unsigned char* control, socklen_t control_len, unsigned char* out);

// The destination address of a received datagram (its header's, from PKTINFO) with
// `port` filled in; false when the control data carries none.
bool destination_address(const unsigned char* control, socklen_t control_len, std::uint16_t port,
                         sockaddr_storage& out, socklen_t& out_len);

// Sends msgs[0..n) on `fd` with sendmmsg, never waiting: the caller is a worker loop
// that serves every other socket and connection too, so what a full send buffer (or
// ENOBUFS) refuses is dropped, as UDP may, rather than stalling them all; a datagram the kernel refuses for its address or route (EINVAL for a
// bogus family, ENETUNREACH, EPERM from a firewall) is dropped alone. Drops are counted
// as SendFailed and warned through `gate`; an error on our own fd aborts.
struct Sent {
  unsigned datagrams = 0;
  std::uint64_t bytes = 0;
};
Sent send_datagrams(int fd, mmsghdr* msgs, unsigned n, const std::string& listener, obs::ListenerCounters& counters,
                    WarnGate& gate);

}  // namespace echorelay::udp
