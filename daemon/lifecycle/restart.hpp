// Hot restart, the predecessor's side (tableflip's upgrader.go, nginx's USR2): spawn
// the successor from the binary path on disk with every listening socket and a
// readiness pipe, then wait for "READY", "FAILED", EOF or restart_timeout. Runs on the
// control io_context; one restart at a time.
//
//   Idle --request()--> Waiting --READY--> Done (we drain as a former main process)
//                          |  \--FAILED/EOF/timeout--> Idle (successor killed, reaped)
//                          \--abort()--> Stopping --READY--> Done (it became main, then drains)
//                                           \--FAILED/EOF--> Idle (it drained and exited)
#pragma once

#include <sys/types.h>

#include <boost/asio/io_context.hpp>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "os/spawn.hpp"

namespace echorelay::lifecycle {

class Restarter {
 public:
  struct Hooks {
    // The sockets to hand over, named; called at each attempt (fds stay ours).
    std::function<std::vector<os::NamedFd>()> handover_fds;
    // Extra "K=V" environment for the successor, and more fds (named by environment
    // variable) beside the readiness pipe; called right before each spawn.
    std::function<std::vector<std::string>()> extra_env;
    std::function<std::vector<os::SpawnRequest::ExtraFd>()> extra_fds;
    std::function<void(pid_t successor)> on_ready;
    std::function<void(const std::string& reason)> on_failed;
  };

  Restarter(boost::asio::io_context& control, std::string exe_path, std::vector<std::string> argv,
            config::Duration timeout, Hooks hooks);
  ~Restarter();

  // SIGHUP. Ignored (logged) while an attempt runs or after a successful handover.
  void request();
  // SIGTERM/SIGINT while a successor is starting: the stop wins over the restart. The
  // successor is told to stop too (SIGTERM, so it drains whatever it already accepted
  // instead of losing it) and is reaped when it exits; no failure is reported.
  void abort();
  // An aborted successor has not exited yet: the caller should not exit before it.
  bool successor_stopping() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace echorelay::lifecycle
