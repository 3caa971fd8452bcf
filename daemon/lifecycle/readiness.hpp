// The successor's side of the readiness channel: a pipe whose write end the
// predecessor passes as ECHORELAY_READY_FD. One line goes back: "READY <pid>" once
// every listener serves, or "FAILED <reason>" before the successor gives up.
#pragma once

#include <string>

namespace echorelay::lifecycle {

inline constexpr const char* kReadyFdEnv = "ECHORELAY_READY_FD";
// Names of handed-over Unix path listeners whose socket file the predecessor created,
// so the successor removes them at its own exit.
inline constexpr const char* kOwnedPathsEnv = "ECHORELAY_OWNED_PATHS";

// How many hot restarts came before this process (for echorelay_restarts_total), for
// a successor that cannot use the counter ledger below.
inline constexpr const char* kRestartsEnv = "ECHORELAY_RESTARTS";
// The counter ledger (obs::Registry): a memfd the successor maps to go on counting
// from the service's totals.
inline constexpr const char* kCountersFdEnv = "ECHORELAY_COUNTERS_FD";

// Reads and unsets ECHORELAY_READY_FD; -1 when this process is not a successor.
int take_ready_fd();
void report_ready(int& fd);
void report_failure(int& fd, const std::string& reason);

}  // namespace echorelay::lifecycle
