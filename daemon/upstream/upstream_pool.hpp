// The upstreams of one relay listener: balancing (round-robin, least-connections,
// random as "power of two choices"), and passive health: an upstream whose connects
// failed `kFailuresToEject` times in a row is skipped for a back-off period that
// doubles per ejection (kEjectBase .. kEjectMax), then tried again. Thread-safe
// without a lock on the hot path (relaxed atomics per upstream).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "config/config.hpp"
#include "net/endpoint.hpp"

namespace echorelay::upstream {

inline constexpr unsigned kFailuresToEject = 3;
inline constexpr auto kEjectBase = std::chrono::seconds(1);
inline constexpr auto kEjectMax = std::chrono::seconds(30);

class UpstreamPool {
 public:
  struct Upstream {
    net::Endpoint endpoint;
    std::atomic<std::int64_t> active{0};
    std::atomic<unsigned> consecutive_failures{0};
    std::atomic<unsigned> ejections{0};
    std::atomic<std::int64_t> ejected_until_ns{0};  // steady_clock, 0 = healthy
  };

  UpstreamPool(std::vector<net::Endpoint> endpoints, config::Balance balance);

  std::size_t size() const { return upstreams_.size(); }
  // The order in which to try upstreams for one new session: the balancer's choice
  // first, then the others (for failover); ejected ones go last, so when all are
  // ejected they are still tried rather than refusing outright.
  std::vector<Upstream*> plan();
  void connected(Upstream& u);     // a connect succeeded; resets the failure run
  void failed(Upstream& u);        // a connect failed
  void released(Upstream& u);      // a session using `u` ended (least-connections)
  bool ejected(const Upstream& u) const;

 private:
  std::vector<std::unique_ptr<Upstream>> upstreams_;
  config::Balance balance_;
  std::atomic<std::uint64_t> next_{0};
};

}  // namespace echorelay::upstream
