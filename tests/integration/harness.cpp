// Implementation of the integration-test harness: process spawning with a pidfd, the
// notify socket and its reader thread, the daemon runner (which signals and kills only
// the pids it learned, never by name), the bound-addresses file, and deadline-bounded
// socket I/O. All sockets are CLOEXEC so a spawned daemon
// never inherits a test's client sockets.
#include "harness.hpp"

#include <dirent.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <linux/sockios.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
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
  if (!WIFEXITED(status) && !WIFSIGNALED(status)) return std::nullopt;
  return status_code(status);
}

// Not passed on from the test's own environment (see spawn_process).
bool manager_variable(std::string_view entry) {
  for (std::string_view name : {"NOTIFY_SOCKET=", "LISTEN_FDS", "LISTEN_PID=", "WATCHDOG_"})
    if (entry.substr(0, name.size()) == name) return true;
  return false;
}

// A /proc stat file, or "" when the process is gone. Plain read(2): a process that exits
// between open and read makes the read fail with ESRCH, which an istreambuf_iterator
// would turn into an exception.
std::string read_stat(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return "";
  char buf[1024];
  const ssize_t n = ::read(fd.get(), buf, sizeof buf);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

std::string proc_stat(pid_t pid) { return read_stat("/proc/" + std::to_string(pid) + "/stat"); }

// The state letter of a stat line "pid (comm) S ppid ...": comm may hold spaces and
// parentheses, so it follows the last ')'. 0 when there is none.
char state_of(const std::string& stat) {
  auto close = stat.rfind(')');
  if (close == std::string::npos || close + 2 >= stat.size()) return 0;
  return stat[close + 2];
}

// The test process is a child subreaper while any Daemon lives (counted, so daemons
// destroyed in any order leave it as it was before the first).
std::mutex subreaper_mutex;
int subreaper_users = 0;
bool subreaper_before = false;

void hold_subreaper() {
  std::lock_guard lock(subreaper_mutex);
  if (subreaper_users++ > 0) return;
  int flag = 0;
  ::prctl(PR_GET_CHILD_SUBREAPER, &flag);
  subreaper_before = flag != 0;
  // Successors outlive their parents: as subreaper the test inherits and reaps them.
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
}

void release_subreaper() {
  std::lock_guard lock(subreaper_mutex);
  if (--subreaper_users == 0 && !subreaper_before) ::prctl(PR_SET_CHILD_SUBREAPER, 0);
}

}  // namespace

int status_code(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return -1;
}

