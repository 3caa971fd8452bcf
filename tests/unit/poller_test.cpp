// The worker's Poller on real sockets (socketpairs) and a real io_context: readiness
// is reported edge-triggered, deadlines fire within a tick or two, a deadline moved
// later costs nothing and still holds, an earlier one relinks, deadlines beyond the
// wheel's span wait through it, and destruction abandons what is left.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstring>
#include <functional>
#include <vector>

#include "net/poller.hpp"

namespace echorelay::net {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct Probe final : PollHandler {
  explicit Probe(Poller& p) : poller(p) {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0);
    mine = fds[0];
    peer = fds[1];
    EXPECT_TRUE(poller.add(mine, *this)) << std::strerror(errno);
  }
  ~Probe() {
    if (mine >= 0) {
      poller.remove(mine, *this);
      ::close(mine);
    }
    ::close(peer);
  }
  void on_ready(std::uint32_t events) override {
    ready.push_back(events);
    if (on_event) {
      auto event = on_event;  // it may delete this
      return event();
    }
    char buf[64];
    while (::read(mine, buf, sizeof buf) > 0) {
    }
  }
  void on_deadline() override {
    fired_at.push_back(Clock::now());
    if (on_fire) {
      auto fire = on_fire;  // it may delete this, and with it on_fire
      fire();
    }
  }
  void abandon() override {
    abandoned = true;
    poller.remove(mine, *this);
    ::close(mine);
    mine = -1;
  }
  Poller& poller;
  int mine = -1;
  int peer = -1;
  std::vector<std::uint32_t> ready;
  std::vector<Clock::time_point> fired_at;
  std::function<void()> on_fire;
  std::function<void()> on_event;
  bool abandoned = false;
};

void run_for(boost::asio::io_context& ctx, Clock::duration d) {
  ctx.restart();
  ctx.run_for(d);
}

TEST(Poller, ReportsEachArrivalOnceEdgeTriggered) {
  boost::asio::io_context ctx;
  Poller poller(ctx);
  Probe p(poller);
  run_for(ctx, 50ms);
  const std::size_t initial = p.ready.size();  // writability at registration
  EXPECT_LE(initial, 1u);
  ASSERT_EQ(::write(p.peer, "x", 1), 1);
  run_for(ctx, 50ms);
  ASSERT_EQ(p.ready.size(), initial + 1);
  EXPECT_TRUE(p.ready.back() & EPOLLIN);
  run_for(ctx, 50ms);
  EXPECT_EQ(p.ready.size(), initial + 1) << "an edge is reported once";
  ::shutdown(p.peer, SHUT_WR);
  run_for(ctx, 50ms);
  ASSERT_EQ(p.ready.size(), initial + 2);
  EXPECT_TRUE(p.ready.back() & EPOLLRDHUP);
}

TEST(Poller, DeadlineFiresOnTimeAndOnlyOnce) {
  boost::asio::io_context ctx;
  Poller poller(ctx);
  Probe p(poller);
  const auto t0 = Clock::now();
  poller.set_deadline(p, t0 + 60ms);
  run_for(ctx, 300ms);
  ASSERT_EQ(p.fired_at.size(), 1u);
  EXPECT_GE(p.fired_at[0] - t0, 60ms);
  EXPECT_LT(p.fired_at[0] - t0, 60ms + 100ms);
}

TEST(Poller, LaterDeadlineHoldsAndClearedDeadlineNeverFires) {
  boost::asio::io_context ctx;
  Poller poller(ctx);
  Probe later(poller), cleared(poller);
  const auto t0 = Clock::now();
  poller.set_deadline(later, t0 + 40ms);
  poller.set_deadline(later, t0 + 200ms);  // moved later: must not fire at 40 ms
  poller.set_deadline(cleared, t0 + 40ms);
  poller.clear_deadline(cleared);
  run_for(ctx, 120ms);
  EXPECT_TRUE(later.fired_at.empty());
  run_for(ctx, 250ms);
  ASSERT_EQ(later.fired_at.size(), 1u);
  EXPECT_GE(later.fired_at[0] - t0, 200ms);
  EXPECT_TRUE(cleared.fired_at.empty());
}

