// Restarter; see restart.hpp. Why each step is where it is:
// - the pipe's read end is CLOEXEC and its write end is closed in the parent right after
//   spawning, so EOF means "the successor closed it or died" and never hangs on a copy
//   of our own;
// - a successor that failed is killed and reaped here (it is our child); one that is
//   ready outlives us and is reparented to the supervisor, systemd or init.
#include "lifecycle/restart.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <functional>
#include <istream>
#include <spdlog/spdlog.h>

#include "lifecycle/readiness.hpp"
#include "net/socket_options.hpp"
#include "os/systemd.hpp"

namespace echorelay::lifecycle {

namespace asio = boost::asio;

namespace {

std::string describe_status(int status) {
  if (WIFEXITED(status)) {
    const int code = WEXITSTATUS(status);
    return "exited with status " + std::to_string(code) + (code == 78 ? " (configuration error)" : "");
  }
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "stopped";
}

std::uint64_t monotonic_usec() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000u + static_cast<std::uint64_t>(ts.tv_nsec) / 1000u;
}

}  // namespace

struct Restarter::Impl : std::enable_shared_from_this<Impl> {
  enum class State { Idle, Waiting, Stopping, Done };

  Impl(asio::io_context& c, std::string exe, std::vector<std::string> args, config::Duration t, Hooks h)
      : control(c), exe_path(std::move(exe)), argv(std::move(args)), timeout(t), hooks(std::move(h)), timer(c) {}

  void start();
  void succeed(pid_t pid);
  void fail(const std::string& reason);
  // Kills and reaps the child at once.
  std::string reap_now();
  // Reaps the child without blocking the loop, then calls `done` with its status.
  void reap_then(int tries_left, std::function<void(const std::string&)> done);
  // Stopping: polls for the successor's exit. The pipe's EOF cannot tell: a wrapper's
  // children (a shell script's sleep) may hold its write end after the successor died.
  void watch_exit();

  asio::io_context& control;
  std::string exe_path;
  std::vector<std::string> argv;
  config::Duration timeout;
  Hooks hooks;
  asio::steady_timer timer;
  std::unique_ptr<asio::posix::stream_descriptor> pipe;
  asio::streambuf line;
  State state = State::Idle;
  bool reaping = false;  // a failed successor is being reaped; the attempt is not over yet
  pid_t child = -1;
  std::chrono::steady_clock::time_point started;
};

std::string Restarter::Impl::reap_now() {
  if (child <= 0) return "not started";
  int status = 0;
  // SIGKILL cannot be ignored, so this wait is brief.
  ::kill(child, SIGKILL);
  ::waitpid(child, &status, 0);
  child = -1;
  return describe_status(status);
}

// EOF on the pipe usually means the successor is exiting: poll for it on the control
// loop's timer (never sleeping there) so the status we report is its own, and kill it
// only if it is still alive after ~0.5 s.
void Restarter::Impl::reap_then(int tries_left, std::function<void(const std::string&)> done) {
  reaping = true;
  int status = 0;
  if (child > 0 && ::waitpid(child, &status, WNOHANG) == child) {
    child = -1;
    reaping = false;
    done(describe_status(status));
    return;
  }
  if (tries_left <= 0) {
    reaping = false;
    done(reap_now());
    return;
  }
  timer.expires_after(std::chrono::milliseconds(10));
  timer.async_wait([self = shared_from_this(), tries_left, done = std::move(done)](const boost::system::error_code&) {
    self->reap_then(tries_left - 1, done);
  });
}

void Restarter::Impl::watch_exit() {
  int status = 0;
  if (child > 0 && ::waitpid(child, &status, WNOHANG) == child) {
    child = -1;
    fail("successor " + describe_status(status) + " before it was ready");
    return;
  }
  timer.expires_after(std::chrono::milliseconds(20));
  timer.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
    if (ec || self->state != State::Stopping || self->reaping) return;
    self->watch_exit();
  });
}

