// Implementation of lifecycle_support.hpp: the service runner that follows MAINPID,
// the notify socket keeping credentials and fds, and the classifying load clients.
// Processes are only ever signalled by the pids this file learned (spawned or
// reported by MAINPID=), never by name.
#include "lifecycle_support.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

extern char** environ;

namespace echorelay::test {

namespace {

int remaining(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}


int status_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

std::string tcp_unix_udp_config(const std::string& unix_path) {
  return R"(
[daemon]
workers = 2
drain_timeout = "5s"
restart_timeout = "5s"

[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "tcp"
protocol = "tcp"
address = "127.0.0.1:0"

[[listener]]
name = "unix"
protocol = "unix"
address = ")" + unix_path + R"("

[[listener]]
name = "udp"
protocol = "udp"
address = "127.0.0.1:0"
)";
}

// ---- Notice, NotifySocket ----

bool Notice::has(std::string_view line) const {
  for (auto l : split_lines(text))
    if (l == line) return true;
  return false;
}

std::optional<std::string> Notice::value(std::string_view key) const {
  for (auto l : split_lines(text)) {
    if (l.size() > key.size() && l.substr(0, key.size()) == key && l[key.size()] == '=')
      return std::string(l.substr(key.size() + 1));
  }
  return std::nullopt;
}

NotifySocket::NotifySocket(std::string path) : path_(std::move(path)) {
  fd_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!fd_ || !wake_) {
    ADD_FAILURE() << "notify socket: " << std::strerror(errno);
    fd_.reset();
    return;
  }
  int one = 1;
  ::setsockopt(fd_.get(), SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
  // Many generations send to it during a storm; a larger buffer avoids any loss.
  int size = 4 << 20;
  ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path_.c_str());
  if (::bind(fd_.get(), reinterpret_cast<sockaddr*>(&sun), sizeof sun) != 0) {
    ADD_FAILURE() << "bind " << path_ << ": " << std::strerror(errno);
    fd_.reset();
    return;
  }
  reader_ = std::thread([this] { read_loop(); });
}

NotifySocket::~NotifySocket() {
  if (reader_.joinable()) {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_.get(), &one, sizeof one);
    reader_.join();
  }
}

void NotifySocket::read_loop() {
  for (;;) {
    pollfd p[2] = {{fd_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      ADD_FAILURE() << "poll notify socket: " << std::strerror(errno);
      return;
    }
    if (p[1].revents != 0) return;
    receive_queued();
  }
}

void NotifySocket::receive_queued() {
  for (;;) {
    char buf[8192];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int) * 64)];
    iovec iov{buf, sizeof buf};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = ::recvmsg(fd_.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) return;
    Notice notice;
    notice.at = Clock::now();
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET) continue;
      if (c->cmsg_type == SCM_RIGHTS) {
        std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < count; ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
          notice.fds.emplace_back(fd);
        }
      } else if (c->cmsg_type == SCM_CREDENTIALS) {
        ucred cred{};
        std::memcpy(&cred, CMSG_DATA(c), sizeof cred);
        notice.sender = cred.pid;
      }
    }
    notice.text.assign(buf, static_cast<std::size_t>(n));
    while (!notice.text.empty() && notice.text.back() == '\n') notice.text.pop_back();
    {
      std::lock_guard lock(mutex_);
      if (notice.has("FDSTOREREMOVE=1")) {
        const auto name = notice.value("FDNAME");
        for (auto& m : messages_)
          if (m.has("FDSTORE=1") && m.value("FDNAME") == name) m.fds.clear();
      }
      messages_.push_back(std::move(notice));
    }
    arrived_.notify_all();
  }
}

std::size_t NotifySocket::size() const {
  std::lock_guard lock(mutex_);
  return messages_.size();
}

const Notice& NotifySocket::at(std::size_t i) const {
  std::lock_guard lock(mutex_);
  return messages_.at(i);
}

std::vector<std::reference_wrapper<const Notice>> NotifySocket::snapshot() const {
  std::lock_guard lock(mutex_);
  return {messages_.begin(), messages_.end()};
}

