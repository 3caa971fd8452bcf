// Implementation of the integration-test harness: process spawning with a pidfd (so a
// wait can watch the notify socket and the child's death at once), the bound-addresses
// file, and deadline-bounded socket I/O. All sockets are CLOEXEC so a spawned daemon
// never inherits a test's client sockets.
#include "harness.hpp"

#include <dirent.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

extern char** environ;

namespace echorelay::test {

namespace {

int remaining_ms(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
  if (left < 0) return 0;
  return static_cast<int>(left);
}

int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

// Waits on a pidfd until the child exits, then reaps it. Returns the shell-style status.
std::optional<int> reap(pid_t pid, int pidfd, Millis timeout) {
  pollfd p{pidfd, POLLIN, 0};
  int rc;
  do {
    rc = ::poll(&p, 1, static_cast<int>(timeout.count()));
  } while (rc < 0 && errno == EINTR);
  if (rc <= 0) return std::nullopt;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid, &status, 0);
  } while (r < 0 && errno == EINTR);
  if (r != pid) return std::nullopt;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return std::nullopt;
}

struct Spawned {
  pid_t pid = -1;
  Fd pidfd;
  int error = 0;
};

// fork + exec with stdin from /dev/null and stdout/stderr to `output_path`. Everything
// the child needs is prepared before fork: after fork only async-signal-safe calls.
Spawned spawn(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
              const std::string& output_path, const std::string& netns) {
  Spawned result;
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view entry(*e);
    bool overridden = false;
    for (const auto& extra : extra_env) {
      auto eq = extra.find('=');
      if (entry.substr(0, eq + 1) == std::string_view(extra).substr(0, eq + 1)) overridden = true;
    }
    if (!overridden) env_strings.emplace_back(entry);
  }
  for (const auto& extra : extra_env) env_strings.push_back(extra);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> argp;
  for (auto& s : args) argp.push_back(s.data());
  argp.push_back(nullptr);

  Fd out(::open(output_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  Fd null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  Fd ns;
  if (!netns.empty()) {
    ns.reset(::open(("/var/run/netns/" + netns).c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns) {
      result.error = errno;
      return result;
    }
  }
  if (!out || !null) {
    result.error = errno;
    return result;
  }
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    result.error = errno;
    return result;
  }
  if (pid == 0) {
    // If the test process dies, the daemon must not outlive it.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    if (ns && ::setns(ns.get(), CLONE_NEWNET) != 0) ::_exit(126);
    ::dup2(null.get(), 0);
    ::dup2(out.get(), 1);
    ::dup2(out.get(), 2);
    // The test runner may have blocked signals; the daemon starts with a clean mask.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execve(argp[0], argp.data(), envp.data());
    ::_exit(127);
  }
  result.pid = pid;
  result.pidfd.reset(pidfd_open(pid));
  return result;
}

}  // namespace

