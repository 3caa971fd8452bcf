// fork/exec with fd passing; see spawn.hpp. The child side follows systemd's
// exec_child(): move fds out of the way, dup2 into place, fill LISTEN_PID, reset the
// signal state the parent's event loop set up, execve.
#include "os/spawn.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "net/socket_options.hpp"

extern char** environ;

namespace echorelay::os {

namespace {

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// Async-signal-safe decimal formatting for the child.
void write_decimal(char* out, long value) {
  char digits[24];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + value % 10);
    value /= 10;
  } while (value > 0);
  for (int i = 0; i < n; ++i) out[i] = digits[n - 1 - i];
  out[n] = '\0';
}

// Async-signal-safe: strerrordesc_np only indexes glibc's table.
void report_exec_failure(int fd, const char* path, int err) {
  char line[512];
  std::size_t n = 0;
  auto put = [&](const char* s) {
    while (*s != '\0' && n < sizeof line - 1) line[n++] = *s++;
  };
  const char* description = ::strerrordesc_np(err);
  put("FAILED cannot run ");
  put(path);
  put(": execve: ");
  put(description != nullptr ? description : "unknown error");
  line[n++] = '\n';
  (void)!::write(fd, line, n);
}

}  // namespace

std::vector<std::string> current_environment() {
  std::vector<std::string> env;
  for (char** e = environ; e && *e; ++e) env.emplace_back(*e);
  return env;
}

Result<pid_t> spawn_with_fds(const SpawnRequest& request) {
  std::vector<std::string> env;
  for (const auto& e : request.env) {
    // A watchdog meant for us must not make the successor think it is watched under
    // our pid; systemd re-targets it through MAINPID.
    const bool extra = std::any_of(request.extra_fds.begin(), request.extra_fds.end(),
                                   [&](const SpawnRequest::ExtraFd& x) { return starts_with(e, x.env + "="); });
    if (extra || starts_with(e, "LISTEN_FDS=") || starts_with(e, "LISTEN_PID=") || starts_with(e, "LISTEN_FDNAMES=") ||
        starts_with(e, "WATCHDOG_PID=")) {
      continue;
    }
    env.push_back(e);
  }
  std::string names;
  for (const auto& f : request.fds) names += (names.empty() ? "" : ":") + f.name;
  env.push_back("LISTEN_FDS=" + std::to_string(request.fds.size()));
  env.push_back("LISTEN_FDNAMES=" + names);
  for (const auto& e : request.extra_env) env.push_back(e);
  for (std::size_t i = 0; i < request.extra_fds.size(); ++i) {
    env.push_back(request.extra_fds[i].env + "=" + std::to_string(3 + request.fds.size() + i));
  }
  // Reserved room for the child's pid, filled in after fork.
  env.push_back("LISTEN_PID=" + std::string(23, '0'));

  std::vector<char*> envp;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  char* listen_pid_digits = env.back().data() + std::strlen("LISTEN_PID=");

  std::vector<std::string> argv_copy = request.argv;
  std::vector<char*> argv;
  for (auto& a : argv_copy) argv.push_back(a.data());
  argv.push_back(nullptr);

  std::vector<int> sources;
  for (const auto& f : request.fds) sources.push_back(f.fd);
  for (const auto& x : request.extra_fds) sources.push_back(x.fd);
  int report_fd = -1;
  for (std::size_t i = 0; i < request.extra_fds.size(); ++i) {
    if (request.extra_fds[i].reports_exec_failure) report_fd = static_cast<int>(3 + request.fds.size() + i);
  }
  const int count = static_cast<int>(sources.size());
  // The fallback bound when close_range(2) is refused (seccomp in some containers).
  rlimit files{};
  const int max_fd = ::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur != RLIM_INFINITY
                         ? static_cast<int>(std::min<rlim_t>(files.rlim_cur, 1 << 20))
                         : 65536;
  std::vector<int> moved(sources.size(), -1);
  std::string path = request.path;

  // The child starts with our signal handlers, whose pipe is shared with us: a signal
  // sent to the child before it resets them would be taken for one sent to us (a
  // SIGTERM during a restart read as a second, "close everything now", SIGTERM). Block
  // everything across fork; the child unblocks only after resetting the handlers.
  sigset_t all;
  sigset_t previous;
  sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &previous);
  const pid_t pid = ::fork();
  if (pid != 0) {
    const int fork_errno = errno;
    ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    if (pid < 0) return make_error("fork: " + net::errno_text(fork_errno));
    return pid;
  }
  {
    // Child: async-signal-safe calls only from here on.
    // First move every source above the target range, so no dup2 overwrites a source
    // that is still to be placed (a source may already sit at 3..3+n-1).
    for (int i = 0; i < count; ++i) {
      moved[static_cast<std::size_t>(i)] = ::fcntl(sources[static_cast<std::size_t>(i)], F_DUPFD, 3 + count);
      if (moved[static_cast<std::size_t>(i)] < 0) ::_exit(126);
    }
    for (int i = 0; i < count; ++i) {
      // dup2 clears FD_CLOEXEC on the target: these are the fds the successor inherits.
      if (::dup2(moved[static_cast<std::size_t>(i)], 3 + i) < 0) ::_exit(126);
      ::close(moved[static_cast<std::size_t>(i)]);
    }
    // A second line of defence behind CLOEXEC: an fd created without it (by a library,
    // or by another thread between its socket() and fcntl()) must not reach the
    // successor, which would hold it, unknowingly, for its whole life and pass it on.
    if (::close_range(static_cast<unsigned>(3 + count), ~0U, 0) != 0) {
      for (int fd = 3 + count; fd < max_fd; ++fd) ::close(fd);
    }
    write_decimal(listen_pid_digits, static_cast<long>(::getpid()));
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) ::sigaction(sig, &dfl, nullptr);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execve(path.c_str(), argv.data(), envp.data());
    // Say why on the fd marked reports_exec_failure: "FAILED cannot run PATH:
    // execve: Permission denied" reads better than "exited with status 127".
    if (report_fd >= 0) report_exec_failure(report_fd, path.c_str(), errno);
    ::_exit(127);
  }
}

}  // namespace echorelay::os
