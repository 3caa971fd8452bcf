// App: wiring of listen/, echo/, udp/, admin/ and lifecycle/; see app.hpp.
//
// Who speaks for the service: the process that is "main" (started by hand or by
// systemd, or a successor once it reported ready). After a handover the old process
// is no longer main: it sends nothing to systemd, leaves the pid file and the Unix
// socket files alone, and only drains.
#include "app/app.hpp"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <spdlog/spdlog.h>
#include <sstream>
#include <thread>

#include "admin/server.hpp"
#include "app/worker.hpp"
#include "echo/session.hpp"
#include "lifecycle/readiness.hpp"
#include "lifecycle/restart.hpp"
#include "lifecycle/service.hpp"
#include "listen/acceptor.hpp"
#include "listen/open.hpp"
#include "net/own_listeners.hpp"
#include "obs/metrics.hpp"
#include "os/resources.hpp"
#include "os/systemd.hpp"
#include "upstream/resolver.hpp"
#include "relay/tcp_relay.hpp"
#include "udp/udp_echo.hpp"
#include "udp/udp_mirror.hpp"
#include "udp/udp_relay.hpp"
#include "version.hpp"

namespace echorelay::app {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

// The admin socket travels with the listeners under a name no listener can have
// (listener names are [A-Za-z0-9_.-]).
constexpr const char* kAdminFdName = "+admin";

// How long past its drain deadline a stopping process waits for a successor it told
// to stop (that successor has the same drain_timeout, started a little later).
constexpr std::chrono::milliseconds kSuccessorGrace{2000};

unsigned worker_count(unsigned configured) {
  if (configured > 0) return configured;
  return std::max(1u, std::thread::hardware_concurrency());
}

// Written whole or not at all: readers (tests, scripts, systemd's PIDFile=) never see
// half a file.
bool write_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    if (!out.flush()) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::stringstream in(text);
  for (std::string part; std::getline(in, part, sep);) {
    if (!part.empty()) parts.push_back(part);
  }
  return parts;
}

std::vector<std::string> take_owned_paths() {
  const char* value = std::getenv(lifecycle::kOwnedPathsEnv);
  if (!value) return {};
  auto names = split(value, ':');
  ::unsetenv(lifecycle::kOwnedPathsEnv);
  return names;
}

}  // namespace

struct App::Impl {
  Impl(config::Config c, Options o)
      : config(std::move(c)),
        options(std::move(o)),
        pool(worker_count(config.daemon.workers)),
        service(options.ready_fd >= 0) {}

  int run();
  Result<void> open_listeners(listen::InheritedSockets& inherited);
  Result<void> start_admin(listen::InheritedSockets& inherited);
  void start_serving();
  void stop_serving();
  void become_main();
  void begin_drain(bool successor_serves);
  void close_listening_sockets(bool successor_serves);
  void check_drain();
  void post_drain_check();
  void finish_drain();
  void on_signal(const boost::system::error_code& ec, int signo);
  void wait_for_signal();
  void pet_watchdog();
  void handed_over(pid_t successor);
  void restart_failed(const std::string& reason);
  std::vector<os::NamedFd> handover_fds();
  std::string bound_addresses() const;
  std::string status_line() const;
  void cleanup_files();
  void remove_created_files();