std::vector<std::string> split_lines(std::string_view text) {
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (start < text.size()) {
    auto end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    lines.emplace_back(text.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

std::string tail(const std::string& text, std::size_t n) {
  if (text.size() <= n) return text;
  return "...\n" + text.substr(text.size() - n);
}

// ---- Fd, TempDir ----

Fd& Fd::operator=(Fd&& other) noexcept {
  if (this != &other) reset(other.release());
  return *this;
}

void Fd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

TempDir::TempDir() {
  char tmpl[] = "/tmp/echorelay-it-XXXXXX";
  char* p = ::mkdtemp(tmpl);
  if (p == nullptr) {
    ADD_FAILURE() << "mkdtemp: " << std::strerror(errno);
    return;
  }
  path_ = p;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string unique_name(std::string_view prefix) {
  static std::atomic<unsigned> counter{0};
  return std::string(prefix) + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

bool wait_until(const std::function<bool()>& condition, Millis timeout, Millis interval) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (condition()) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(interval);
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, std::string_view content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
}

ProcessResult ip_command(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"/usr/sbin/ip"};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_process(argv);
}

ProcessResult run_process(const std::vector<std::string>& argv, Millis timeout) {
  TempDir dir;
  std::string out_path = dir.file("output");
  ProcessResult result;
  Spawned child = spawn(argv, {}, out_path, "");
  if (child.pid < 0) {
    result.output = std::string("spawn failed: ") + std::strerror(child.error);
    return result;
  }
  result.exit_code = reap(child.pid, child.pidfd.get(), timeout);
  if (!result.exit_code) {
    ::kill(child.pid, SIGKILL);
    reap(child.pid, child.pidfd.get(), kIoTimeout);
  }
  result.output = read_file(out_path);
  return result;
}

// ---- Daemon ----

Daemon::Daemon(std::string toml) : Daemon(std::move(toml), Options{}) {}

Daemon::Daemon(std::string toml, Options options) : toml_(std::move(toml)), options_(std::move(options)) {
  config_path_ = dir_.file("echorelay.toml");
  log_path_ = dir_.file("daemon.log");
  bound_path_ = dir_.file("bound-addresses");
  notify_path_ = dir_.file("notify.sock");
  write_file(config_path_, toml_);
}

Daemon::~Daemon() {
  if (pid_ > 0 && !exit_code_) {
    ::kill(pid_, SIGKILL);
    reap(pid_, pidfd_.get(), kExitTimeout);
  }
  if (::testing::Test::HasFailure()) {
    std::cerr << "---- echorelayd log (" << log_path_ << ") ----\n"
              << tail(log(), 6000) << "\n---- notify: ";
    for (const auto& m : messages_) std::cerr << "[" << m << "] ";
    std::cerr << "\n";
  }
}

::testing::AssertionResult Daemon::spawn() {
  notify_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!notify_) return ::testing::AssertionFailure() << "socket: " << std::strerror(errno);
  int one = 1;
  ::setsockopt(notify_.get(), SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::snprintf(sun.sun_path, sizeof sun.sun_path, "%s", notify_path_.c_str());
  if (::bind(notify_.get(), reinterpret_cast<sockaddr*>(&sun), sizeof sun) != 0)
    return ::testing::AssertionFailure() << "bind " << notify_path_ << ": " << std::strerror(errno);

  // --no-supervise: these tests watch the daemon's own process (a hot restart gives a
  // new MAINPID); the NOTIFY_SOCKET below would already imply it.
  std::vector<std::string> argv = {ECHORELAYD_PATH, "-c", config_path_, "--bound-addresses-file",
                                   bound_path_, "--no-supervise"};
  if (!options_.log_level.empty()) {
    argv.push_back("--log-level");
    argv.push_back(options_.log_level);
  }
  if (!options_.log_format.empty()) {
    argv.push_back("--log-format");
    argv.push_back(options_.log_format);
  }
  for (const auto& a : options_.extra_args) argv.push_back(a);
  std::vector<std::string> env = {"NOTIFY_SOCKET=" + notify_path_};
  env.insert(env.end(), options_.extra_env.begin(), options_.extra_env.end());
  Spawned child = echorelay::test::spawn(argv, env, log_path_, options_.netns);
  if (child.pid < 0)
    return ::testing::AssertionFailure() << "spawn " << ECHORELAYD_PATH << ": " << std::strerror(child.error);
  pid_ = child.pid;
  pidfd_ = std::move(child.pidfd);
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult Daemon::start() {
  if (auto r = spawn(); !r) return r;
  auto deadline = Clock::now() + kReadyTimeout;
  while (!saw_notify("READY=1")) {
    if (Clock::now() >= deadline)
      return ::testing::AssertionFailure() << "no READY=1 within " << kReadyTimeout.count()
                                           << " ms; log:\n" << tail(log(), 3000);
    pollfd p[2] = {{notify_.get(), POLLIN, 0}, {pidfd_.get(), POLLIN, 0}};
    int rc = ::poll(p, 2, remaining_ms(deadline));
    if (rc < 0 && errno != EINTR) return ::testing::AssertionFailure() << "poll: " << std::strerror(errno);
    if (p[0].revents & POLLIN) {
      drain_notify(0ms);
      continue;
    }
    if (p[1].revents & POLLIN) {
      drain_notify(0ms);
      if (saw_notify("READY=1")) break;
      exit_code_ = reap(pid_, pidfd_.get(), 1000ms);
      return ::testing::AssertionFailure() << "echorelayd exited before READY=1 with status "
                                           << (exit_code_ ? std::to_string(*exit_code_) : "?")
                                           << "; log:\n" << tail(log(), 3000);
    }
  }
  std::string error;
  if (!read_bound_addresses(&error)) return ::testing::AssertionFailure() << error;
  return ::testing::AssertionSuccess();
}

bool Daemon::read_bound_addresses(std::string* error) {
  std::ifstream in(bound_path_);
  if (!in) {
    *error = "READY=1 sent but no bound-addresses file at " + bound_path_;
    return false;
  }
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::istringstream fields(line);
    std::string name, proto, addr;
    if (!(fields >> name >> proto >> addr)) {
      *error = "malformed bound-addresses line: '" + line + "'";
      return false;
    }
    addresses_[name] = addr;
    protocols_[name] = proto;
  }
  return true;
}

bool Daemon::running() {
  if (pid_ <= 0 || exit_code_) return false;
  pollfd p{pidfd_.get(), POLLIN, 0};
  return ::poll(&p, 1, 0) == 0;
}

std::string Daemon::address(const std::string& name) const {
  auto it = addresses_.find(name);
  if (it == addresses_.end()) {
    ADD_FAILURE() << "no bound address for '" << name << "'";
    return {};
  }
  return it->second;
}

std::string Daemon::protocol(const std::string& name) const {
  auto it = protocols_.find(name);
  return it == protocols_.end() ? std::string() : it->second;
}

std::uint16_t Daemon::port(const std::string& name) const { return port_of(address(name)); }

void Daemon::drain_notify(Millis timeout) {
  if (!notify_) return;
  pollfd p{notify_.get(), POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return;
  for (;;) {
    char buf[4096];
    char control[CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int) * 16)];
    iovec iov{buf, sizeof buf};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = ::recvmsg(notify_.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) return;
    // Close any fds passed along (FDSTORE) so they do not leak into the test.
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < count; ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
          ::close(fd);
        }
      }
    }
    std::string text(buf, static_cast<std::size_t>(n));
    while (!text.empty() && text.back() == '\n') text.pop_back();
    messages_.push_back(std::move(text));
  }
}

