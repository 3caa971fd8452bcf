// Counters for /metrics (Prometheus text format). Every data-plane event is a relaxed
// atomic add on the listener's own block; rendering walks the registry. Names and
// labels are fixed by CONFIG.md. Thread-safe: any thread may bump, any may render.
#pragma once

#include <array>
#include <tuple>
#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
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
  SelfLoop,     // a relay upstream that is one of this daemon's own relay listeners
  IdleTimeout,  // a relayed connection quiet both ways for `idle_timeout`
  SourceNotAllowed,  // a datagram from outside the listener's allow_sources
  Count
};
std::string_view to_string(Refuse);

// Why a relay could not reach (or lost) its upstream: Go's net error classes.
enum class UpstreamError : unsigned { Refused, Reset, Timeout, Unreachable, Resolve, Other, Count };
std::string_view to_string(UpstreamError);

// Bucket upper bounds (seconds) of echorelay_upstream_connect_seconds.
inline constexpr std::array<double, 12> kConnectBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                           0.05,   0.1,   0.25,   0.5,   1.0,  2.5};

// UpstreamBusy is counted per mirror upstream only (its block's label says which).
enum class Drop : unsigned {
  QueueFull,
  RateLimited,
  DeniedPort,
  Truncated,
  SendFailed,
  SourceNotAllowed,
  UpstreamBusy,
  Count
};
std::string_view to_string(Drop);

using Counter = std::atomic<std::uint64_t>;
using Gauge = std::atomic<std::int64_t>;

// A listener's block, or (with `upstream` set) one mirror upstream's of that listener:
// both live in the registry and the ledger, so both carry over a hot restart.
struct ListenerCounters {
  explicit ListenerCounters(std::string listener_name, std::string upstream_label = {})
      : name(std::move(listener_name)), upstream(std::move(upstream_label)) {}
  const std::string name;      // the listener
  const std::string upstream;  // empty for the listener's own block
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
  // What fold_into_ledger() already moved to the ledger, per for_each_counter index.
  std::array<std::uint64_t, 64> folded{};
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
  // mirror upstream blocks (datagrams_sent, bytes_sent and dropped[UpstreamBusy] too)
  Counter sampled_out{0};    // not sent to this upstream because of its `sample`
  Counter mirror_errors{0};  // ICMP errors reported on its socket, unresolved name

  // Every counter (not the gauges) in a fixed order: the layout of a ledger slot.
  template <class F>
  void for_each_counter(F&& f) {
    for (Counter* c : {&connections_accepted, &requests, &bytes_received, &bytes_sent, &datagrams_received,
                       &datagrams_sent, &accept_errors, &connect_count, &connect_micros, &upstream_bytes_sent,
                       &upstream_bytes_received, &udp_sessions_evicted, &udp_sessions_expired, &sampled_out,
                       &mirror_errors}) {
      f(*c);
    }
    for (auto& c : dropped) f(c);
    for (auto& c : refused) f(c);
    for (auto& c : upstream_errors) f(c);
    for (auto& c : connect_buckets) f(c);
  }
  static constexpr std::size_t kCounterCount = 15 + static_cast<std::size_t>(Drop::Count) +
                                               static_cast<std::size_t>(Refuse::Count) +
                                               static_cast<std::size_t>(UpstreamError::Count) +
                                               kConnectBuckets.size() + 1;

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

static_assert(ListenerCounters::kCounterCount <= std::tuple_size_v<decltype(ListenerCounters::folded)>);

// Counters survive hot restarts through a ledger: a shared-memory region (a memfd the
// predecessor hands over beside the sockets) holding, per listener name, the totals
// that processes of this service moved there. Every process exports ledger + what it
// counted itself since it last folded. A process folds before it spawns a successor
// (so the successor starts from its totals) and when it exits (so what it counted
// while draining is not lost), and the service-wide counters live in the ledger only.
// Gauges are never carried: they describe this process.
class Registry {
 public:
  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Returns the block for `name`, creating it once; the reference stays valid for the
  // registry's lifetime (blocks are never moved).
  ListenerCounters& listener(const std::string& name);
  // The block of one mirror upstream (`upstream` as written in the config).
  ListenerCounters& upstream(const std::string& listener, const std::string& upstream);
  Counter& restarts() const;          // echorelay_restarts_total (lives in the ledger)
  Counter& restart_failures() const;  // echorelay_restart_failures_total (likewise)
  Gauge connections_active_total{0};

  // Takes over a predecessor's ledger (the fd is ours then); false, with the reason in
  // `error`, when it cannot be used (another binary's layout): counting starts afresh.
  bool adopt_ledger(int fd, std::string& error);
  int ledger_fd() const;  // -1 without shared memory
  // Adds what was counted since the last fold to the ledger.
  void fold_into_ledger();

  std::string render_prometheus() const;

 private:
  struct Ledger;
  mutable std::mutex mutex_;
  std::deque<ListenerCounters> listeners_;
  std::unique_ptr<Ledger> ledger_;
  const double start_time_seconds_;
};

}  // namespace echorelay::obs