std::optional<std::size_t> NotifySocket::wait_for(const std::function<bool(const Notice&)>& pred,
                                                  std::size_t from, Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  std::unique_lock lock(mutex_);
  std::size_t checked = from;
  for (;;) {
    for (; checked < messages_.size(); ++checked)
      if (pred(messages_[checked])) return checked;
    if (arrived_.wait_until(lock, deadline) == std::cv_status::timeout) {
      for (; checked < messages_.size(); ++checked)
        if (pred(messages_[checked])) return checked;
      return std::nullopt;
    }
  }
}

std::optional<std::size_t> NotifySocket::wait_line(std::string_view line, std::size_t from, Millis timeout) {
  std::string l(line);
  return wait_for([l](const Notice& n) { return n.has(l); }, from, timeout);
}

void NotifySocket::release_fds() {
  std::lock_guard lock(mutex_);
  for (auto& m : messages_) m.fds.clear();
}

std::string NotifySocket::dump() const {
  std::lock_guard lock(mutex_);
  std::string out;
  for (const auto& m : messages_) {
    std::string text = m.text;
    for (auto& c : text)
      if (c == '\n') c = '|';
    out += "  [" + std::to_string(m.sender) + "] " + text;
    if (!m.fds.empty()) out += " (+" + std::to_string(m.fds.size()) + " fds)";
    out += "\n";
  }
  return out;
}

// ---- processes ----

// /proc/PID/stat, or "" when the process is gone. Plain read(2): a process that exits
// between open and read makes the read fail with ESRCH, which an istreambuf_iterator
// would turn into an exception.
std::string proc_stat(pid_t pid) {
  const std::string path = "/proc/" + std::to_string(pid) + "/stat";
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return "";
  char buf[1024];
  const ssize_t n = ::read(fd.get(), buf, sizeof buf);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

char process_state(pid_t pid) {
  const std::string text = proc_stat(pid);
  // "pid (comm) S ppid ...": comm may hold spaces and parentheses, so find the last ')'.
  auto close = text.rfind(')');
  if (close == std::string::npos || close + 2 >= text.size()) return 0;
  return text[close + 2];
}

pid_t parent_of(pid_t pid) {
  const std::string text = proc_stat(pid);
  auto close = text.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(text.substr(close + 2));
  char state;
  pid_t ppid = 0;
  rest >> state >> ppid;
  return ppid;
}

std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> out;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    const auto name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(name));
    if (parent_of(pid) == parent) out.push_back(pid);
  }
  return out;
}

Gone wait_gone(pid_t pid, Millis timeout) {
  Gone result;
  if (pid <= 0) return result;
  auto deadline = Clock::now() + timeout;
  for (;;) {
    int status = 0;
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      result.gone = true;
      result.exit_code = status_code(status);
      return result;
    }
    if (r < 0 && errno == ECHILD) {
      // Not our child (yet): gone when absent or a zombie waiting for its parent.
      if (::kill(pid, 0) != 0 && errno == ESRCH) {
        result.gone = true;
        return result;
      }
      if (process_state(pid) == 'Z') {
        result.gone = true;
        return result;
      }
    }
    if (Clock::now() >= deadline) return result;
    ::usleep(5000);
  }
}

// ---- ServiceUnderTest ----

ServiceUnderTest::ServiceUnderTest(std::string toml) : ServiceUnderTest(std::move(toml), Options{}) {}

ServiceUnderTest::ServiceUnderTest(std::string toml, Options options)
    : options_(std::move(options)),
      config_path_(dir_.file("echorelay.toml")),
      log_path_(dir_.file("daemon.log")),
      bound_path_(dir_.file("bound-addresses")),
      notify_(dir_.file("notify.sock")) {
  write_file(config_path_, toml);
  int flag = 0;
  ::prctl(PR_GET_CHILD_SUBREAPER, &flag);
  was_subreaper_ = flag != 0;
  // Successors outlive their parents: as subreaper the test inherits and reaps them.
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
}