const std::vector<std::string>& Daemon::notifications() {
  drain_notify(0ms);
  return messages_;
}

bool Daemon::saw_notify(std::string_view line) {
  drain_notify(0ms);
  for (const auto& m : messages_)
    for (const auto& l : split_lines(m))
      if (l == line) return true;
  return false;
}

bool Daemon::wait_notify(std::string_view line, Millis timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (saw_notify(line)) return true;
    if (Clock::now() >= deadline) return false;
    drain_notify(Millis(std::min(remaining_ms(deadline), 100)));
  }
}

::testing::AssertionResult Daemon::signal(int signo) {
  if (pid_ <= 0 || exit_code_) return ::testing::AssertionFailure() << "daemon not running";
  if (::kill(pid_, signo) != 0) return ::testing::AssertionFailure() << "kill: " << std::strerror(errno);
  return ::testing::AssertionSuccess();
}

std::optional<int> Daemon::wait_exit(Millis timeout) {
  if (exit_code_) return exit_code_;
  if (pid_ <= 0) return std::nullopt;
  exit_code_ = reap(pid_, pidfd_.get(), timeout);
  drain_notify(0ms);
  return exit_code_;
}

std::string Daemon::log() const { return read_file(log_path_); }

// ---- addresses ----

sockaddr_storage parse_inet(const std::string& address, socklen_t* len) {
  sockaddr_storage ss{};
  auto colon = address.rfind(':');
  if (colon == std::string::npos) {
    ADD_FAILURE() << "bad address '" << address << "'";
    *len = 0;
    return ss;
  }
  std::string host = address.substr(0, colon);
  int port = std::atoi(address.c_str() + colon + 1);
  if (!host.empty() && host.front() == '[') {
    host = host.substr(1, host.size() - 2);
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(static_cast<std::uint16_t>(port));
    if (::inet_pton(AF_INET6, host.c_str(), &s6->sin6_addr) != 1) ADD_FAILURE() << "bad v6 '" << address << "'";
    *len = sizeof(sockaddr_in6);
  } else {
    auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
    s4->sin_family = AF_INET;
    s4->sin_port = htons(static_cast<std::uint16_t>(port));
    if (::inet_pton(AF_INET, host.c_str(), &s4->sin_addr) != 1) ADD_FAILURE() << "bad v4 '" << address << "'";
    *len = sizeof(sockaddr_in);
  }
  return ss;
}

