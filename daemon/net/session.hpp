// What the drain needs from a live session, and the per-worker set that tracks them.
// A SessionSet belongs to one worker thread: sessions join and leave it on that thread,
// and drain/close requests are posted there, so it needs no lock.
#pragma once

#include <boost/intrusive/list.hpp>
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

// Releases a connection's place in the per-listener and daemon-wide counts when the
// session ends, whichever thread that happens on.
struct ConnectionSlot {
  obs::ListenerCounters* counters = nullptr;
  obs::Gauge* total = nullptr;
  ConnectionSlot() = default;
  ConnectionSlot(obs::ListenerCounters* c, obs::Gauge* t) : counters(c), total(t) {}
  ConnectionSlot(ConnectionSlot&& o) noexcept : counters(std::exchange(o.counters, nullptr)), total(o.total) {}
  ConnectionSlot& operator=(ConnectionSlot&&) = delete;
  ~ConnectionSlot() {
    if (counters) {
      counters->connections_active.fetch_sub(1, std::memory_order_relaxed);
      total->fetch_sub(1, std::memory_order_relaxed);
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
