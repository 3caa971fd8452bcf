// Poller: a worker's own edge-triggered epoll set, nested in the worker's io_context,
// with a coarse deadline wheel. It exists for connections whose hot path is one recv
// and one send (the echo handler). Asio re-arms its epoll registration with
// epoll_ctl(MOD) on every async_wait and needs a pinned buffer for async_read_some;
// here a socket is registered once (EPOLLIN|EPOLLOUT|EPOLLRDHUP, edge-triggered) and
// read into per-thread scratch, so a request costs exactly recv + send plus a share of
// one epoll_wait, and an idle connection costs only its handler object.
#pragma once

#include <sys/epoll.h>

#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/intrusive/list.hpp>
#include <chrono>
#include <cstdint>
#include <vector>

namespace echorelay::net {

class Poller;

using PollerHook = boost::intrusive::list_member_hook<>;

// What lives on a Poller. Callbacks run on the worker's thread and may remove and
// delete any handler (one session may own several), as long as it calls remove() first.
class PollHandler {
 public:
  using Clock = std::chrono::steady_clock;

  // The fd is ready for whatever `events` says (EPOLLIN/OUT/RDHUP/HUP/ERR). Edge-
  // triggered: read until EAGAIN (or a short read) and write until done or EAGAIN.
  virtual void on_ready(std::uint32_t events) = 0;
  // The deadline set with Poller::set_deadline has passed (checked against now()).
  virtual void on_deadline() = 0;
  // The poller is being destroyed with this handler still on it: release everything.
  virtual void abandon() = 0;

 protected:
  PollHandler() = default;
  ~PollHandler() = default;
  PollHandler(const PollHandler&) = delete;
  PollHandler& operator=(const PollHandler&) = delete;

 private:
  friend class Poller;
  PollerHook member_;  // in Poller::members_ while registered
  PollerHook wheel_;   // in a wheel slot while a deadline is pending
  Clock::time_point deadline_ = Clock::time_point::max();
  std::int64_t tick_ = 0;  // the wheel slot's tick while linked
};

class Poller {
 public:
  using Clock = std::chrono::steady_clock;

  explicit Poller(boost::asio::io_context& ctx);
  ~Poller();  // abandons every handler still registered
  Poller(const Poller&) = delete;
  Poller& operator=(const Poller&) = delete;

  // Registers `fd` (non-blocking) once for its lifetime. False with errno on failure.
  // The default events suit a stream; a datagram socket read by several workers asks
  // for EPOLLIN | EPOLLET | EPOLLEXCLUSIVE, so one arrival wakes one of them.
  static constexpr std::uint32_t kStreamEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  bool add(int fd, PollHandler& handler, std::uint32_t events = kStreamEvents);
  // Unregisters before the handler closes `fd`: an fd shared with a forked child that
  // has not exec'd yet would otherwise stay in the set with a dangling handler.
  void remove(int fd, PollHandler& handler);
  // What remove() does but for the fd: drops the poller's references to a handler that
  // was never added (one that is only deferred or given a deadline) before it goes.
  void forget(PollHandler& handler);

  // Calls handler.on_ready(EPOLLIN | EPOLLOUT) again after every other ready handler
  // had its turn. For a handler that stops before EAGAIN to be fair to the others
  // (edge-triggered, no new edge may come for what it left), or for work that waits
  // for the batch's other handlers (a reply batch sent once for all of them).
  void defer(PollHandler& handler);

  // Deadlines fire up to one tick late. Moving a deadline later costs nothing (it is
  // noticed when the earlier slot comes round); only an earlier one relinks.
  void set_deadline(PollHandler& handler, Clock::time_point deadline);
  void clear_deadline(PollHandler& handler) { handler.deadline_ = Clock::time_point::max(); }

  // Read once per batch of events, so a busy loop does not ask the clock per request.
  Clock::time_point now() const { return now_; }

  static constexpr auto kTick = std::chrono::milliseconds(4);
  static constexpr std::int64_t kSlots = 1024;  // the wheel spans ~4 s; later ones relink

 private:
  using Members = boost::intrusive::list<PollHandler, boost::intrusive::member_hook<PollHandler, PollerHook, &PollHandler::member_>,
                                         boost::intrusive::constant_time_size<false>>;
  using Slot = boost::intrusive::list<PollHandler, boost::intrusive::member_hook<PollHandler, PollerHook, &PollHandler::wheel_>,
                                      boost::intrusive::constant_time_size<false>>;

  void wait_ready();
  void run_ready();
  std::int64_t tick_of(Clock::time_point t) const;
  void link(PollHandler& handler);
  void arm_timer(std::int64_t tick);
  void on_timer();

  boost::asio::posix::stream_descriptor epoll_;
  boost::asio::steady_timer timer_;
  Members members_;
  std::array<Slot, kSlots> slots_;
  std::array<epoll_event, 256> events_{};
  const Clock::time_point epoch_;
  Clock::time_point now_;
  std::int64_t next_tick_;  // the first slot not yet processed
  std::int64_t timer_tick_ = INT64_MAX;  // the slot the timer is armed for
  bool in_timer_ = false;
  std::vector<PollHandler*> deferred_;  // for the next round (null: removed)
  std::vector<PollHandler*> due_;       // this round's, while they run
  bool deferred_posted_ = false;
  int dispatching_ = 0;  // index into events_ while a batch is dispatched
  int batch_size_ = 0;   // 0 outside a batch
};

// A worker's loop as a data plane sees it: its io_context (to post to) and its Poller
// (touched only on that loop's thread once the loop runs).
struct LoopRef {
  boost::asio::io_context* ctx;
  Poller* poller;
};

}  // namespace echorelay::net