ServiceUnderTest::~ServiceUnderTest() {
  std::vector<pid_t> pids = main_pids_;
  if (first_pid_ > 0 && !first_exit_) pids.push_back(first_pid_);
  for (const Notice& m : notify_.snapshot())
    if (m.sender > 0) pids.push_back(m.sender);
  // Workers of a supervisor and successors still starting: every descendant.
  for (std::size_t i = 0; i < pids.size() && i < 1000; ++i) {
    for (pid_t child : children_of(pids[i]))
      if (std::find(pids.begin(), pids.end(), child) == pids.end()) pids.push_back(child);
  }
  for (pid_t pid : pids) {
    // Only processes of this service: the ones we spawned or that spoke on our socket.
    if (pid > 0 && process_state(pid) != 0 && process_state(pid) != 'Z') ::kill(pid, SIGKILL);
  }
  for (pid_t pid : pids) wait_gone(pid, 2000ms);
  if (::testing::Test::HasFailure()) {
    std::cerr << "---- echorelayd log (" << log_path_ << ") ----\n"
              << tail(log(), 8000) << "\n---- notify messages ----\n"
              << tail(notify_.dump(), 6000) << "\n";
  }
  if (!was_subreaper_) ::prctl(PR_SET_CHILD_SUBREAPER, 0);
}

void ServiceUnderTest::write_config(const std::string& toml) {
  std::string tmp = config_path_ + ".new";
  write_file(tmp, toml);
  ::rename(tmp.c_str(), config_path_.c_str());
}

::testing::AssertionResult ServiceUnderTest::start(Millis timeout) {
  if (!notify_.valid()) return ::testing::AssertionFailure() << "no notify socket";
  std::vector<std::string> argv = options_.prefix;
  argv.push_back(options_.binary);
  argv.insert(argv.end(), {"-c", config_path_});
  if (options_.bound_addresses) argv.insert(argv.end(), {"--bound-addresses-file", bound_path_});
  argv.insert(argv.end(), {"--log-level", options_.log_level, "--log-format", "text"});
  // Direct unless asked: a hot restart gives a new MAINPID (the default without a
  // NOTIFY_SOCKET would be the supervisor).
  argv.push_back(options_.supervise ? "--supervise" : "--no-supervise");
  argv.insert(argv.end(), options_.extra_args.begin(), options_.extra_args.end());

  std::vector<std::string> env;
  std::vector<std::string> extra = options_.env;
  if (options_.notify_in_env) extra.push_back("NOTIFY_SOCKET=" + notify_.path());
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view entry(*e);
    bool overridden = entry.substr(0, 14) == "NOTIFY_SOCKET=" || entry.substr(0, 10) == "LISTEN_FDS" ||
                      entry.substr(0, 10) == "LISTEN_PID" || entry.substr(0, 9) == "WATCHDOG_";
    for (const auto& x : extra) {
      auto eq = x.find('=');
      if (entry.substr(0, eq + 1) == std::string_view(x).substr(0, eq + 1)) overridden = true;
    }
    if (!overridden) env.emplace_back(entry);
  }
  env.insert(env.end(), extra.begin(), extra.end());
  std::vector<char*> envp;
  for (auto& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<char*> argp;
  for (auto& s : argv) argp.push_back(s.data());
  argp.push_back(nullptr);

  Fd out(::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  Fd null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!out || !null) return ::testing::AssertionFailure() << "open log: " << std::strerror(errno);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) return ::testing::AssertionFailure() << "fork: " << std::strerror(errno);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::dup2(null.get(), 0);
    ::dup2(out.get(), 1);
    ::dup2(out.get(), 2);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execve(argp[0], argp.data(), envp.data());
    ::_exit(127);
  }
  first_pid_ = pid;
  pidfd_.reset(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (options_.after_spawn) options_.after_spawn();

  auto deadline = Clock::now() + timeout;
  const bool supervise = options_.supervise;
  auto is_ready = [supervise](const Notice& n) { return n.has("READY=1") && (supervise || n.value("MAINPID")); };
  std::optional<std::size_t> ready;
  while (!ready) {
    ready = notify_.wait_for(is_ready, 0, 50ms);
    if (ready) break;
    pollfd p{pidfd_.get(), POLLIN, 0};
    if (::poll(&p, 1, 0) > 0) {
      ready = notify_.wait_for(is_ready, 0, 0ms);
      if (ready) break;
      Gone g = wait_gone(first_pid_, 1000ms);
      if (g.exit_code) first_exit_ = g.exit_code;
      return ::testing::AssertionFailure() << "echorelayd exited before READY=1 with status "
                                           << (g.exit_code ? std::to_string(*g.exit_code) : "?") << "; log:\n"
                                           << tail(log(), 3000);
    }
    if (Clock::now() >= deadline)
      return ::testing::AssertionFailure() << "no READY=1 with MAINPID within " << timeout.count() << " ms; log:\n"
                                           << tail(log(), 3000);
  }
  auto mainpid = notify_.at(*ready).value("MAINPID");
  main_pid_ = mainpid ? static_cast<pid_t>(std::stol(*mainpid)) : first_pid_;
  main_pids_.push_back(main_pid_);
  std::string error;
  if (options_.bound_addresses && !reload_addresses(&error)) return ::testing::AssertionFailure() << error;
  return ::testing::AssertionSuccess();
}

