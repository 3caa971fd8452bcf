// WorkerPool; see worker.hpp.
#include "app/worker.hpp"

#include <pthread.h>
#include <signal.h>

#include <string>

namespace echorelay::app {

WorkerPool::WorkerPool(unsigned count) {
  for (unsigned i = 0; i < count; ++i) workers_.push_back(std::make_unique<Worker>());
}

WorkerPool::~WorkerPool() { stop(); }

void WorkerPool::start() {
  // Workers never take signals: the control loop's signal_set handles them, and a
  // signal landing on a worker would only wake its epoll for nothing.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  for (std::size_t i = 0; i < workers_.size(); ++i) {
    Worker& w = *workers_[i];
    guards_.push_back(boost::asio::make_work_guard(w.ctx));
    w.thread = std::thread([&w, i] {
      const std::string name = "worker-" + std::to_string(i);
      pthread_setname_np(pthread_self(), name.c_str());
      w.ctx.run();
    });
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

void WorkerPool::stop() {
  guards_.clear();
  for (auto& w : workers_) {
    // Also a loop that never ran: stopped() is what tells its users (the UDP servers)
    // that no thread polls it any more.
    w->ctx.stop();
    if (w->thread.joinable()) w->thread.join();
  }
}

Worker& WorkerPool::next() {
  return *workers_[next_.fetch_add(1, std::memory_order_relaxed) % workers_.size()];
}

}  // namespace echorelay::app