std::uint16_t port_of(const std::string& address) {
  auto colon = address.rfind(':');
  if (colon == std::string::npos) return 0;
  return static_cast<std::uint16_t>(std::atoi(address.c_str() + colon + 1));
}

std::string format_inet(const sockaddr_storage& addr) {
  char host[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET6) {
    auto* s6 = reinterpret_cast<const sockaddr_in6*>(&addr);
    ::inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
    return "[" + std::string(host) + "]:" + std::to_string(ntohs(s6->sin6_port));
  }
  auto* s4 = reinterpret_cast<const sockaddr_in*>(&addr);
  ::inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
  return std::string(host) + ":" + std::to_string(ntohs(s4->sin_port));
}

std::uint16_t local_port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

// ---- stream clients ----

Fd try_connect(const std::string& address, int* err, Millis timeout,
               const std::function<void(int)>& before_connect) {
  *err = 0;
  sockaddr_storage ss{};
  socklen_t len = 0;
  int family;
  if (!address.empty() && (address.front() == '/' || address.front() == '@')) {
    auto* sun = reinterpret_cast<sockaddr_un*>(&ss);
    sun->sun_family = AF_UNIX;
    if (address.front() == '@') {
      // Abstract: a leading NUL, and the length counts exactly the name's bytes.
      std::memcpy(sun->sun_path + 1, address.data() + 1, address.size() - 1);
      len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address.size());
    } else {
      std::memcpy(sun->sun_path, address.data(), std::min(address.size(), sizeof sun->sun_path - 1));
      len = sizeof(sockaddr_un);
    }
    family = AF_UNIX;
  } else {
    ss = parse_inet(address, &len);
    if (len == 0) {
      *err = EINVAL;
      return {};
    }
    family = ss.ss_family;
  }
  Fd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) {
    *err = errno;
    return {};
  }
  if (before_connect) before_connect(fd.get());
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    if (errno != EINPROGRESS && errno != EAGAIN) {
      *err = errno;
      return {};
    }
    pollfd p{fd.get(), POLLOUT, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) {
      *err = ETIMEDOUT;
      return {};
    }
    int so_error = 0;
    socklen_t sl = sizeof so_error;
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &so_error, &sl);
    if (so_error != 0) {
      *err = so_error;
      return {};
    }
  }
  return fd;
}

Fd connect_to(const std::string& address, Millis timeout) {
  int err = 0;
  Fd fd = try_connect(address, &err, timeout);
  if (!fd) ADD_FAILURE() << "connect " << address << ": " << std::strerror(err);
  return fd;
}

::testing::AssertionResult send_all(int fd, std::string_view data, Millis timeout) {
  auto deadline = Clock::now() + timeout;
  std::size_t sent = 0;
  while (sent < data.size()) {
    pollfd p{fd, POLLOUT, 0};
    int rc = ::poll(&p, 1, remaining_ms(deadline));
    if (rc == 0)
      return ::testing::AssertionFailure() << "send timed out after " << sent << " of " << data.size() << " bytes";
    if (rc < 0) {
      if (errno == EINTR) continue;
      return ::testing::AssertionFailure() << "poll: " << std::strerror(errno);
    }
    ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return ::testing::AssertionFailure() << "send: " << std::strerror(errno) << " after " << sent << " bytes";
    }
    sent += static_cast<std::size_t>(n);
  }
  return ::testing::AssertionSuccess();
}

