// The supervisor loop: poll() on a signalfd and the notify socket. Single-threaded and
// free of Asio on purpose: it must stay small and obviously correct, as PID 1.
#include "lifecycle/supervisor.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <spdlog/spdlog.h>
#include <sstream>

#include "net/fd.hpp"
#include "net/socket_options.hpp"
#include "os/spawn.hpp"
#include "os/systemd.hpp"

namespace echorelay::lifecycle {

namespace {

int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

struct Supervisor {
  std::string exe_path;
  std::vector<std::string> worker_argv;
  net::Fd notify_socket;
  std::string notify_name;  // abstract: "@echorelay-supervisor-..."
  net::Fd signal_fd;
  pid_t worker = -1;
  int worker_status = 0;
  bool worker_exited = false;
  bool terminating = false;

  bool open_notify_socket();
  bool spawn_worker(std::vector<os::InheritedFd> inherited);
  void read_notifications();
  void handle_message(const std::string& text, std::vector<int>& fds);
  // Returns true when the supervisor should exit.
  bool reap_children();
};

bool Supervisor::open_notify_socket() {
  notify_socket = net::Fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!notify_socket) return false;
  std::random_device rd;
  notify_name = "echorelay-supervisor-" + std::to_string(::getpid()) + "-" + std::to_string(rd());
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path + 1, notify_name.data(), notify_name.size());
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + notify_name.size());
  if (::bind(notify_socket.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0) return false;
  // Credentials tell us who sent a message (the MAINPID claim is checked against them).
  return net::set_int_option(notify_socket.get(), SOL_SOCKET, SO_PASSCRED, 1, "SO_PASSCRED").ok();
}

bool Supervisor::spawn_worker(std::vector<os::InheritedFd> inherited) {
  os::SpawnRequest request;
  request.path = exe_path;
  request.argv = worker_argv;
  for (auto& e : os::current_environment()) {
    if (e.rfind("NOTIFY_SOCKET=", 0) == 0) continue;
    // Without a manager of our own, what the worker stores goes nowhere.
    if (e.rfind(std::string(os::kFdStoreEnv) + "=", 0) == 0 && !os::notify_socket_set()) continue;
    request.env.push_back(e);
  }
  request.extra_env.push_back("NOTIFY_SOCKET=@" + notify_name);
  for (auto& f : inherited) request.fds.push_back({f.fd, f.name});
  auto pid = os::spawn_with_fds(request);
  for (auto& f : inherited) ::close(f.fd);  // the worker has them now
  if (!pid) {
    spdlog::error("supervisor: cannot start worker: {}", pid.error());
    return false;
  }
  worker = *pid;
  spdlog::info("supervisor: pid {} started worker pid {}", ::getpid(), worker);
  return true;
}

void Supervisor::handle_message(const std::string& text, std::vector<int>& fds) {
  std::istringstream in(text);
  std::string forward;
  std::string fdname;
  bool fdstore = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("MAINPID=", 0) == 0) {
      const pid_t pid = static_cast<pid_t>(std::atol(line.c_str() + 8));
      if (pid > 0 && pid != worker) {
        spdlog::info("supervisor: worker is now pid {} (was {})", pid, worker);
        worker = pid;
        worker_exited = false;
      }
      continue;  // our own pid stays the service's main pid
    }
    if (line == "FDSTORE=1") {
      fdstore = true;
      continue;
    }
    if (line.rfind("FDNAME=", 0) == 0) fdname = line.substr(7);
    forward += line + "\n";
  }
  if (fdstore && !fds.empty()) {
    os::store_fds(fdname.empty() ? "stored" : fdname, fds);
  } else if (!forward.empty()) {
    os::notify(forward);
  }
}

void Supervisor::read_notifications() {
  for (;;) {
    char data[4096];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int) * 64)];
    iovec iov{data, sizeof data - 1};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(notify_socket.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) return;
    std::vector<int> fds;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const int* p = reinterpret_cast<const int*>(CMSG_DATA(c));
        fds.assign(p, p + count);
      }
    }
    handle_message(std::string(data, static_cast<std::size_t>(n)), fds);
    for (int fd : fds) ::close(fd);  // passed on (dup'ed by the kernel) or unwanted
  }
}

bool Supervisor::reap_children() {
  for (;;) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid == 0) return false;
    if (pid < 0) {
      // ECHILD: nobody left. Done if we were told to stop or the worker is gone.
      return terminating || worker_exited;
    }
    if (pid == worker) {
      worker_status = status;
      worker_exited = true;
      spdlog::info("supervisor: worker pid {} exited ({})", pid, exit_code_of(status));
      if (!terminating) {
        // The worker died without being asked: there is no service left to supervise;
        // the container runtime or systemd decides what happens next.
        spdlog::error("supervisor: worker ended unexpectedly");
        terminating = true;
      }
    }
  }
}

}  // namespace

int run_supervisor(const std::string& exe_path, std::vector<std::string> worker_argv) {
  Supervisor s;
  s.exe_path = exe_path;
  s.worker_argv = std::move(worker_argv);
  if (::prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
    spdlog::error("supervisor: PR_SET_CHILD_SUBREAPER: {}", net::errno_text(errno));
    return 1;
  }
  sigset_t handled;
  sigemptyset(&handled);
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGCHLD}) sigaddset(&handled, sig);
  ::sigprocmask(SIG_BLOCK, &handled, nullptr);
  s.signal_fd = net::Fd(::signalfd(-1, &handled, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!s.signal_fd || !s.open_notify_socket()) {
    spdlog::error("supervisor: cannot set up: {}", net::errno_text(errno));
    return 1;
  }
  // Sockets a socket unit gave the supervisor belong to the worker.
  if (!s.spawn_worker(os::take_listen_fds())) return 1;

  for (;;) {
    pollfd fds[2] = {{s.notify_socket.get(), POLLIN, 0}, {s.signal_fd.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0 && errno != EINTR) return 1;
    // Notifications first: a successor's MAINPID= must be known before the exit of
    // the worker it replaced is judged.
    s.read_notifications();
    signalfd_siginfo info{};
    while (::read(s.signal_fd.get(), &info, sizeof info) == sizeof info) {
      const int sig = static_cast<int>(info.ssi_signo);
      if (sig == SIGCHLD) continue;  // reaped below, whatever the count of signals
      if (sig == SIGTERM || sig == SIGINT) s.terminating = true;
      if (s.worker > 0 && !s.worker_exited) ::kill(s.worker, sig);
    }
    s.read_notifications();
    if (s.reap_children()) break;
  }
  spdlog::info("supervisor: exiting with the worker's status {}", exit_code_of(s.worker_status));
  return exit_code_of(s.worker_status);
}

}  // namespace echorelay::lifecycle