  config::Config config;
  Options options;
  obs::Registry metrics;
  asio::io_context control{1};
  asio::signal_set signals{control};
  asio::steady_timer drain_timer{control};
  asio::steady_timer watchdog_timer{control};
  WorkerPool pool;
  std::vector<listen::OpenListener> listeners;
  std::vector<std::unique_ptr<listen::StreamAcceptor>> acceptors;
  std::unique_ptr<upstream::Resolver> resolver;  // only when some listener relays, or mirrors to a name
  std::vector<std::unique_ptr<relay::RelayListener>> relay_listeners;
  std::vector<std::unique_ptr<udp::DatagramServer>> udp_servers;  // echo, mirror and relay, on the workers
  std::vector<listen::OpenListener*> udp_server_listeners;  // udp_servers[i] serves udp_server_listeners[i]
  std::unique_ptr<admin::Server> admin_server;
  std::optional<net::Endpoint> admin_bound;
  std::unique_ptr<lifecycle::Restarter> restarter;
  std::optional<std::chrono::microseconds> watchdog;
  std::vector<std::unique_ptr<std::atomic<std::uint64_t>>> worker_beats;
  std::vector<std::uint64_t> beats_seen;
  std::vector<std::string> owned_paths = take_owned_paths();  // from the predecessor
  Clock::time_point drain_deadline{};
  Clock::time_point last_extend{};
  // Who speaks for the service and what a signal means now (see lifecycle/service.hpp).
  lifecycle::Service service;
  // During the drain: acceptors not yet paused and UDP servers whose workers still read
  // their sockets. The count of connections is final only at zero.
  std::atomic<std::size_t> listeners_serving{0};
  net::LastConnectionWatch last_connection;  // armed by the drain
  bool drain_finished = false;
};

Result<void> App::Impl::open_listeners(listen::InheritedSockets& inherited) {
  for (const auto& spec : config.listeners) {
    auto open = listen::open_listener(spec, inherited);
    if (!open) {
      remove_created_files();
      return make_error("listener " + spec.name + ": " + open.error());
    }
    if (open->inherited && spec.endpoint.kind == net::Endpoint::Kind::UnixPath) {
      open->owns_path = std::find(owned_paths.begin(), owned_paths.end(), spec.name) != owned_paths.end();
    }
    spdlog::info("listening on {} {} as {}{}", to_string(spec.protocol), open->local.to_string(), spec.name,
                 open->inherited ? " (inherited)" : "");
    listeners.push_back(std::move(*open));
  }
  return {};
}

Result<void> App::Impl::start_admin(listen::InheritedSockets& inherited) {
  net::Fd inherited_admin = inherited.take_named(kAdminFdName);
  if (!config.admin.enabled) return {};
  admin_server = std::make_unique<admin::Server>(control, metrics, [this] { return !service.draining(); });
  admin_server->set_max_connections(config.admin.max_connections);
  auto bound = admin_server->start(config.admin.listen, inherited_admin.get());
  if (!bound) return make_error(bound.error());
  admin_bound = *bound;
  spdlog::info("admin endpoint on http://{}/metrics", admin_bound->to_string());
  return {};
}