// Everything the child needs is prepared before fork: after fork only async-signal-safe
// calls.
Spawned spawn_process(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                      const std::string& output_path, const std::string& netns) {
  Spawned result;
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view entry(*e);
    bool overridden = manager_variable(entry);
    for (const auto& extra : env) {
      auto eq = extra.find('=');
      if (entry.substr(0, eq + 1) == std::string_view(extra).substr(0, eq + 1)) overridden = true;
    }
    if (!overridden) env_strings.emplace_back(entry);
  }
  for (const auto& extra : env) env_strings.push_back(extra);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> argp;
  for (auto& s : args) argp.push_back(s.data());
  argp.push_back(nullptr);

  Fd out(::open(output_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
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

// ---- configs ----

std::string config_toml(const std::string& daemon_keys, const std::vector<ListenerToml>& listeners, bool admin) {
  std::string toml;
  if (!daemon_keys.empty()) toml += "[daemon]\n" + daemon_keys + (daemon_keys.back() == '\n' ? "" : "\n");
  if (admin) toml += "[admin]\nlisten = \"127.0.0.1:0\"\n";
  for (const auto& l : listeners) {
    toml += "[[listener]]\nname = \"" + l.name + "\"\nprotocol = \"" + l.protocol + "\"\naddress = \"" + l.address +
            "\"\n" + l.keys;
    if (!l.keys.empty() && l.keys.back() != '\n') toml += "\n";
  }
  return toml;
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
  Spawned child = spawn_process(argv, {}, out_path);
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

// ---- processes ----

char process_state(pid_t pid) { return state_of(proc_stat(pid)); }

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
    std::this_thread::sleep_for(5ms);
  }
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

NotifySocket::NotifySocket(std::string path, bool keep_fds) : path_(std::move(path)), keep_fds_(keep_fds) {
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

void NotifySocket::flush() { receive_queued(); }

void NotifySocket::receive_queued() {
  std::lock_guard receiving(receive_mutex_);
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
          Fd passed(fd);  // closed here unless kept: no fd the test did not ask for leaks
          if (keep_fds_) notice.fds.push_back(std::move(passed));
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

// ---- Daemon ----

Daemon::Daemon(std::string toml) : Daemon(std::move(toml), Options{}) {}

Daemon::Daemon(std::string toml, Options options)
    : options_(std::move(options)),
      config_path_(dir_.file("echorelay.toml")),
      log_path_(dir_.file("daemon.log")),
      bound_path_(dir_.file("bound-addresses")),
      notify_(dir_.file("notify.sock"), options_.keep_stored_fds) {
  write_file(config_path_, toml);
  hold_subreaper();
}

Daemon::~Daemon() {
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
  release_subreaper();
}

void Daemon::write_config(const std::string& toml) {
  std::string tmp = config_path_ + ".new";
  write_file(tmp, toml);
  ::rename(tmp.c_str(), config_path_.c_str());
}

::testing::AssertionResult Daemon::spawn() {
  if (!notify_.valid()) return ::testing::AssertionFailure() << "no notify socket";
  std::vector<std::string> argv = options_.prefix;
  argv.push_back(options_.binary);
  argv.insert(argv.end(), {"-c", config_path_});
  if (options_.bound_addresses) argv.insert(argv.end(), {"--bound-addresses-file", bound_path_});
  if (!options_.log_level.empty()) argv.insert(argv.end(), {"--log-level", options_.log_level});
  if (!options_.log_format.empty()) argv.insert(argv.end(), {"--log-format", options_.log_format});
  // Direct unless asked: a hot restart gives a new MAINPID (the default without a
  // NOTIFY_SOCKET would be the supervisor).
  argv.push_back(options_.supervise ? "--supervise" : "--no-supervise");
  argv.insert(argv.end(), options_.extra_args.begin(), options_.extra_args.end());
  std::vector<std::string> env = options_.env;
  if (options_.notify_in_env) env.push_back("NOTIFY_SOCKET=" + notify_.path());
  Spawned child = spawn_process(argv, env, log_path_, options_.netns);
  if (child.pid < 0)
    return ::testing::AssertionFailure() << "spawn " << argv.front() << ": " << std::strerror(child.error);
  first_pid_ = child.pid;
  main_pid_ = child.pid;
  pidfd_ = std::move(child.pidfd);
  if (options_.after_spawn) options_.after_spawn();
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult Daemon::start(Millis timeout) {
  if (auto r = spawn(); !r) return r;
  auto deadline = Clock::now() + timeout;
  const bool supervise = options_.supervise;
  auto is_ready = [supervise](const Notice& n) { return n.has("READY=1") && (supervise || n.value("MAINPID")); };
  std::optional<std::size_t> ready;
  while (!ready) {
    ready = notify_.wait_for(is_ready, 0, 50ms);
    if (ready) break;
    if (!running()) {
      notify_.flush();
      ready = notify_.wait_for(is_ready, 0, 0ms);
      if (ready) break;
      auto code = wait_exit(1000ms);
      return ::testing::AssertionFailure() << "echorelayd exited before READY=1 with status "
                                           << (code ? std::to_string(*code) : "?") << "; log:\n"
                                           << tail(log(), 3000);
    }
    if (Clock::now() >= deadline)
      return ::testing::AssertionFailure() << "no READY=1" << (supervise ? "" : " with MAINPID") << " within "
                                           << timeout.count() << " ms; log:\n"
                                           << tail(log(), 3000);
  }
  auto mainpid = notify_.at(*ready).value("MAINPID");
  main_pid_ = mainpid ? static_cast<pid_t>(std::stol(*mainpid)) : first_pid_;
  main_pids_.push_back(main_pid_);
  std::string error;
  if (options_.bound_addresses && !reload_addresses(&error))
    return ::testing::AssertionFailure() << "READY=1 sent but " << error;
  return ::testing::AssertionSuccess();
}

bool Daemon::running() {
  if (first_pid_ <= 0 || first_exit_) return false;
  pollfd p{pidfd_.get(), POLLIN, 0};
  return ::poll(&p, 1, 0) == 0;
}

bool Daemon::reload_addresses(std::string* error) {
  std::ifstream in(bound_path_);
  if (!in) {
    if (error) *error = "no bound-addresses file at " + bound_path_;
    return false;
  }
  std::map<std::string, std::string> addresses;
  std::map<std::string, std::string> protocols;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::istringstream fields(line);
    std::string name, proto, addr;
    if (!(fields >> name >> proto >> addr)) {
      if (error) *error = "malformed bound-addresses line: '" + line + "'";
      return false;
    }
    addresses[name] = addr;
    protocols[name] = proto;
  }
  addresses_ = std::move(addresses);
  protocols_ = std::move(protocols);
  return true;
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

std::vector<std::string> Daemon::notifications() {
  notify_.flush();
  std::vector<std::string> texts;
  for (const Notice& n : notify_.snapshot()) texts.push_back(n.text);
  return texts;
}

bool Daemon::saw_notify(std::string_view line) {
  notify_.flush();
  return notify_.wait_line(line, 0, 0ms).has_value();
}

bool Daemon::wait_notify(std::string_view line, Millis timeout) {
  return notify_.wait_line(line, 0, timeout).has_value();
}

Daemon::Restart Daemon::hot_restart(Millis timeout, pid_t target) {
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

::testing::AssertionResult Daemon::signal(int signo, pid_t target) {
  pid_t pid = target > 0 ? target : main_pid_;
  if (pid <= 0) return ::testing::AssertionFailure() << "no main pid";
  if (::kill(pid, signo) != 0) return ::testing::AssertionFailure() << "kill " << pid << ": " << std::strerror(errno);
  return ::testing::AssertionSuccess();
}

std::optional<int> Daemon::wait_exit(Millis timeout) {
  if (first_exit_) return first_exit_;
  if (first_pid_ <= 0) return std::nullopt;
  first_exit_ = reap(first_pid_, pidfd_.get(), timeout);
  // Everything it sent is queued on the socket by now.
  notify_.flush();
  return first_exit_;
}

Gone Daemon::wait_main_exit(Millis timeout) {
  if (main_pid_ == first_pid_) {
    Gone g;
    g.exit_code = wait_exit(timeout);
    g.gone = g.exit_code.has_value();
    return g;
  }
  auto deadline = Clock::now() + timeout;
  Gone g = wait_gone(main_pid_, timeout);
  // A zombie whose parent still lives: wait for the reparenting so we learn the status.
  while (g.gone && !g.exit_code && process_state(main_pid_) == 'Z' && Clock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
    g = wait_gone(main_pid_, 0ms);
  }
  return g;
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

namespace {

// The fields of /proc/net/tcp{,6} (the calling thread's namespace) for the other end
// of our connected TCP socket `fd`: what the peer's socket holds.
struct PeerRow {
  unsigned long rx_queue = 0;  // bytes it has not read yet
  unsigned long inode = 0;     // as /proc/PID/fd names it: socket:[inode]
};

std::optional<PeerRow> peer_row(int fd) {
  sockaddr_storage ours{}, theirs{};
  socklen_t ours_len = sizeof ours, theirs_len = sizeof theirs;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ours), &ours_len) != 0 ||
      ::getpeername(fd, reinterpret_cast<sockaddr*>(&theirs), &theirs_len) != 0)
    return std::nullopt;
  // As /proc/net/tcp prints an address: the 32-bit words of the address bytes as
  // integers ("%08X" each), then the port ("%04X").
  auto text = [](const sockaddr_storage& a) {
    char out[64];
    if (a.ss_family == AF_INET) {
      const auto* in = reinterpret_cast<const sockaddr_in*>(&a);
      std::snprintf(out, sizeof out, "%08X:%04X", in->sin_addr.s_addr, ntohs(in->sin_port));
    } else {
      const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&a);
      std::uint32_t w[4];
      std::memcpy(w, &in6->sin6_addr, sizeof w);
      std::snprintf(out, sizeof out, "%08X%08X%08X%08X:%04X", w[0], w[1], w[2], w[3], ntohs(in6->sin6_port));
    }
    return std::string(out);
  };
  const std::string local = text(theirs), remote = text(ours);  // as the peer's socket sees them
  std::istringstream table(read_file(ours.ss_family == AF_INET ? "/proc/thread-self/net/tcp"
                                                                  : "/proc/thread-self/net/tcp6"));
  std::string line;
  while (std::getline(table, line)) {
    std::istringstream fields(line);
    std::string slot, l, r, state, queues, timer, retransmits, uid, timeout;
    PeerRow row;
    if (!(fields >> slot >> l >> r >> state >> queues) || l != local || r != remote) continue;
    if (!(fields >> timer >> retransmits >> uid >> timeout >> row.inode)) return std::nullopt;
    const auto colon = queues.find(':');
    if (colon == std::string::npos) return std::nullopt;
    row.rx_queue = std::strtoul(queues.c_str() + colon + 1, nullptr, 16);
    return row;
  }
  return std::nullopt;
}

}  // namespace

bool read_by_peer(int fd) {
  int unsent = 0;
  if (::ioctl(fd, SIOCOUTQ, &unsent) != 0 || unsent != 0) return false;
  const auto row = peer_row(fd);
  return row && row->rx_queue == 0;
}

bool accepted_by(pid_t pid, int fd) {
  const auto row = peer_row(fd);
  return row && row->inode != 0 && holds_inode(pid, row->inode);
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

bool holds_inode(pid_t pid, unsigned long inode) {
  const std::string target = "socket:[" + std::to_string(inode) + "]";
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return false;
  bool found = false;
  while (auto* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char link[64];
    const ssize_t n = ::readlink((dir + "/" + e->d_name).c_str(), link, sizeof link);
    if (n > 0 && std::string_view(link, static_cast<std::size_t>(n)) == target) found = true;
  }
  ::closedir(d);
  return found;
}

bool holds_socket(pid_t pid, int fd) {
  struct stat st {};
  return ::fstat(fd, &st) == 0 && holds_inode(pid, st.st_ino);
}

bool stopped(pid_t pid) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return false;
  bool any = false;
  bool all = true;
  while (auto* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    any = true;
    const char state = state_of(read_stat(dir + "/" + e->d_name + "/stat"));
    if (state != 'T' && state != 't') all = false;
  }
  ::closedir(d);
  return any && all;
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
