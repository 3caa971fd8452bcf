// Poller; see poller.hpp.
#include "net/poller.hpp"

#include <sys/epoll.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstring>
#include <spdlog/spdlog.h>
#include <stdexcept>

namespace echorelay::net {

namespace {

int make_epoll() {
  const int fd = ::epoll_create1(EPOLL_CLOEXEC);
  if (fd < 0) throw std::runtime_error(std::string("epoll_create1: ") + std::strerror(errno));
  return fd;
}

}  // namespace

Poller::Poller(boost::asio::io_context& ctx)
    : epoll_(ctx, make_epoll()), timer_(ctx), epoch_(Clock::now()), now_(epoch_), next_tick_(0) {
  wait_ready();
}

Poller::~Poller() {
  while (!members_.empty()) members_.front().abandon();
}

bool Poller::add(int fd, PollHandler& handler, std::uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = &handler;
  if (::epoll_ctl(epoll_.native_handle(), EPOLL_CTL_ADD, fd, &ev) != 0) return false;
  members_.push_back(handler);
  return true;
}

void Poller::remove(int fd, PollHandler& handler) {
  ::epoll_ctl(epoll_.native_handle(), EPOLL_CTL_DEL, fd, nullptr);
  forget(handler);
}

void Poller::forget(PollHandler& handler) {
  // Its events later in the batch being dispatched are void: the handler may be gone.
  for (int i = dispatching_ + 1; i < batch_size_; ++i) {
    if (events_[i].data.ptr == &handler) events_[i].data.ptr = nullptr;
  }
  for (auto* list : {&deferred_, &due_}) std::replace(list->begin(), list->end(), &handler, static_cast<PollHandler*>(nullptr));
  if (handler.member_.is_linked()) members_.erase(members_.iterator_to(handler));
  if (handler.wheel_.is_linked()) slots_[handler.tick_ % kSlots].erase(Slot::s_iterator_to(handler));
  handler.deadline_ = Clock::time_point::max();
}

void Poller::wait_ready() {
  epoll_.async_wait(boost::asio::posix::stream_descriptor::wait_read, [this](const boost::system::error_code& ec) {
    if (ec) return;  // operation_aborted: the poller is going away
    run_ready();
    wait_ready();
  });
}

void Poller::run_ready() {
  // A few full batches in a row at most, then back to the io_context so its other
  // handlers (accepts, timers, relays) get their turn.
  for (int round = 0; round < 4; ++round) {
    const int n = ::epoll_wait(epoll_.native_handle(), events_.data(), static_cast<int>(events_.size()), 0);
    if (n <= 0) {
      if (n < 0 && errno != EINTR) spdlog::error("epoll_wait: {}", std::strerror(errno));
      break;
    }
    now_ = Clock::now();
    batch_size_ = n;
    for (dispatching_ = 0; dispatching_ < n; ++dispatching_) {
      if (auto* handler = static_cast<PollHandler*>(events_[dispatching_].data.ptr)) handler->on_ready(events_[dispatching_].events);
    }
    batch_size_ = 0;
    if (n < static_cast<int>(events_.size())) break;
  }
  // Handlers that yielded go after everything that was ready meanwhile.
  if (!deferred_.empty()) {
    now_ = Clock::now();
    due_.swap(deferred_);
    for (PollHandler* handler : due_) {
      if (handler) handler->on_ready(EPOLLIN | EPOLLOUT);
    }
    due_.clear();
  }
  if (!deferred_.empty() && !deferred_posted_) {
    // Their sockets may get no new edge: come back without waiting for one.
    deferred_posted_ = true;
    boost::asio::post(epoll_.get_executor(), [this] {
      deferred_posted_ = false;
      run_ready();
    });
  }
}

void Poller::defer(PollHandler& handler) { deferred_.push_back(&handler); }

std::int64_t Poller::tick_of(Clock::time_point t) const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t - epoch_).count() / kTick.count();
}

void Poller::set_deadline(PollHandler& handler, Clock::time_point deadline) {
  handler.deadline_ = deadline;
  if (deadline == Clock::time_point::max()) return;  // a linked entry is dropped when its slot comes
  if (!handler.wheel_.is_linked()) {
    link(handler);
  } else if (tick_of(deadline) < handler.tick_) {
    slots_[handler.tick_ % kSlots].erase(Slot::s_iterator_to(handler));
    link(handler);
  }
}

void Poller::link(PollHandler& handler) {
  if (timer_tick_ == INT64_MAX && !in_timer_) {
    // An empty wheel: its window starts now, whatever was processed last.
    next_tick_ = std::max(next_tick_, tick_of(Clock::now()));
  }
  const std::int64_t tick = std::clamp(tick_of(handler.deadline_), next_tick_, next_tick_ + kSlots - 1);
  handler.tick_ = tick;
  slots_[tick % kSlots].push_back(handler);
  if (tick < timer_tick_ && !in_timer_) arm_timer(tick);
}

void Poller::arm_timer(std::int64_t tick) {
  timer_tick_ = tick;
  // A slot is processed once it has ended, so every deadline in it has passed.
  timer_.expires_at(epoch_ + (tick + 1) * kTick);
  timer_.async_wait([this, tick](const boost::system::error_code& ec) {
    if (ec || tick != timer_tick_) return;  // re-armed earlier meanwhile
    on_timer();
  });
}

void Poller::on_timer() {
  in_timer_ = true;
  timer_tick_ = INT64_MAX;
  now_ = Clock::now();
  const std::int64_t end = tick_of(now_);
  Slot due;
  for (std::int64_t k = next_tick_; k < std::min(end, next_tick_ + kSlots); ++k) due.splice(due.end(), slots_[k % kSlots]);
  next_tick_ = std::max(next_tick_, end);
  while (!due.empty()) {
    PollHandler& h = due.front();
    due.pop_front();
    if (h.deadline_ <= now_) {
      h.deadline_ = Clock::time_point::max();
      h.on_deadline();  // may delete h
    } else if (h.deadline_ != Clock::time_point::max()) {
      link(h);
    }
  }
  in_timer_ = false;
  for (std::int64_t k = next_tick_; k < next_tick_ + kSlots; ++k) {
    if (!slots_[k % kSlots].empty()) {
      arm_timer(k);
      break;
    }
  }
}

}  // namespace echorelay::net
