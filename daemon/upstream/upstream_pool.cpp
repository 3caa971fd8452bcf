// UpstreamPool; see upstream_pool.hpp.
#include "upstream/upstream_pool.hpp"

#include <algorithm>
#include <random>

namespace echorelay::upstream {

namespace {

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::uint64_t random_index(std::size_t n) {
  thread_local std::minstd_rand rng{std::random_device{}()};
  return std::uniform_int_distribution<std::uint64_t>(0, n - 1)(rng);
}

}  // namespace

UpstreamPool::UpstreamPool(std::vector<net::Endpoint> endpoints, config::Balance balance) : balance_(balance) {
  for (auto& e : endpoints) {
    auto u = std::make_unique<Upstream>();
    u->endpoint = std::move(e);
    upstreams_.push_back(std::move(u));
  }
}

bool UpstreamPool::ejected(const Upstream& u) const {
  return u.ejected_until_ns.load(std::memory_order_relaxed) > now_ns();
}

std::vector<UpstreamPool::Upstream*> UpstreamPool::plan() {
  const std::size_t n = upstreams_.size();
  std::vector<Upstream*> order;
  order.reserve(n);
  if (n == 0) return order;
  std::size_t first = 0;
  switch (balance_) {
    case config::Balance::RoundRobin:
      first = next_.fetch_add(1, std::memory_order_relaxed) % n;
      break;
    case config::Balance::LeastConnections: {
      // Ties rotate, so equal upstreams share load instead of the first taking all.
      const std::size_t start = next_.fetch_add(1, std::memory_order_relaxed) % n;
      std::int64_t best = INT64_MAX;
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t k = (start + i) % n;
        const auto active = upstreams_[k]->active.load(std::memory_order_relaxed);
        if (!ejected(*upstreams_[k]) && active < best) {
          best = active;
          first = k;
        }
      }
      break;
    }
    case config::Balance::Random: {
      // Two random choices, the less loaded wins: near-optimal spread without state.
      const std::size_t a = random_index(n);
      const std::size_t b = random_index(n);
      first = upstreams_[a]->active.load(std::memory_order_relaxed) <= upstreams_[b]->active.load(std::memory_order_relaxed)
                  ? a
                  : b;
      break;
    }
  }
  std::vector<Upstream*> later;
  for (std::size_t i = 0; i < n; ++i) {
    Upstream* u = upstreams_[(first + i) % n].get();
    (ejected(*u) ? later : order).push_back(u);
  }
  order.insert(order.end(), later.begin(), later.end());
  return order;
}

void UpstreamPool::connected(Upstream& u) {
  u.active.fetch_add(1, std::memory_order_relaxed);
  u.consecutive_failures.store(0, std::memory_order_relaxed);
  u.ejections.store(0, std::memory_order_relaxed);
  u.ejected_until_ns.store(0, std::memory_order_relaxed);
}

void UpstreamPool::failed(Upstream& u) {
  const unsigned failures = u.consecutive_failures.fetch_add(1, std::memory_order_relaxed) + 1;
  if (failures < kFailuresToEject) return;
  u.consecutive_failures.store(0, std::memory_order_relaxed);
  const unsigned ejections = std::min(u.ejections.fetch_add(1, std::memory_order_relaxed), 5u);
  const auto backoff = std::min<std::chrono::nanoseconds>(kEjectBase * (1u << ejections), kEjectMax);
  u.ejected_until_ns.store(now_ns() + backoff.count(), std::memory_order_relaxed);
}

void UpstreamPool::released(Upstream& u) { u.active.fetch_sub(1, std::memory_order_relaxed); }

}  // namespace echorelay::upstream
