// See readiness.hpp.
#include "lifecycle/readiness.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace echorelay::lifecycle {

namespace {

void send_line(int& fd, const std::string& line) {
  if (fd < 0) return;
  const std::string text = line + "\n";
  // A predecessor that already gave up closed its end: EPIPE is expected, and
  // SIGPIPE is ignored by the daemon.
  [[maybe_unused]] ssize_t n = ::write(fd, text.data(), text.size());
  ::close(fd);
  fd = -1;
}

}  // namespace

int take_ready_fd() {
  const char* value = std::getenv(kReadyFdEnv);
  if (!value) return -1;
  const int fd = std::atoi(value);
  ::unsetenv(kReadyFdEnv);
  if (fd < 3 || ::fcntl(fd, F_GETFD) < 0) return -1;
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  return fd;
}

void report_ready(int& fd) { send_line(fd, "READY " + std::to_string(::getpid())); }

void report_failure(int& fd, const std::string& reason) {
  std::string one_line = reason.substr(0, reason.find('\n'));
  send_line(fd, "FAILED " + one_line);
}

}  // namespace echorelay::lifecycle
