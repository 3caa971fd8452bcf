// Event-loop threads: one io_context each (no shared locks on the hot path), plus the
// set of sessions living on it. Owned by App; started once, stopped once.
#pragma once

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <memory>
#include <thread>
#include <vector>

#include "net/session.hpp"
#include "net/poller.hpp"

namespace echorelay::app {

struct Worker {
  boost::asio::io_context ctx{1};  // concurrency hint 1: only this worker's thread runs it
  net::SessionSet sessions;  // touched only on this worker's thread
  net::Poller poller{ctx};         // echo sessions, established relays; destroyed (abandoning them) before ctx
  bool draining = false;           // likewise: sessions that start from now on drain at once
  std::thread thread;
};

class WorkerPool {
 public:
  explicit WorkerPool(unsigned count);
  ~WorkerPool();
  void start();
  // Lets each loop finish what is queued, then joins; idempotent.
  void stop();
  // Round-robin choice for a new connection. Any thread.
  Worker& next();
  std::vector<std::unique_ptr<Worker>>& all() { return workers_; }

 private:
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> guards_;
  std::atomic<unsigned> next_{0};
};

}  // namespace echorelay::app
