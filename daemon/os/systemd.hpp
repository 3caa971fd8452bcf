// The only home of libsystemd calls: the notify protocol (READY, RELOADING, STOPPING,
// STATUS, MAINPID, WATCHDOG, FDSTORE) and LISTEN_FDS adoption. Everything here is a
// no-op when the variables are not set, so the daemon runs the same by hand.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace echorelay::os {

struct InheritedFd {
  int fd = -1;       // owned by the caller after take_listen_fds()
  std::string name;  // from LISTEN_FDNAMES; "unknown" when unnamed
};

// Takes the sockets passed with LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES and unsets the
// variables so children do not see them again. Marks each fd O_CLOEXEC.
std::vector<InheritedFd> take_listen_fds();

// sd_notify(0, state); false when there is no NOTIFY_SOCKET or sending failed.
bool notify(std::string_view state);

// Puts `fds` into the service manager's fd store under `name` (FDSTORE=1, FDNAME=), so
// a plain `systemctl restart` hands them back through LISTEN_FDS. False without
// NOTIFY_SOCKET or when the manager refused.
bool store_fds(const std::string& name, const std::vector<int>& fds);
// FDSTOREREMOVE=1 for a name no listener uses any more.
bool remove_stored_fds(const std::string& name);
bool notify_socket_set();

// $FDSTORE: the size of the service manager's fd store (FileDescriptorStoreMax=;
// systemd sets it from 254 on, our unit sets it for older ones).
inline constexpr const char* kFdStoreEnv = "FDSTORE";
// Whether fds passed to store_fds() outlive this process in the manager's store: a
// NOTIFY_SOCKET and a $FDSTORE above 0 (systemd does not confirm FDSTORE=1).
bool fd_store_reaches_manager();

// WATCHDOG_USEC for this process, if the service manager wants pings.
std::optional<std::chrono::microseconds> watchdog_interval();

}  // namespace echorelay::os
