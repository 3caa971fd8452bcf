// --supervise: a small parent with a PID that never changes, for PID 1 in a container
// or anyone who wants a fixed PID. It is a child subreaper and reaps every child, gives
// its workers a notify socket (they speak the systemd protocol to it), forwards
// TERM/INT/HUP/USR1 to the current worker, learns the successor of a hot restart from
// MAINPID=, relays READY/STATUS/STOPPING/WATCHDOG/FDSTORE to its own manager if it has
// one, and exits with the worker's status once the last child is gone after TERM.
#pragma once

#include <string>
#include <vector>

namespace echorelay::lifecycle {

// Blocks until the service ends; returns the process exit code.
int run_supervisor(const std::string& exe_path, std::vector<std::string> worker_argv);

}  // namespace echorelay::lifecycle