std::string recv_exact(int fd, std::size_t n, Millis timeout) {
  auto deadline = Clock::now() + timeout;
  std::string out;
  out.reserve(n);
  char buf[65536];
  while (out.size() < n) {
    pollfd p{fd, POLLIN, 0};
    int rc = ::poll(&p, 1, remaining_ms(deadline));
    if (rc == 0) break;
    if (rc < 0) {
      if (errno == EINTR) continue;
      break;
    }
    ssize_t r = ::recv(fd, buf, std::min(sizeof buf, n - out.size()), MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (r <= 0) break;
    out.append(buf, static_cast<std::size_t>(r));
  }
  return out;
}

RecvAll recv_until_eof(int fd, Millis timeout) { return exchange(fd, {}, false, SIZE_MAX, timeout); }

RecvAll exchange(int fd, std::string_view data, bool shut_wr, std::size_t expect, Millis timeout) {
  auto deadline = Clock::now() + timeout;
  RecvAll result;
  std::size_t sent = 0;
  bool shut = false;
  char buf[65536];
  for (;;) {
    if (sent == data.size() && shut_wr && !shut) {
      ::shutdown(fd, SHUT_WR);
      shut = true;
    }
    if (!shut_wr && expect != SIZE_MAX && result.data.size() >= expect && sent == data.size()) return result;
    pollfd p{fd, POLLIN, 0};
    if (sent < data.size()) p.events |= POLLOUT;
    int rc = ::poll(&p, 1, remaining_ms(deadline));
    if (rc == 0) return result;  // timeout
    if (rc < 0) {
      if (errno == EINTR) continue;
      result.error = errno;
      return result;
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
      if (r == 0) {
        result.eof = true;
        return result;
      }
      if (r < 0 && errno != EAGAIN && errno != EINTR) {
        result.error = errno;
        return result;
      }
      if (r > 0) result.data.append(buf, static_cast<std::size_t>(r));
    }
    if ((p.revents & POLLOUT) && sent < data.size()) {
      std::size_t chunk = std::min<std::size_t>(data.size() - sent, 65536);
      ssize_t n = ::send(fd, data.data() + sent, chunk, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0 && errno != EAGAIN && errno != EINTR) {
        result.error = errno;
        return result;
      }
      if (n > 0) sent += static_cast<std::size_t>(n);
    }
  }
}

::testing::AssertionResult expect_closed(int fd, Millis timeout, std::string* received) {
  auto deadline = Clock::now() + timeout;
  char buf[65536];
  std::size_t total = 0;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    int rc = ::poll(&p, 1, remaining_ms(deadline));
    if (rc == 0)
      return ::testing::AssertionFailure() << "connection still open after " << timeout.count() << " ms ("
                                           << total << " bytes received)";
    if (rc < 0) {
      if (errno == EINTR) continue;
      return ::testing::AssertionFailure() << "poll: " << std::strerror(errno);
    }
    ssize_t r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (r == 0) return ::testing::AssertionSuccess() << "EOF";
    if (r < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      if (errno == ECONNRESET || errno == EPIPE) return ::testing::AssertionSuccess() << "reset";
      return ::testing::AssertionFailure() << "recv: " << std::strerror(errno);
    }
    total += static_cast<std::size_t>(r);
    if (received != nullptr) received->append(buf, static_cast<std::size_t>(r));
  }
}

bool is_open_and_quiet(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 0;
}

::testing::AssertionResult echo_line(int fd, std::string_view line, Millis timeout) {
  if (auto r = send_all(fd, line, timeout); !r) return r;
  std::string got = recv_exact(fd, line.size(), timeout);
  if (got != line)
    return ::testing::AssertionFailure() << "echo mismatch: sent " << line.size() << " bytes, got " << got.size()
                                         << " bytes: '" << got.substr(0, 200) << "'";
  return ::testing::AssertionSuccess();
}

// ---- datagrams ----

Fd udp_bind(const std::string& local) {
  socklen_t len = 0;
  sockaddr_storage ss = parse_inet(local, &len);
  Fd fd(::socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    ADD_FAILURE() << "udp bind " << local << ": " << std::strerror(errno);
    return {};
  }
  return fd;
}