// Everything is registered with the worker loops before they run: the UDP echo touches
// the pollers directly, which only a poller's own thread may do once it runs.
void App::Impl::start_serving() {
  auto& workers = pool.all();
  std::vector<net::LoopRef> loops;
  for (auto& w : workers) loops.push_back({&w->ctx, &w->poller});
  std::size_t index = 0;
  for (const auto& spec : config.listeners) {
    const bool names = std::any_of(spec.upstreams.begin(), spec.upstreams.end(),
                                   [](const net::Endpoint& e) { return !e.is_unix() && !e.is_ip_literal(); });
    if ((spec.handler == config::Handler::Relay || (spec.handler == config::Handler::Mirror && names)) && !resolver) {
      resolver = std::make_unique<upstream::Resolver>(config.resolver);
    }
  }
  // Every listening address is known before any serves: the UDP loop checks and the
  // relays' self-dial check read it (net/own_listeners.hpp).
  for (auto& open : listeners) {
    for (auto& fd : open.fds) net::own::add_listener(fd.get(), open.spec->handler == config::Handler::Relay);
  }
  for (auto& open : listeners) {
    const auto& spec = *open.spec;
    auto& counters = metrics.listener(spec.name);
    const bool relays = spec.handler == config::Handler::Relay;
    if (spec.is_stream()) {
      relay::RelayListener* relay_listener = nullptr;
      if (relays) {
        relay_listeners.push_back(std::make_unique<relay::RelayListener>(spec, counters, *resolver));
        relay_listener = relay_listeners.back().get();
      }
      Worker& home = *workers[index++ % workers.size()];
      auto acceptor = std::make_unique<listen::StreamAcceptor>(
          home.ctx, open.fds.front().get(), spec, counters,
          listen::StreamAcceptor::Limits{&metrics.connections_active_total, config.daemon.max_connections,
                                         &last_connection},
          [this]() -> asio::io_context& { return pool.next().ctx; },
          [this, &spec, &counters, relay_listener](listen::StreamSocket socket, net::ConnectionSlot slot) {
            auto& ctx = static_cast<asio::io_context&>(socket.get_executor().context());
            Worker* target = nullptr;
            for (auto& w : pool.all()) {
              if (&w->ctx == &ctx) target = w.get();
            }
            // The session set is the target worker's alone: join it on that thread.
            asio::post(ctx, [target, &spec, &counters, relay_listener, socket = std::move(socket),
                             slot = std::move(slot)]() mutable {
              net::Session* session =
                  relay_listener ? relay::start_relay_session(std::move(socket), *relay_listener, std::move(slot),
                                                              target->sessions, target->poller)
                                 : echo::start_session(std::move(socket), spec, counters, std::move(slot),
                                                       target->sessions, target->poller);
              // Accepted before the drain began but started after it walked this
              // worker: it drains now (answers what is waiting, then closes).
              if (session && target->draining) session->drain();
            });
          });
      acceptor->start();
      acceptors.push_back(std::move(acceptor));
    } else {
      std::vector<int> fds;
      for (auto& fd : open.fds) fds.push_back(fd.get());
      std::unique_ptr<udp::DatagramServer> server;
      if (relays) {
        server = udp::make_relay_server(spec, std::move(fds), counters, loops, *resolver);
      } else if (spec.handler == config::Handler::Mirror) {
        server = udp::make_mirror_server(spec, std::move(fds), metrics, loops, resolver.get(), control);
      } else {
        server = udp::make_echo_server(spec, std::move(fds), counters, loops);
      }
      server->start();
      udp_servers.push_back(std::move(server));
      udp_server_listeners.push_back(&open);
    }
  }
  pool.start();
}

// Acceptors first (they hand connections to workers), then the workers; what the
// workers served goes once no loop runs (a UDP relay closes its sessions then, also when
// the loops never ran because the start failed), and the relay state they all use goes
// last.
void App::Impl::stop_serving() {
  acceptors.clear();
  pool.stop();
  udp_servers.clear();
  relay_listeners.clear();
  resolver.reset();
}

std::string App::Impl::bound_addresses() const {
  std::string text;
  for (const auto& open : listeners) {
    text += open.spec->name + " " + std::string(to_string(open.spec->protocol)) + " " + open.local.to_string() + "\n";
  }
  if (admin_bound) text += "admin http " + admin_bound->to_string() + "\n";
  return text;
}

std::string App::Impl::status_line() const {
  return fmt::format("serving {} listeners, {} connections, {} restarts", listeners.size(),
                     metrics.connections_active_total.load(std::memory_order_relaxed),
                     metrics.restarts().load(std::memory_order_relaxed));
}

// This process now speaks for the service: pid file, then MAINPID and READY (a
// supervisor or systemd follows MAINPID), the fd store, then the predecessor.
void App::Impl::become_main() {
  // A successor's readiness completes a hot restart: counted before READY=1, so a
  // scrape that sees the new process sees the restart too.
  if (options.ready_fd >= 0) metrics.restarts().fetch_add(1, std::memory_order_relaxed);
  const pid_t pid = ::getpid();
  if (!config.daemon.pid_file.empty() && !write_atomically(config.daemon.pid_file, std::to_string(pid) + "\n")) {
    spdlog::error("cannot write pid file {}", config.daemon.pid_file);
  }
  const bool store_outlives_us = os::fd_store_reaches_manager();
  for (auto& open : listeners) {
    std::vector<int> fds;
    for (const auto& fd : open.fds) fds.push_back(fd.get());
    if (os::store_fds(open.spec->name, fds) && store_outlives_us && open.owns_path) {
      // The stored socket outlives us and a `systemctl restart` hands it back: its
      // file must stay where clients look (a stale one is cleared at the next bind).
      open.owns_path = false;
      spdlog::info("{}: the socket file stays at exit, the service manager's fd store keeps its socket",
                   open.spec->name);
    }
  }
  if (admin_server && admin_server->native_handle() >= 0) os::store_fds(kAdminFdName, {admin_server->native_handle()});
  os::notify(fmt::format("MAINPID={}\nREADY=1\nSTATUS={}", pid, status_line()));
  lifecycle::report_ready(options.ready_fd);
}

