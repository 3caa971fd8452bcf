// Process resource limits. A relay holds two fds per client, so the default soft
// RLIMIT_NOFILE (often 1024) would cap a daemon far below what the operator's hard
// limit allows; like HAProxy's automatic ulimit-n, the daemon raises soft to hard.
#pragma once

#include <sys/resource.h>

namespace echorelay::os {

// Raises the soft open-files limit to the hard limit; returns the limit now in force.
rlim_t raise_fd_limit();

}  // namespace echorelay::os
