// libsystemd wrappers; see systemd.hpp.
#include "os/systemd.hpp"

#include <fcntl.h>
#include <systemd/sd-daemon.h>

#include <cstdlib>
#include <cstring>

namespace echorelay::os {

std::vector<InheritedFd> take_listen_fds() {
  std::vector<InheritedFd> fds;
  char** names = nullptr;
  // unset_environment = 1: a successor we spawn gets a LISTEN_FDS we build ourselves.
  const int n = sd_listen_fds_with_names(1, &names);
  for (int i = 0; i < n; ++i) {
    const int fd = SD_LISTEN_FDS_START + i;
    // sd_listen_fds does not set CLOEXEC on the fds; a connection's child must not keep them.
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    fds.push_back({fd, names && names[i] ? names[i] : "unknown"});
  }
  if (names) {
    for (int i = 0; i < n; ++i) std::free(names[i]);
    std::free(names);
  }
  return fds;
}

bool notify(std::string_view state) {
  const std::string s(state);
  return sd_notify(0, s.c_str()) > 0;
}

bool store_fds(const std::string& name, const std::vector<int>& fds) {
  if (fds.empty() || !notify_socket_set()) return false;
  const std::string state = "FDSTORE=1\nFDNAME=" + name;
  return sd_pid_notify_with_fds(0, 0, state.c_str(), fds.data(), static_cast<unsigned>(fds.size())) > 0;
}

bool remove_stored_fds(const std::string& name) {
  if (!notify_socket_set()) return false;
  return notify("FDSTOREREMOVE=1\nFDNAME=" + name);
}

bool notify_socket_set() { return std::getenv("NOTIFY_SOCKET") != nullptr; }

bool fd_store_reaches_manager() {
  if (!notify_socket_set()) return false;
  const char* size = std::getenv(kFdStoreEnv);
  return size != nullptr && std::strtol(size, nullptr, 10) > 0;
}

std::optional<std::chrono::microseconds> watchdog_interval() {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) return std::chrono::microseconds(usec);
  return std::nullopt;
}

}  // namespace echorelay::os