void Restarter::Impl::start() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    fail("pipe: " + net::errno_text(errno));
    return;
  }
  os::SpawnRequest request;
  request.path = exe_path;
  request.argv = argv;
  request.env = os::current_environment();
  request.fds = hooks.handover_fds();
  request.extra_env = hooks.extra_env();
  request.extra_fds = hooks.extra_fds ? hooks.extra_fds() : std::vector<os::SpawnRequest::ExtraFd>{};
  request.extra_fds.insert(request.extra_fds.begin(), {fds[1], kReadyFdEnv, /*reports_exec_failure=*/true});
  started = std::chrono::steady_clock::now();
  auto pid = os::spawn_with_fds(request);
  ::close(fds[1]);
  if (!pid) {
    ::close(fds[0]);
    fail(pid.error());
    return;
  }
  child = *pid;
  state = State::Waiting;
  spdlog::info("hot restart: started successor pid {} from {} with {} sockets", child, exe_path, request.fds.size());
  pipe = std::make_unique<asio::posix::stream_descriptor>(control, fds[0]);
  line.consume(line.size());

  timer.expires_after(timeout);
  timer.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
    if (ec || self->state != State::Waiting || self->reaping) return;
    const auto status = self->reap_now();
    self->fail("successor not ready within " + std::to_string(self->timeout.count()) + "ms (" + status + ")");
  });
  asio::async_read_until(*pipe, line, '\n', [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
    if (self->state != State::Waiting && self->state != State::Stopping) return;
    std::string message;
    if (!ec) {
      std::istream in(&self->line);
      std::getline(in, message);
    }
    if (message.rfind("READY", 0) == 0) {
      self->succeed(self->child);
    } else if (message.rfind("FAILED ", 0) == 0) {
      self->reap_then(50, [self, reason = message.substr(7)](const std::string& status) {
        self->fail(reason + " (" + status + ")");
      });
    } else {
      self->reap_then(50, [self](const std::string& status) { self->fail("successor " + status + " before it was ready"); });
    }
  });
}

void Restarter::Impl::succeed(pid_t pid) {
  state = State::Done;
  timer.cancel();
  pipe.reset();
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
  spdlog::info("handover done, successor pid {} ready after {}ms", pid, took.count());
  hooks.on_ready(pid);
}

void Restarter::Impl::fail(const std::string& reason) {
  const bool stopping = state == State::Stopping;
  state = State::Idle;
  timer.cancel();
  pipe.reset();
  if (stopping) {
    // Not a failure: we asked it to stop, and it did before it became main.
    spdlog::info("hot restart abandoned: {}", reason);
    return;
  }
  spdlog::error("hot restart failed: {}; still serving", reason);
  hooks.on_failed(reason);
}

Restarter::Restarter(asio::io_context& control, std::string exe_path, std::vector<std::string> argv,
                     config::Duration timeout, Hooks hooks)
    : impl_(std::make_shared<Impl>(control, std::move(exe_path), std::move(argv), timeout, std::move(hooks))) {}

Restarter::~Restarter() {
  // A successor still starting when we stop would be left half-ready with our sockets.
  if (impl_->state == Impl::State::Waiting || impl_->state == Impl::State::Stopping) impl_->reap_now();
}

void Restarter::request() {
  switch (impl_->state) {
    case Impl::State::Waiting:
      spdlog::info("SIGHUP: a restart is already in progress (successor pid {})", impl_->child);
      return;
    case Impl::State::Stopping:
    case Impl::State::Done:
      spdlog::info("SIGHUP: this process is stopping");
      return;
    case Impl::State::Idle:
      break;
  }
  os::notify("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(monotonic_usec()) + "\nSTATUS=hot restart in progress");
  impl_->start();
}

void Restarter::abort() {
  if (impl_->state != Impl::State::Waiting || impl_->reaping) return;
  impl_->state = Impl::State::Stopping;
  ::kill(impl_->child, SIGTERM);
  spdlog::info("stop requested during a hot restart: successor pid {} told to stop", impl_->child);
  // Its restart_timeout no longer applies: it takes as long as its drain takes, and
  // the caller bounds that by its own drain deadline.
  impl_->watch_exit();
}

bool Restarter::successor_stopping() const { return impl_->state == Impl::State::Stopping; }

}  // namespace echorelay::lifecycle
