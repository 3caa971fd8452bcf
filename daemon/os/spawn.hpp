// Starting a successor process with sockets passed the systemd way: the given fds
// become 3, 4, ... in the child, with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (the
// child's own pid, written after fork) in its environment.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "util/result.hpp"

namespace echorelay::os {

struct NamedFd {
  int fd = -1;  // stays owned by the caller
  std::string name;
};

struct SpawnRequest {
  std::string path;                // executable; looked up fresh, so a replaced file is the new binary
  std::vector<std::string> argv;   // argv[0] included
  std::vector<std::string> env;    // "K=V"; LISTEN_* entries are dropped and rebuilt
  std::vector<NamedFd> fds;        // become 3 .. 3+n-1
  std::vector<std::string> extra_env;  // added as is
  // One more fd (the readiness pipe), placed right after the sockets at 3+n and not
  // counted in LISTEN_FDS; its number is passed as `extra_fd_env`=3+n.
  int extra_fd = -1;
  std::string extra_fd_env;
};

// Everything that allocates happens before fork(): the parent is multi-threaded, so
// the child may only make async-signal-safe calls until execve. Returns the pid.
Result<pid_t> spawn_with_fds(const SpawnRequest& request);

// The current environment as "K=V" strings.
std::vector<std::string> current_environment();

}  // namespace echorelay::os
