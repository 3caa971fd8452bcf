// What the drain needs from a live session, and the per-worker set that tracks them.
// A SessionSet belongs to one worker thread: sessions join and leave it on that thread,
// and drain/close requests are posted there, so it needs no lock.
#pragma once

#include <atomic>
#include <boost/intrusive/list.hpp>
#include <functional>
#include <utility>

#include "obs/metrics.hpp"

namespace echorelay::net {

using SessionHook = boost::intrusive::list_base_hook<boost::intrusive::link_mode<boost::intrusive::auto_unlink>>;

class Session : public SessionHook {
 public:
  virtual ~Session() = default;
  // Finish the request in flight, then close at the next request boundary; an idle
  // session closes at once (half-close first, so the peer sees FIN, not RST).
  virtual void drain() = 0;
  // The drain deadline passed: close now.
  virtual void close_now() = 0;
};

// The drain's gate: once armed, the end of the daemon's last connection runs the
// callback (on that connection's thread), so a drain ends the moment it can instead
// of at the next look. Arm once; the callback must be safe to run any number of times.
class LastConnectionWatch {
 public:
  void arm(std::function<void()> on_last) {
    on_last_ = std::move(on_last);
    armed_.store(true, std::memory_order_release);
  }
  void last_closed() const {
    if (armed_.load(std::memory_order_acquire)) on_last_();
  }

 private:
  std::function<void()> on_last_;
  std::atomic<bool> armed_{false};
};

// Releases a connection's place in the per-listener and daemon-wide counts when the
// session ends, whichever thread that happens on.
struct ConnectionSlot {
  obs::ListenerCounters* counters = nullptr;
  obs::Gauge* total = nullptr;
  const LastConnectionWatch* watch = nullptr;
  ConnectionSlot() = default;
  ConnectionSlot(obs::ListenerCounters* c, obs::Gauge* t, const LastConnectionWatch* w = nullptr)
      : counters(c), total(t), watch(w) {}
  ConnectionSlot(ConnectionSlot&& o) noexcept
      : counters(std::exchange(o.counters, nullptr)), total(o.total), watch(o.watch) {}
  ConnectionSlot& operator=(ConnectionSlot&&) = delete;
  ~ConnectionSlot() {
    if (counters) {
      counters->connections_active.fetch_sub(1, std::memory_order_relaxed);
      if (total->fetch_sub(1, std::memory_order_acq_rel) == 1 && watch) watch->last_closed();
    }
  }
};

using SessionSet = boost::intrusive::list<Session, boost::intrusive::constant_time_size<false>>;

// Calls `fn` on every session; tolerant of sessions leaving the set from within `fn`.
template <class Fn>
void for_each_session(SessionSet& set, Fn fn) {
  for (auto it = set.begin(); it != set.end();) {
    Session& s = *it++;
    fn(s);
  }
}

}  // namespace echorelay::net