Fd udp_connect(const std::string& peer, const std::string& local) {
  socklen_t len = 0;
  sockaddr_storage ss = parse_inet(peer, &len);
  Fd fd = udp_bind(!local.empty() ? local : ss.ss_family == AF_INET6 ? "[::1]:0" : "127.0.0.1:0");
  if (!fd) return fd;
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    ADD_FAILURE() << "udp connect " << peer << ": " << std::strerror(errno);
    return {};
  }
  return fd;
}

::testing::AssertionResult udp_send(int fd, std::string_view data) {
  ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
  if (n != static_cast<ssize_t>(data.size()))
    return ::testing::AssertionFailure() << "udp send: " << std::strerror(errno);
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult udp_send_to(int fd, const std::string& peer, std::string_view data) {
  socklen_t len = 0;
  sockaddr_storage ss = parse_inet(peer, &len);
  ssize_t n = ::sendto(fd, data.data(), data.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&ss), len);
  if (n != static_cast<ssize_t>(data.size()))
    return ::testing::AssertionFailure() << "udp sendto " << peer << ": " << std::strerror(errno);
  return ::testing::AssertionSuccess();
}

std::optional<std::string> udp_recv(int fd, Millis timeout, sockaddr_storage* from) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    int rc = ::poll(&p, 1, remaining_ms(deadline));
    if (rc == 0) return std::nullopt;
    if (rc < 0) {
      if (errno == EINTR) continue;
      return std::nullopt;
    }
    std::string buf(65536, '\0');
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    ssize_t n = ::recvfrom(fd, buf.data(), buf.size(), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&ss), &len);
    if (n < 0) {
      // ECONNREFUSED: an ICMP error from an earlier datagram; not a reply.
      if (errno == EAGAIN || errno == EINTR || errno == ECONNREFUSED) continue;
      return std::nullopt;
    }
    buf.resize(static_cast<std::size_t>(n));
    if (from != nullptr) *from = ss;
    return buf;
  }
}

// ---- admin endpoint ----

std::optional<HttpResponse> http_get(const std::string& address, const std::string& path, Millis timeout) {
  int err = 0;
  Fd fd = try_connect(address, &err, timeout);
  if (!fd) return std::nullopt;
  std::string request = "GET " + path + " HTTP/1.1\r\nHost: " + address + "\r\nConnection: close\r\n\r\n";
  if (!send_all(fd.get(), request, timeout)) return std::nullopt;
  RecvAll all = recv_until_eof(fd.get(), timeout);
  const std::string& raw = all.data;
  auto header_end = raw.find("\r\n\r\n");
  if (header_end == std::string::npos || raw.compare(0, 5, "HTTP/") != 0) return std::nullopt;
  HttpResponse response;
  auto space = raw.find(' ');
  response.status = std::atoi(raw.c_str() + space + 1);
  std::string headers = raw.substr(0, header_end);
  std::string body = raw.substr(header_end + 4);
  // Chunked bodies are decoded; a Content-Length body is cut to its length.
  std::string lower = headers;
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower.find("transfer-encoding: chunked") != std::string::npos) {
    std::string decoded;
    std::size_t pos = 0;
    while (pos < body.size()) {
      auto eol = body.find("\r\n", pos);
      if (eol == std::string::npos) break;
      std::size_t size = std::strtoul(body.c_str() + pos, nullptr, 16);
      if (size == 0) break;
      decoded += body.substr(eol + 2, size);
      pos = eol + 2 + size + 2;
    }
    body = decoded;
  } else if (auto cl = lower.find("content-length:"); cl != std::string::npos) {
    std::size_t length = std::strtoul(lower.c_str() + cl + 15, nullptr, 10);
    if (body.size() > length) body.resize(length);
  }
  response.body = std::move(body);
  return response;
}

