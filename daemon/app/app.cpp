// App: wiring of listen/, echo/, udp/, admin/ and the lifecycle; see app.hpp.
#include "app/app.hpp"

#include <signal.h>
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdio>
#include <fstream>
#include <spdlog/spdlog.h>
#include <thread>

#include "admin/server.hpp"
#include "app/worker.hpp"
#include "echo/session.hpp"
#include "listen/acceptor.hpp"
#include "listen/open.hpp"
#include "obs/metrics.hpp"
#include "os/systemd.hpp"
#include "udp/udp_echo.hpp"

namespace echorelay::app {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

unsigned worker_count(unsigned configured) {
  if (configured > 0) return configured;
  return std::max(1u, std::thread::hardware_concurrency());
}

// Written whole or not at all: readers (tests, scripts) never see half a file.
bool write_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    if (!out.flush()) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

}  // namespace

struct App::Impl {
  Impl(config::Config c, Options o) : config(std::move(c)), options(std::move(o)), pool(worker_count(config.daemon.workers)) {}

  int run();
  Result<void> open_listeners();
  void start_serving();
  void begin_drain();
  void check_drain();
  void finish_drain();
  void on_signal(const boost::system::error_code& ec, int signo);
  void wait_for_signal();
  std::string bound_addresses() const;

  config::Config config;
  Options options;
  obs::Registry metrics;
  asio::io_context control{1};
  asio::signal_set signals{control};
  asio::steady_timer drain_timer{control};
  WorkerPool pool;
  std::vector<listen::OpenListener> listeners;
  std::vector<std::unique_ptr<listen::StreamAcceptor>> acceptors;
  std::vector<std::unique_ptr<udp::EchoServer>> udp_servers;
  std::unique_ptr<admin::Server> admin_server;
  std::optional<net::Endpoint> admin_bound;
  Clock::time_point drain_deadline{};
  bool draining = false;
  bool forced = false;
  bool stopping_announced = false;
};

Result<void> App::Impl::open_listeners() {
  listen::InheritedSockets inherited(os::take_listen_fds());
  for (const auto& spec : config.listeners) {
    auto open = listen::open_listener(spec, inherited);
    if (!open) {
      for (auto& l : listeners) listen::remove_socket_file(l);
      return make_error(open.error());
    }
    spdlog::info("listening on {} {} as {}{}", to_string(spec.protocol), open->local.to_string(), spec.name,
                 open->inherited ? " (inherited)" : "");
    listeners.push_back(std::move(*open));
  }
  for (const auto& name : inherited.close_unclaimed()) {
    spdlog::info("closed inherited socket {}: no listener claims it", name);
  }
  return {};
}

void App::Impl::start_serving() {
  pool.start();
  auto& workers = pool.all();
  std::size_t index = 0;
  for (auto& open : listeners) {
    const auto& spec = *open.spec;
    auto& counters = metrics.listener(spec.name);
    if (spec.is_stream()) {
      Worker& home = *workers[index++ % workers.size()];
      auto acceptor = std::make_unique<listen::StreamAcceptor>(
          home.ctx, open.fds.front().get(), spec, counters,
          listen::StreamAcceptor::Limits{&metrics.connections_active_total, config.daemon.max_connections},
          [this]() -> asio::io_context& { return pool.next().ctx; },
          [this, &spec, &counters](listen::StreamSocket socket, echo::ConnectionSlot slot) {
            auto& ctx = static_cast<asio::io_context&>(socket.get_executor().context());
            Worker* target = nullptr;
            for (auto& w : pool.all()) {
              if (&w->ctx == &ctx) target = w.get();
            }
            // The session set is the target worker's alone: join it on that thread.
            asio::post(ctx, [target, &spec, &counters, socket = std::move(socket), slot = std::move(slot)]() mutable {
              echo::start_session(std::move(socket), spec, counters, std::move(slot), target->sessions);
            });
          });
      acceptor->start();
      acceptors.push_back(std::move(acceptor));
    } else {
      std::vector<int> fds;
      for (auto& fd : open.fds) fds.push_back(fd.get());
      auto server = std::make_unique<udp::EchoServer>(spec, std::move(fds), counters);
      server->start();
      udp_servers.push_back(std::move(server));
    }
  }
}