ServiceUnderTest::Restart ServiceUnderTest::hot_restart(Millis timeout, pid_t target) {
  Restart r;
  const pid_t old = main_pid_;
  const std::size_t from = notify_.size();
  r.reloading_index = from;
  auto started = Clock::now();
  if (::kill(target > 0 ? target : old, SIGHUP) != 0) {
    r.status = std::string("kill: ") + std::strerror(errno);
    return r;
  }
  const bool supervise = options_.supervise;
  auto is_failure = [](const Notice& n) {
    auto status = n.value("STATUS");
    return n.has("READY=1") && status && status->rfind("reload failed", 0) == 0;
  };
  auto is_success = [old, supervise, is_failure](const Notice& n) {
    if (!n.has("READY=1") || is_failure(n)) return false;
    auto mainpid = n.value("MAINPID");
    if (supervise) return true;
    return mainpid && std::stol(*mainpid) != old;
  };
  auto index = notify_.wait_for([&](const Notice& n) { return is_success(n) || is_failure(n); }, from, timeout);
  r.took = std::chrono::duration_cast<Millis>(Clock::now() - started);
  if (auto reloading = notify_.wait_line("RELOADING=1", from, 0ms)) r.reloading_index = *reloading;
  if (!index) {
    r.status = "no outcome within " + std::to_string(timeout.count()) + " ms";
    r.pid = main_pid_;
    return r;
  }
  const Notice& n = notify_.at(*index);
  r.status = n.value("STATUS").value_or("");
  if (is_success(n)) {
    r.ok = true;
    if (!supervise) {
      main_pid_ = static_cast<pid_t>(std::stol(*n.value("MAINPID")));
      main_pids_.push_back(main_pid_);
    }
    if (options_.bound_addresses) reload_addresses();
  } else {
    r.failed = true;
  }
  r.pid = main_pid_;
  return r;
}

::testing::AssertionResult ServiceUnderTest::signal(int signo, pid_t target) {
  pid_t pid = target > 0 ? target : main_pid_;
  if (pid <= 0) return ::testing::AssertionFailure() << "no main pid";
  if (::kill(pid, signo) != 0) return ::testing::AssertionFailure() << "kill " << pid << ": " << std::strerror(errno);
  return ::testing::AssertionSuccess();
}

std::optional<int> ServiceUnderTest::wait_first_exit(Millis timeout) {
  if (first_exit_) return first_exit_;
  Gone g = wait_gone(first_pid_, timeout);
  if (g.gone) first_exit_ = g.exit_code;
  return first_exit_;
}

Gone ServiceUnderTest::wait_main_exit(Millis timeout) {
  if (main_pid_ == first_pid_) {
    Gone g;
    g.exit_code = wait_first_exit(timeout);
    g.gone = g.exit_code.has_value();
    return g;
  }
  auto deadline = Clock::now() + timeout;
  Gone g = wait_gone(main_pid_, timeout);
  // A zombie whose parent still lives: wait for the reparenting so we learn the status.
  while (g.gone && !g.exit_code && process_state(main_pid_) == 'Z' && Clock::now() < deadline) {
    ::usleep(5000);
    g = wait_gone(main_pid_, 0ms);
  }
  return g;
}

bool ServiceUnderTest::reload_addresses(std::string* error) {
  std::ifstream in(bound_path_);
  if (!in) {
    if (error) *error = "no bound-addresses file at " + bound_path_;
    return false;
  }
  std::map<std::string, std::string> fresh;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::istringstream fields(line);
    std::string name, proto, addr;
    if (!(fields >> name >> proto >> addr)) {
      if (error) *error = "malformed bound-addresses line: '" + line + "'";
      return false;
    }
    fresh[name] = addr;
  }
  addresses_ = std::move(fresh);
  return true;
}