namespace {

// Parses `{a="x",b="y"}` starting at text[pos] == '{'; returns the position after '}'.
std::size_t parse_labels(std::string_view text, std::size_t pos, Labels* labels) {
  ++pos;
  while (pos < text.size() && text[pos] != '}') {
    while (pos < text.size() && (text[pos] == ',' || text[pos] == ' ')) ++pos;
    if (pos < text.size() && text[pos] == '}') break;
    auto eq = text.find('=', pos);
    if (eq == std::string_view::npos) return text.size();
    std::string key(text.substr(pos, eq - pos));
    pos = eq + 1;
    if (pos >= text.size() || text[pos] != '"') return text.size();
    ++pos;
    std::string value;
    while (pos < text.size() && text[pos] != '"') {
      if (text[pos] == '\\' && pos + 1 < text.size()) {
        ++pos;
        value += text[pos] == 'n' ? '\n' : text[pos];
      } else {
        value += text[pos];
      }
      ++pos;
    }
    ++pos;  // closing quote
    (*labels)[key] = value;
  }
  return pos + 1;
}

}  // namespace

std::optional<double> metric_value(std::string_view exposition, std::string_view name, const Labels& labels) {
  for (const auto& line : split_lines(exposition)) {
    if (line.empty() || line.front() == '#') continue;
    std::string_view l(line);
    if (l.substr(0, name.size()) != name) continue;
    std::size_t pos = name.size();
    Labels found;
    if (pos < l.size() && l[pos] == '{') {
      pos = parse_labels(l, pos, &found);
    } else if (pos < l.size() && l[pos] != ' ') {
      continue;  // a longer metric name with this prefix
    }
    if (found != labels) continue;
    while (pos < l.size() && l[pos] == ' ') ++pos;
    return std::strtod(std::string(l.substr(pos)).c_str(), nullptr);
  }
  return std::nullopt;
}

double metric_or(const std::string& admin, std::string_view name, const Labels& labels, double fallback) {
  return fetch_metric(admin, name, labels).value_or(fallback);
}

std::size_t open_fds(pid_t pid) {
  std::size_t n = 0;
  DIR* d = ::opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
  if (d == nullptr) return 0;
  while (auto* e = ::readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(d);
  return n;
}

std::optional<double> fetch_metric(const std::string& admin, std::string_view name, const Labels& labels) {
  if (admin.empty()) return std::nullopt;
  auto response = http_get(admin, "/metrics");
  if (!response || response->status != 200) return std::nullopt;
  return metric_value(response->body, name, labels);
}

::testing::AssertionResult wait_metric(const std::string& admin, std::string_view name, const Labels& labels,
                                       double expected, Millis timeout) {
  if (admin.empty()) return ::testing::AssertionFailure() << "no admin address to read " << name << " from";
  std::optional<double> last;
  bool ok = wait_until(
      [&] {
        last = fetch_metric(admin, name, labels);
        return last && *last == expected;
      },
      timeout);
  if (ok) return ::testing::AssertionSuccess();
  std::string label_text;
  for (const auto& [k, v] : labels) label_text += (label_text.empty() ? "" : ",") + k + "=\"" + v + "\"";
  auto failure = ::testing::AssertionFailure();
  failure << name << "{" << label_text << "} expected " << expected << ", last seen ";
  if (last) failure << *last;
  else failure << "(absent)";
  return failure;
}

long cpu_ticks(pid_t pid) {
  const std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  const auto paren = stat.rfind(')');
  if (paren == std::string::npos) return -1;
  std::istringstream in(stat.substr(paren + 2));
  std::string field;
  long utime = 0, stime = 0;
  // After "pid (comm) ": state is field 3, utime field 14, stime field 15.
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14) utime = std::stol(field);
    if (i == 15) stime = std::stol(field);
  }
  return utime + stime;
}

Fd start_connect(const std::string& address) {
  socklen_t len = 0;
  sockaddr_storage addr = parse_inet(address, &len);
  Fd s(::socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!s) return s;
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0 && errno != EINPROGRESS) return Fd();
  return s;
}

bool writable(int fd, Millis timeout) {
  pollfd p{fd, POLLOUT, 0};
  return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1 && (p.revents & POLLOUT);
}

bool peer_closed(int fd, std::string* received) {
  char b[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, b, sizeof b, MSG_DONTWAIT);
    if (n == 0) return true;
    if (n < 0) return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
    if (received) received->append(b, static_cast<std::size_t>(n));
  }
}

}  // namespace echorelay::test