std::vector<os::NamedFd> App::Impl::handover_fds() {
  std::vector<os::NamedFd> fds;
  for (const auto& open : listeners) {
    for (const auto& fd : open.fds) fds.push_back({fd.get(), open.spec->name});
  }
  if (admin_server && admin_server->native_handle() >= 0) fds.push_back({admin_server->native_handle(), kAdminFdName});
  return fds;
}

void App::Impl::handed_over(pid_t successor) {
  const bool begin = service.handed_over();
  // The successor serves these paths now; unlinking them would take its address away.
  for (auto& open : listeners) open.owns_path = false;
  watchdog_timer.cancel();
  if (!begin) {
    // A stop aborted the restart but the successor got ready first: it is main now
    // and drains itself; we go on with our own drain, silently.
    spdlog::info("successor pid {} became main while stopping; it drains too", successor);
    return;
  }
  spdlog::info("successor pid {} serves; draining", successor);
  begin_drain(true);
}

void App::Impl::restart_failed(const std::string& reason) {
  metrics.restart_failures().fetch_add(1, std::memory_order_relaxed);
  service.restart_failed();
  // After STOPPING=1, READY=1 would tell the service manager we are serving again.
  if (!service.draining()) os::notify(fmt::format("READY=1\nSTATUS=reload failed: {}", reason));
}

void App::Impl::wait_for_signal() {
  signals.async_wait([this](const boost::system::error_code& ec, int signo) { on_signal(ec, signo); });
}

void App::Impl::on_signal(const boost::system::error_code& ec, int signo) {
  if (ec) return;
  switch (signo) {
    case SIGTERM:
    case SIGINT: {
      const char* name = signo == SIGTERM ? "SIGTERM" : "SIGINT";
      switch (service.stop_signal()) {
        case lifecycle::Service::Stop::Force:
          spdlog::warn("second {}: closing every connection now", name);
          finish_drain();
          return;
        case lifecycle::Service::Stop::AlreadyDraining:
          spdlog::info("{}: already draining", name);
          break;
        case lifecycle::Service::Stop::Drain:
          if (restarter) restarter->abort();
          begin_drain(false);
          break;
      }
      break;
    }
    case SIGHUP:
      switch (service.reload_signal()) {
        case lifecycle::Service::Reload::Restart:
          restarter->request();
          break;
        case lifecycle::Service::Reload::Deferred:
          // Restarting a process that has not reported ready would hand over half a
          // start-up; the restart follows the readiness instead.
          spdlog::info("SIGHUP before ready: restarting once ready");
          break;
        case lifecycle::Service::Reload::InProgress:
          restarter->request();  // says which successor is on its way
          break;
        case lifecycle::Service::Reload::Ignored:
          spdlog::info("SIGHUP while draining: ignored");
          break;
      }
      break;
    case SIGUSR1:
      spdlog::info("SIGUSR1: logs go to stderr or the journal; nothing to reopen");
      break;
    default:
      break;
  }
  wait_for_signal();
}

