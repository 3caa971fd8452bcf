// Counters for /metrics (Prometheus text format). Every data-plane event is a relaxed
// atomic add on the listener's own block; rendering walks the registry. Names and
// labels are fixed by CONFIG.md. Thread-safe: any thread may bump, any may render.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>

namespace echorelay::obs {

enum class Refuse : unsigned {
  FrameTooLarge,
  ReadTimeout,
  WriteTimeout,
  RequestTimeout,
  MaxConnections,
  PeerNotAllowed,
  RateLimited,
  DeniedPort,
  SelfLoop,  // a relay upstream that is one of this daemon's own relay listeners
  Count
};
std::string_view to_string(Refuse);

// Why a relay could not reach (or lost) its upstream: Go's net error classes.
enum class UpstreamError : unsigned { Refused, Reset, Timeout, Unreachable, Resolve, Other, Count };
std::string_view to_string(UpstreamError);

// Bucket upper bounds (seconds) of echorelay_upstream_connect_seconds.
inline constexpr std::array<double, 12> kConnectBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                           0.05,   0.1,   0.25,   0.5,   1.0,  2.5};

enum class Drop : unsigned { QueueFull, RateLimited, DeniedPort, Truncated, SendFailed, Count };
std::string_view to_string(Drop);

using Counter = std::atomic<std::uint64_t>;
using Gauge = std::atomic<std::int64_t>;

struct ListenerCounters {
  explicit ListenerCounters(std::string listener_name) : name(std::move(listener_name)) {}
  const std::string name;
  Counter connections_accepted{0};
  Gauge connections_active{0};
  Counter requests{0};
  Counter bytes_received{0};
  Counter bytes_sent{0};
  Counter datagrams_received{0};
  Counter datagrams_sent{0};
  Counter accept_errors{0};  // accept() failures that made the listener back off
  std::array<Counter, static_cast<unsigned>(Drop::Count)> dropped{};
  std::array<Counter, static_cast<unsigned>(Refuse::Count)> refused{};
  // relay
  std::array<Counter, static_cast<unsigned>(UpstreamError::Count)> upstream_errors{};
  std::array<Counter, kConnectBuckets.size() + 1> connect_buckets{};  // last = +Inf
  Counter connect_count{0};
  Counter connect_micros{0};  // sum, for the histogram's _sum
  Counter upstream_bytes_sent{0};
  Counter upstream_bytes_received{0};
  // UDP relay sessions (one per client address)
  Gauge udp_sessions_active{0};
  Counter udp_sessions_evicted{0};  // closed for max_sessions
  Counter udp_sessions_expired{0};  // closed after session_timeout idle

  void add(Counter& c, std::uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }
  void refuse(Refuse r) { add(refused[static_cast<unsigned>(r)]); }
  void drop(Drop d, std::uint64_t n = 1) { add(dropped[static_cast<unsigned>(d)], n); }
  void upstream_error(UpstreamError e) { add(upstream_errors[static_cast<unsigned>(e)]); }
  void observe_connect(double seconds) {
    std::size_t i = 0;
    while (i < kConnectBuckets.size() && seconds > kConnectBuckets[i]) ++i;
    add(connect_buckets[i]);
    add(connect_count);
    add(connect_micros, static_cast<std::uint64_t>(seconds * 1e6));
  }
};

class Registry {
 public:
  // Returns the block for `name`, creating it once; the reference stays valid for the
  // registry's lifetime (blocks are never moved).
  ListenerCounters& listener(const std::string& name);
  Counter restarts{0};          // echorelay_restarts_total
  Counter restart_failures{0};  // echorelay_restart_failures_total
  Gauge connections_active_total{0};

  std::string render_prometheus() const;

 private:
  mutable std::mutex mutex_;
  std::deque<ListenerCounters> listeners_;
};

}  // namespace echorelay::obs