std::string ServiceUnderTest::address(const std::string& name) const {
  auto it = addresses_.find(name);
  if (it == addresses_.end()) {
    ADD_FAILURE() << "no bound address for '" << name << "'";
    return {};
  }
  return it->second;
}

std::string ServiceUnderTest::log() const { return read_file(log_path_); }

// ---- load ----

const char* to_string(Outcome o) {
  switch (o) {
    case Outcome::Ok: return "ok";
    case Outcome::CleanClose: return "clean close";
    case Outcome::Reset: return "reset";
    case Outcome::Partial: return "partial answer";
    case Outcome::Wrong: return "wrong answer";
    case Outcome::Timeout: return "timeout";
    case Outcome::Error: return "error";
  }
  return "?";
}

Outcome round_trip(int fd, std::string_view request, Millis timeout, int* err) {
  auto deadline = Clock::now() + timeout;
  int dummy = 0;
  if (err == nullptr) err = &dummy;
  *err = 0;
  std::size_t sent = 0;
  std::string got;
  char buf[65536];
  while (got.size() < request.size()) {
    pollfd p{fd, POLLIN, 0};
    if (sent < request.size()) p.events |= POLLOUT;
    int rc = ::poll(&p, 1, remaining(deadline));
    if (rc == 0) return Outcome::Timeout;
    if (rc < 0) {
      if (errno == EINTR) continue;
      *err = errno;
      return Outcome::Error;
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = ::recv(fd, buf, std::min(sizeof buf, request.size() - got.size()), MSG_DONTWAIT);
      if (n == 0) return got.empty() ? Outcome::CleanClose : Outcome::Partial;
      if (n < 0 && errno != EAGAIN && errno != EINTR) {
        *err = errno;
        return errno == ECONNRESET || errno == EPIPE ? Outcome::Reset : Outcome::Error;
      }
      if (n > 0) {
        got.append(buf, static_cast<std::size_t>(n));
        if (got.compare(0, got.size(), request.substr(0, got.size())) != 0) return Outcome::Wrong;
      }
    }
    if ((p.revents & POLLOUT) && sent < request.size()) {
      ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0 && errno != EAGAIN && errno != EINTR) {
        *err = errno;
        return errno == ECONNRESET || errno == EPIPE ? Outcome::Reset : Outcome::Error;
      }
      if (n > 0) sent += static_cast<std::size_t>(n);
    }
  }
  return Outcome::Ok;
}

std::uint64_t LoadCounters::failures() const {
  return failed_connects + resets + partial + wrong + timeouts + errors + udp_wrong + eof_after_send;
}

std::string payload(std::uint64_t seed, std::size_t n) {
  std::string s(n, 'a');
  std::uint64_t x = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (auto& c : s) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    c = static_cast<char>('!' + (x >> 33) % 90);
  }
  return s;
}

Load::Load() : started_(Clock::now()) {}

Load::~Load() { stop(); }

void Load::note(std::string text) {
  auto ms = std::chrono::duration_cast<Millis>(Clock::now() - started_).count();
  std::lock_guard lock(mu_);
  if (notes_.size() < 30) notes_.push_back("+" + std::to_string(ms) + "ms " + text);
}

void Load::churn(const std::string& address, int clients, Millis pause) {
  for (int i = 0; i < clients; ++i)
    threads_.emplace_back([this, address, id = static_cast<int>(threads_.size()), pause] {
      run_churn(address, id, pause);
    });
}

void Load::persistent(const std::string& address, int clients, Millis pause) {
  for (int i = 0; i < clients; ++i)
    threads_.emplace_back([this, address, id = static_cast<int>(threads_.size()), pause] {
      run_persistent(address, id, pause);
    });
}

void Load::udp(const std::string& address, Millis pause, Millis wait) {
  threads_.emplace_back([this, address, pause, wait] { run_udp(address, pause, wait); });
}

void Load::stop() {
  stop_ = true;
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  threads_.clear();
}

