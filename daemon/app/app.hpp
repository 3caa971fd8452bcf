// The running daemon: opens every listener, starts the worker loops, UDP pools and the
// admin endpoint, reports readiness, and turns signals into a drain. The control loop
// (signals, admin, drain timer) runs on the thread that calls run().
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "config/config.hpp"

namespace echorelay::app {

struct Options {
  // Where to write "NAME PROTOCOL ADDRESS" lines once every listener is open (the real
  // ports of port-0 binds); empty = nowhere.
  std::string bound_addresses_file;
  // How to start a successor on SIGHUP: the binary path as it was found at start (a
  // file replaced there is the upgrade) and our own command line.
  std::string exe_path;
  std::vector<std::string> argv;
  // Write end of the predecessor's readiness pipe; -1 when started by hand or systemd.
  int ready_fd = -1;
};

class App {
 public:
  App(config::Config config, Options options);
  ~App();
  App(const App&) = delete;
  App& operator=(const App&) = delete;

  // Serves until SIGTERM/SIGINT and the drain that follows; returns the exit code.
  int run();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace echorelay::app