// Our references to the listening sockets go at once. When nobody else holds a socket,
// that closes it: new connections are refused and datagrams bounce (ECONNREFUSED),
// which tells clients and load balancers to go elsewhere now, instead of completing
// handshakes into a backlog that the exit resets. When a successor, systemd's fd store
// or a socket unit holds it, it stays open there and new arrivals wait for that holder.
void App::Impl::close_listening_sockets(bool successor_serves) {
  // Connections already queued are ours to serve unless a successor is accepting.
  listeners_serving.store(acceptors.size() + udp_servers.size(), std::memory_order_relaxed);
  for (auto& a : acceptors) {
    a->pause(!successor_serves, [this] {
      listeners_serving.fetch_sub(1, std::memory_order_release);
      post_drain_check();
    });
  }
  // The UDP servers' workers serve, unless a successor reads on, what the sockets hold,
  // then let go of them; only then may our references close (a worker may be in recvmmsg
  // on one). A UDP relay's sessions go on sending replies after that, from duplicates
  // the relay keeps until it is destroyed, after the workers (see udp/udp_relay.hpp):
  // the socket closes with them, at exit.
  for (std::size_t i = 0; i < udp_servers.size(); ++i) {
    udp_servers[i]->stop(!successor_serves, [this, open = udp_server_listeners[i]] {
      asio::post(control, [this, open] {
        open->fds.clear();
        listeners_serving.fetch_sub(1, std::memory_order_release);
        check_drain();
      });
    });
  }
  for (auto& open : listeners) {
    if (!open.spec->is_stream()) continue;
    open.fds.clear();
  }
  if (admin_server) admin_server->stop();
}

void App::Impl::begin_drain(bool successor_serves) {
  if (service.is_main()) os::notify("STOPPING=1\nSTATUS=draining");
  drain_deadline = Clock::now() + config.daemon.drain_timeout;
  spdlog::info("drain: {} connections, deadline {}ms", metrics.connections_active_total.load(),
               config.daemon.drain_timeout.count());
  last_connection.arm([this] { post_drain_check(); });
  close_listening_sockets(successor_serves);
  for (auto& w : pool.all()) {
    asio::post(w->ctx, [worker = w.get()] {
      worker->draining = true;
      net::for_each_session(worker->sessions, [](auto& s) { s.drain(); });
    });
  }
  check_drain();
}

void App::Impl::post_drain_check() {
  asio::post(control, [this] { check_drain(); });
}

// Runs when something the drain waits for may have changed: the last connection
// ended, a listener let go of its sockets (both post here), or the timer below.
void App::Impl::check_drain() {
  if (drain_finished) return;
  // A successor told to stop with us still holds our sockets' connections: exiting
  // before it would let the service manager kill it mid-drain (KillMode=mixed).
  const bool successor_stopping = restarter && restarter->successor_stopping();
  // An acceptor still running may take a connection yet: the count is only final once
  // every acceptor has stopped (a connection accepted in between was lost otherwise),
  // and a UDP worker may still be serving what it swept from its socket.
  const bool still_accepting = !service.forced() && listeners_serving.load(std::memory_order_acquire) != 0;
  if (metrics.connections_active_total.load() == 0 && !successor_stopping && !still_accepting) {
    finish_drain();
    return;
  }
  if (successor_stopping && service.forced() && Clock::now() >= drain_deadline + kSuccessorGrace) {
    spdlog::warn("successor still stopping {}ms after the drain deadline; exiting", kSuccessorGrace.count());
    finish_drain();
    return;
  }
  if (!service.forced() && Clock::now() >= drain_deadline) {
    service.deadline_passed();
    spdlog::warn("drain deadline passed: closing {} connections", metrics.connections_active_total.load());
    for (auto& w : pool.all()) {
      asio::post(w->ctx,
                 [worker = w.get()] { net::for_each_session(worker->sessions, [](auto& s) { s.close_now(); }); });
    }
  }
  if (service.is_main() && os::notify_socket_set() && Clock::now() - last_extend >= std::chrono::seconds(1)) {
    // A long drain must not trip systemd's stop timeout while work still finishes:
    // keep the stop timer ahead of the drain deadline.
    last_extend = Clock::now();
    const auto left = std::chrono::duration_cast<std::chrono::microseconds>(drain_deadline - last_extend);
    if (left.count() > 0) os::notify(fmt::format("EXTEND_TIMEOUT_USEC={}", left.count() + 2000000));
  }
  // The clock is all that is left to watch: the deadline, systemd's stop timer, and a
  // successor told to stop (its exit is seen only by looking).
  const auto now = Clock::now();
  auto next = service.forced() ? drain_deadline + kSuccessorGrace : drain_deadline;
  if (successor_stopping) next = std::min(next, now + std::chrono::milliseconds(20));
  if (service.is_main() && os::notify_socket_set()) next = std::min(next, last_extend + std::chrono::seconds(1));
  // Past every point (connections closed at the deadline that have not ended yet):
  // look again soon rather than spin.
  drain_timer.expires_at(next > now ? next : now + std::chrono::milliseconds(20));
  drain_timer.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) check_drain();
  });
}