namespace {

// Counts an outcome; returns true when the request must be retried on a new connection.
// EOF already queued on an idle connection (no request outstanding).
bool closed_by_peer(int fd) {
  char byte;
  const ssize_t n = ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0;
}

bool account(LoadCounters& c, Outcome o) {
  switch (o) {
    case Outcome::Ok: ++c.requests_ok; return false;
    case Outcome::CleanClose: ++c.eof_after_send; return true;
    case Outcome::Reset: ++c.resets; return true;
    case Outcome::Partial: ++c.partial; return true;
    case Outcome::Wrong: ++c.wrong; return true;
    case Outcome::Timeout: ++c.timeouts; return true;
    case Outcome::Error: ++c.errors; return true;
  }
  return true;
}

}  // namespace

void Load::run_churn(std::string address, int id, Millis pause) {
  std::uint64_t seq = 0;
  while (!stop_) {
    int err = 0;
    Fd fd = try_connect(address, &err, 3000ms);
    if (!fd) {
      ++counters_.failed_connects;
      note("churn " + std::to_string(id) + " connect " + address + ": " + std::strerror(err));
      std::this_thread::sleep_for(pause);
      continue;
    }
    ++counters_.connects;
    std::string request = "churn " + std::to_string(id) + " " + std::to_string(seq) + " " +
                          payload(seq * 131 + static_cast<std::uint64_t>(id), 10 + seq % 200) + "\n";
    Outcome o = round_trip(fd.get(), request, 3000ms, &err);
    bool retry = account(counters_, o);
    if (o != Outcome::Ok)
      note("churn " + std::to_string(id) + " seq " + std::to_string(seq) + ": " + to_string(o) +
           (err ? std::string(" (") + std::strerror(err) + ")" : ""));
    if (!retry) ++seq;
    fd.reset();
    std::this_thread::sleep_for(pause);
  }
}

void Load::run_persistent(std::string address, int id, Millis pause) {
  std::uint64_t seq = 0;
  Fd fd;
  bool answered_here = false;  // fd has had an answer: a reused connection
  while (!stop_) {
    int err = 0;
    if (!fd) {
      fd = try_connect(address, &err, 3000ms);
      if (!fd) {
        ++counters_.failed_connects;
        note("persistent " + std::to_string(id) + " connect " + address + ": " + std::strerror(err));
        std::this_thread::sleep_for(pause);
        continue;
      }
      ++counters_.connects;
    }
    // A server closing at a request boundary has sent its FIN right behind the last
    // answer: seen here, before anything is sent, it is a reconnect, not a failure.
    if (closed_by_peer(fd.get())) {
      ++counters_.clean_closes;
      fd.reset();
      answered_here = false;
      continue;
    }
    std::string request = "ping " + std::to_string(id) + " " + std::to_string(seq) + " " +
                          payload(seq * 7919 + static_cast<std::uint64_t>(id), 1 + seq % 300) + "\n";
    Outcome o = round_trip(fd.get(), request, 3000ms, &err);
    const bool crossed = o == Outcome::CleanClose && answered_here && address.starts_with("/");
    bool retry = crossed || account(counters_, o);
    if (crossed) ++counters_.unix_close_crossed;
    if (o != Outcome::Ok)
      note("persistent " + std::to_string(id) + " seq " + std::to_string(seq) + ": " + to_string(o) +
           (crossed ? " (Unix: the request crossed the server's FIN)" : "") +
           (err ? std::string(" (") + std::strerror(err) + ")" : ""));
    if (retry) {
      fd.reset();  // reconnect and send the same request again
      answered_here = false;
    } else {
      ++seq;
      answered_here = true;
    }
    std::this_thread::sleep_for(pause);
  }
}

