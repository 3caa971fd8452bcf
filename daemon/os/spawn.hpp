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
  // More fds (the readiness pipe, the counter ledger), placed right after the sockets at
  // 3+n, 3+n+1, ... and not counted in LISTEN_FDS; each number is passed as ENV=3+n+i.
  struct ExtraFd {
    int fd = -1;  // stays owned by the caller
    std::string env;
    // An execve failure is written here as "FAILED cannot run PATH: execve: ..." (the
    // readiness pipe), which reads better than "exited with status 127".
    bool reports_exec_failure = false;
  };
  std::vector<ExtraFd> extra_fds;
};

// Everything that allocates happens before fork(): the parent is multi-threaded, so
// the child may only make async-signal-safe calls until execve. The child closes every
// other fd before execve, CLOEXEC or not: the successor gets exactly what is listed.
// Returns the pid.
Result<pid_t> spawn_with_fds(const SpawnRequest& request);

// The current environment as "K=V" strings.
std::vector<std::string> current_environment();

}  // namespace echorelay::os