void App::Impl::finish_drain() {
  drain_finished = true;
  drain_timer.cancel();
  watchdog_timer.cancel();
  signals.cancel();
  if (admin_server) admin_server->stop();
  control.stop();
}

// WATCHDOG=1 only while every worker loop turns: each tick posts a heartbeat to every
// worker and pets systemd only if all of the previous tick's heartbeats ran.
void App::Impl::pet_watchdog() {
  // After a handover the successor is the service: a draining predecessor petting on
  // its behalf would hide a successor whose loop is stuck. cancel() alone cannot stop
  // a tick whose timer already fired but has not run yet.
  if (!service.is_main()) return;
  bool all_alive = true;
  for (std::size_t i = 0; i < worker_beats.size(); ++i) {
    const auto beat = worker_beats[i]->load(std::memory_order_relaxed);
    if (beat == beats_seen[i]) all_alive = false;
    beats_seen[i] = beat;
  }
  if (all_alive) {
    os::notify("WATCHDOG=1");
  } else {
    spdlog::warn("watchdog: a worker loop did not respond; not petting");
  }
  for (std::size_t i = 0; i < worker_beats.size(); ++i) {
    asio::post(pool.all()[i]->ctx, [beat = worker_beats[i].get()] { beat->fetch_add(1, std::memory_order_relaxed); });
  }
  watchdog_timer.expires_after(*watchdog / 3);
  watchdog_timer.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) pet_watchdog();
  });
}

void App::Impl::cleanup_files() {
  for (auto& l : listeners) listen::remove_socket_file(l);
}

// A start that failed removes only the socket files it created: an inherited path is
// still served by the predecessor, which keeps serving when its successor fails.
void App::Impl::remove_created_files() {
  for (auto& l : listeners) {
    if (!l.inherited) listen::remove_socket_file(l);
  }
}