void Load::run_udp(std::string address, Millis pause, Millis wait) {
  socklen_t len = 0;
  sockaddr_storage peer = parse_inet(address, &len);
  Fd fd(::socket(peer.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  std::string local = peer.ss_family == AF_INET6 ? "[::1]:0" : "127.0.0.1:0";
  socklen_t llen = 0;
  sockaddr_storage ls = parse_inet(local, &llen);
  if (!fd || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&ls), llen) != 0 ||
      ::connect(fd.get(), reinterpret_cast<sockaddr*>(&peer), len) != 0) {
    ++counters_.errors;
    note("udp socket: " + std::string(std::strerror(errno)));
    return;
  }
  std::uint64_t seq = 0;
  while (!stop_) {
    std::string datagram = "udp " + std::to_string(seq) + " " + payload(seq, 16 + seq % 400);
    ++counters_.udp_sent;
    if (::send(fd.get(), datagram.data(), datagram.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(datagram.size())) {
      ++counters_.udp_lost;
      note("udp send " + std::to_string(seq) + ": " + std::strerror(errno));
    } else {
      bool answered = false;
      auto deadline = Clock::now() + wait;
      while (!answered) {
        auto reply = udp_recv(fd.get(), Millis(remaining(deadline)));
        if (!reply) break;
        if (*reply == datagram) {
          answered = true;
        } else if (reply->rfind("udp ", 0) == 0 && reply->size() > 4) {
          // A late answer to an earlier datagram (already counted lost): not this one.
          std::uint64_t other = std::strtoull(reply->c_str() + 4, nullptr, 10);
          if (other >= seq) {
            ++counters_.udp_wrong;
            note("udp: unexpected answer for seq " + std::to_string(other));
          }
        } else {
          ++counters_.udp_wrong;
          note("udp: junk answer of " + std::to_string(reply->size()) + " bytes");
        }
      }
      if (answered) {
        ++counters_.udp_answered;
      } else {
        ++counters_.udp_lost;
        note("udp: no answer to seq " + std::to_string(seq));
      }
    }
    ++seq;
    std::this_thread::sleep_for(pause);
  }
}

std::string Load::summary() const {
  const auto& c = counters_;
  std::ostringstream s;
  s << "requests ok " << c.requests_ok << ", connects " << c.connects << ", failed connects " << c.failed_connects
    << ", resets " << c.resets << ", partial " << c.partial << ", wrong " << c.wrong << ", timeouts " << c.timeouts
    << ", errors " << c.errors << ", EOF after a sent request " << c.eof_after_send << ", clean closes (seen before sending) "
    << c.clean_closes << ", Unix requests that crossed the server's FIN " << c.unix_close_crossed << "; udp sent " << c.udp_sent << ", answered "
    << c.udp_answered << ", lost " << c.udp_lost << ", wrong " << c.udp_wrong;
  std::lock_guard lock(mu_);
  for (const auto& n : notes_) s << "\n  " << n;
  return s.str();
}

std::vector<std::string> Load::failure_notes() const {
  std::lock_guard lock(mu_);
  return notes_;
}

// ---- files, ports, addresses ----

::testing::AssertionResult replace_file(const std::string& from, const std::string& to) {
  std::string tmp = to + ".tmp-replace";
  {
    std::ifstream in(from, std::ios::binary);
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!in || !out) return ::testing::AssertionFailure() << "cannot copy " << from << " to " << tmp;
    out << in.rdbuf();
    if (!out.flush()) return ::testing::AssertionFailure() << "write " << tmp << " failed";
  }
  struct stat st {};
  if (::stat(from.c_str(), &st) != 0) return ::testing::AssertionFailure() << "stat " << from;
  ::chmod(tmp.c_str(), st.st_mode & 07777);
  if (::rename(tmp.c_str(), to.c_str()) != 0)
    return ::testing::AssertionFailure() << "rename " << tmp << ": " << std::strerror(errno);
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult replace_with_script(const std::string& to, const std::string& script) {
  std::string tmp = to + ".tmp-script";
  write_file(tmp, script);
  if (::chmod(tmp.c_str(), 0755) != 0) return ::testing::AssertionFailure() << "chmod " << tmp;
  if (::rename(tmp.c_str(), to.c_str()) != 0)
    return ::testing::AssertionFailure() << "rename " << tmp << ": " << std::strerror(errno);
  return ::testing::AssertionSuccess();
}

std::uint16_t pick_free_port() {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sin), sizeof sin) != 0) return 0;
  return local_port(fd.get());
}

std::string socket_address(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "(getsockname failed)";
  if (ss.ss_family == AF_UNIX) {
    auto* sun = reinterpret_cast<sockaddr_un*>(&ss);
    std::size_t n = len - offsetof(sockaddr_un, sun_path);
    if (n > 0 && sun->sun_path[0] == '\0') return "@" + std::string(sun->sun_path + 1, n - 1);
    return std::string(sun->sun_path, strnlen(sun->sun_path, n));
  }
  return format_inet(ss);
}

}  // namespace echorelay::test