TEST(Poller, EarlierDeadlineRelinksAndOrderIsKept) {
  boost::asio::io_context ctx;
  Poller poller(ctx);
  Probe a(poller), b(poller);
  const auto t0 = Clock::now();
  poller.set_deadline(a, t0 + 2s);
  poller.set_deadline(b, t0 + 120ms);
  poller.set_deadline(a, t0 + 40ms);  // earlier than linked: relinked
  run_for(ctx, 300ms);
  ASSERT_EQ(a.fired_at.size(), 1u);
  ASSERT_EQ(b.fired_at.size(), 1u);
  EXPECT_LT(a.fired_at[0], b.fired_at[0]);
  EXPECT_LT(a.fired_at[0] - t0, 120ms);
}

TEST(Poller, DeadlineBeyondTheWheelSpanWaitsThroughIt) {
  boost::asio::io_context ctx;
  Poller poller(ctx);
  Probe p(poller);
  const auto span = Poller::kTick * Poller::kSlots;
  const auto t0 = Clock::now();
  poller.set_deadline(p, t0 + span + 500ms);
  run_for(ctx, span + 200ms);
  EXPECT_TRUE(p.fired_at.empty()) << "fired a wheel turn early";
  run_for(ctx, 800ms);
  ASSERT_EQ(p.fired_at.size(), 1u);
  EXPECT_GE(p.fired_at[0] - t0, span + 500ms);
}

TEST(Poller, AHandlerMayRemoveItselfWhenItsDeadlineFires) {
  boost::asio::io_context ctx;
  Poller poller(ctx);
  auto* p = new Probe(poller);
  Probe other(poller);
  bool deleted = false;
  p->on_fire = [&] {
    delete p;
    deleted = true;
  };
  const auto t0 = Clock::now();
  poller.set_deadline(*p, t0 + 20ms);
  poller.set_deadline(other, t0 + 20ms);  // same slot as the one deleted
  run_for(ctx, 200ms);
  EXPECT_TRUE(deleted);
  EXPECT_EQ(other.fired_at.size(), 1u);
}

TEST(Poller, AHandlerDeletedByAnotherInTheSameBatchGetsNoEvent) {
  boost::asio::io_context ctx;
  Poller poller(ctx);
  auto* first = new Probe(poller);
  auto* second = new Probe(poller);
  run_for(ctx, 50ms);  // the registration edges
  int deleted = 0;
  // Whichever is dispatched first deletes both, as a session owning two fds does.
  auto delete_both = [&] {
    delete first;
    delete second;
    ++deleted;
  };
  first->on_event = delete_both;
  second->on_event = delete_both;
  ASSERT_EQ(::write(first->peer, "x", 1), 1);
  ASSERT_EQ(::write(second->peer, "x", 1), 1);
  run_for(ctx, 100ms);
  EXPECT_EQ(deleted, 1);
}

TEST(Poller, ADeferredHandlerIsCalledAgainWithoutANewEdgeAfterTheOthers) {
  boost::asio::io_context ctx;
  Poller poller(ctx);
  Probe busy(poller), other(poller);
  run_for(ctx, 50ms);
  busy.ready.clear();
  other.ready.clear();
  std::vector<char> order;
  int turns = 0;
  busy.on_event = [&] {
    order.push_back('b');
    if (++turns < 3) poller.defer(busy);  // as if it stopped before EAGAIN
  };
  other.on_event = [&] { order.push_back('o'); };
  ASSERT_EQ(::write(busy.peer, "x", 1), 1);
  run_for(ctx, 50ms);
  ASSERT_EQ(::write(other.peer, "y", 1), 1);
  run_for(ctx, 100ms);
  EXPECT_EQ(turns, 3) << "a deferred handler was not called again";
  ASSERT_EQ(busy.ready.size(), 3u);
  EXPECT_EQ(busy.ready[1], static_cast<std::uint32_t>(EPOLLIN | EPOLLOUT));
  EXPECT_EQ(std::string(order.begin(), order.end()), "bbbo");  // three turns from one edge, then the other
}

TEST(Poller, DestructionAbandonsRemainingHandlers) {
  boost::asio::io_context ctx;
  auto poller = std::make_unique<Poller>(ctx);
  Probe a(*poller), b(*poller);
  poller->set_deadline(a, Clock::now() + 10s);
  poller.reset();
  EXPECT_TRUE(a.abandoned);
  EXPECT_TRUE(b.abandoned);
}

}  // namespace
}  // namespace echorelay::net