int App::Impl::run() {
  ::signal(SIGPIPE, SIG_IGN);
  const auto fd_limit = os::raise_fd_limit();
  // Counters go on from the service's totals (see obs::Registry); a predecessor of
  // another version only tells how many restarts came before.
  bool adopted_ledger = false;
  if (const char* ledger_fd = std::getenv(lifecycle::kCountersFdEnv)) {
    std::string error;
    adopted_ledger = metrics.adopt_ledger(std::atoi(ledger_fd), error);
    if (!adopted_ledger) spdlog::warn("counters start from 0: {}", error);
    ::unsetenv(lifecycle::kCountersFdEnv);
  }
  if (const char* restarts = std::getenv(lifecycle::kRestartsEnv)) {
    if (!adopted_ledger) metrics.restarts().store(std::strtoull(restarts, nullptr, 10) - 1);
    ::unsetenv(lifecycle::kRestartsEnv);
  }
  // Registered before the listeners open, so a signal during start-up is handled by
  // the loop instead of killing the process with socket files left behind.
  signals.add(SIGTERM);
  signals.add(SIGINT);
  signals.add(SIGHUP);
  signals.add(SIGUSR1);

  {
    listen::InheritedSockets inherited(os::take_listen_fds());
    if (auto r = open_listeners(inherited); !r) {
      spdlog::error("{}", r.error());
      lifecycle::report_failure(options.ready_fd, r.error());
      return 1;
    }
    if (auto r = start_admin(inherited); !r) {
      spdlog::error("{}", r.error());
      lifecycle::report_failure(options.ready_fd, r.error());
      remove_created_files();
      return 1;
    }
    // Owned paths of listeners the new config dropped are removed with their sockets.
    for (const auto& name : inherited.close_unclaimed(owned_paths)) {
      spdlog::info("closed inherited socket {}: no listener claims it", name);
      os::remove_stored_fds(name);
    }
  }

  restarter = std::make_unique<lifecycle::Restarter>(
      control, options.exe_path, options.argv, config.daemon.restart_timeout,
      lifecycle::Restarter::Hooks{
          .handover_fds = [this] { return handover_fds(); },
          .extra_env =
              [this] {
                std::string owned;
                for (const auto& open : listeners) {
                  if (open.owns_path) owned += (owned.empty() ? "" : ":") + open.spec->name;
                }
                return std::vector<std::string>{
                    std::string(lifecycle::kOwnedPathsEnv) + "=" + owned,
                    std::string(lifecycle::kRestartsEnv) + "=" + std::to_string(metrics.restarts().load() + 1)};
              },
          .extra_fds =
              [this] {
                // The successor starts from everything counted until now; what we
                // count from here on is folded in when we exit.
                metrics.fold_into_ledger();
                std::vector<os::SpawnRequest::ExtraFd> fds;
                if (metrics.ledger_fd() >= 0) fds.push_back({metrics.ledger_fd(), lifecycle::kCountersFdEnv});
                return fds;
              },
          .on_ready = [this](pid_t pid) { handed_over(pid); },
          .on_failed = [this](const std::string& reason) { restart_failed(reason); }});

  try {
    start_serving();
  } catch (const std::exception& e) {
    // The system refused a resource while starting (threads, fds, memory): a clean
    // failure the predecessor or the service manager can report, not an abort.
    const std::string error = std::string("cannot start serving: ") + e.what();
    spdlog::error("{}", error);
    lifecycle::report_failure(options.ready_fd, error);
    stop_serving();
    remove_created_files();
    return 1;
  }
  if (!options.bound_addresses_file.empty() && !write_atomically(options.bound_addresses_file, bound_addresses())) {
    spdlog::error("cannot write {}", options.bound_addresses_file);
  }
  wait_for_signal();
  // A successor told to stop while it started (its predecessor got SIGTERM during the
  // restart) must not become main: that would hand the stopping service to a process
  // about to exit. Signals that arrived so far are handled here.
  control.poll();
  if (!service.started()) {
    spdlog::info("stop requested before this successor was ready: draining without taking over");
  } else {
    become_main();
    watchdog = os::watchdog_interval();
    if (watchdog) {
      for (std::size_t i = 0; i < pool.all().size(); ++i) {
        worker_beats.push_back(std::make_unique<std::atomic<std::uint64_t>>(1));
        beats_seen.push_back(0);
      }
      pet_watchdog();
    }
    spdlog::info("echorelayd {} ready: {} listeners, {} workers, open files limit {}", kVersion, listeners.size(),
                 pool.all().size(), fd_limit);
    if (service.take_deferred_reload()) {
      service.reload_signal();
      restarter->request();
    }
  }

  control.run();

  stop_serving();
  // What we counted while draining reaches the successor's totals.
  metrics.fold_into_ledger();
  service.stopped();
  if (service.is_main()) {
    cleanup_files();
    if (!config.daemon.pid_file.empty()) {
      // Only our own pid file: a successor may already have replaced it.
      std::ifstream in(config.daemon.pid_file);
      pid_t written = 0;
      if (in >> written && written == ::getpid()) ::unlink(config.daemon.pid_file.c_str());
    }
  }
  spdlog::info("stopped{}", service.forced() ? " (connections closed at the deadline)" : "");
  return 0;
}

App::App(config::Config config, Options options) : impl_(std::make_unique<Impl>(std::move(config), std::move(options))) {}
App::~App() = default;
int App::run() { return impl_->run(); }

}  // namespace echorelay::app