std::string App::Impl::bound_addresses() const {
  std::string text;
  for (const auto& open : listeners) {
    text += open.spec->name + " " + std::string(to_string(open.spec->protocol)) + " " + open.local.to_string() + "\n";
  }
  if (admin_bound) text += "admin http " + admin_bound->to_string() + "\n";
  return text;
}

void App::Impl::wait_for_signal() {
  signals.async_wait([this](const boost::system::error_code& ec, int signo) { on_signal(ec, signo); });
}

void App::Impl::on_signal(const boost::system::error_code& ec, int signo) {
  if (ec) return;
  switch (signo) {
    case SIGTERM:
    case SIGINT:
      if (draining) {
        spdlog::warn("second {}: closing every connection now", signo == SIGTERM ? "SIGTERM" : "SIGINT");
        forced = true;
        finish_drain();
        return;
      }
      begin_drain();
      break;
    case SIGHUP:
      spdlog::warn("SIGHUP: hot restart is not available in this build; still serving");
      break;
    case SIGUSR1:
      spdlog::info("SIGUSR1: logs go to stderr or the journal; nothing to reopen");
      break;
    default:
      break;
  }
  wait_for_signal();
}

void App::Impl::begin_drain() {
  draining = true;
  stopping_announced = os::notify("STOPPING=1");
  drain_deadline = Clock::now() + config.daemon.drain_timeout;
  spdlog::info("drain: {} connections, deadline {}ms", metrics.connections_active_total.load(),
               config.daemon.drain_timeout.count());
  for (auto& a : acceptors) a->pause();
  for (auto& u : udp_servers) u->stop_reading();
  for (auto& w : pool.all()) {
    asio::post(w->ctx, [worker = w.get()] { lifecycle::for_each_session(worker->sessions, [](auto& s) { s.drain(); }); });
  }
  check_drain();
}

void App::Impl::check_drain() {
  if (metrics.connections_active_total.load() == 0) {
    finish_drain();
    return;
  }
  if (!forced && Clock::now() >= drain_deadline) {
    forced = true;
    spdlog::warn("drain deadline passed: closing {} connections", metrics.connections_active_total.load());
    for (auto& w : pool.all()) {
      asio::post(w->ctx,
                 [worker = w.get()] { lifecycle::for_each_session(worker->sessions, [](auto& s) { s.close_now(); }); });
    }
  }
  drain_timer.expires_after(std::chrono::milliseconds(20));
  drain_timer.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) check_drain();
  });
}

void App::Impl::finish_drain() {
  drain_timer.cancel();
  signals.cancel();
  if (admin_server) admin_server->stop();
  control.stop();
}

int App::Impl::run() {
  ::signal(SIGPIPE, SIG_IGN);
  // Registered before the listeners open, so a SIGTERM during start-up drains
  // instead of killing the process with Unix socket files left behind.
  signals.add(SIGTERM);
  signals.add(SIGINT);
  signals.add(SIGHUP);
  signals.add(SIGUSR1);

  if (auto r = open_listeners(); !r) {
    spdlog::error("{}", r.error());
    return 1;
  }
  if (config.admin.enabled) {
    admin_server = std::make_unique<admin::Server>(control, metrics, [this] { return !draining; });
    auto bound = admin_server->start(config.admin.listen);
    if (!bound) {
      spdlog::error("{}", bound.error());
      for (auto& l : listeners) listen::remove_socket_file(l);
      return 1;
    }
    admin_bound = *bound;
    spdlog::info("admin endpoint on http://{}/metrics", admin_bound->to_string());
  }
  start_serving();
  if (!options.bound_addresses_file.empty() && !write_atomically(options.bound_addresses_file, bound_addresses())) {
    spdlog::error("cannot write {}", options.bound_addresses_file);
  }
  wait_for_signal();
  os::notify(fmt::format("READY=1\nSTATUS=serving {} listeners\nMAINPID={}", listeners.size(), ::getpid()));
  spdlog::info("echorelayd {} ready: {} listeners, {} workers", ECHORELAY_VERSION, listeners.size(), pool.all().size());

  control.run();

  acceptors.clear();
  for (auto& u : udp_servers) u->stop();
  pool.stop();
  for (auto& l : listeners) listen::remove_socket_file(l);
  spdlog::info("stopped{}", forced ? " (connections closed at the deadline)" : "");
  return 0;
}

App::App(config::Config config, Options options) : impl_(std::make_unique<Impl>(std::move(config), std::move(options))) {}
App::~App() = default;
int App::run() { return impl_->run(); }

}  // namespace echorelay::app
