// echorelayd: command line and wiring only; everything else is in the library.
#include <limits.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>
#include <spdlog/spdlog.h>
#include <string>

#include "app/app.hpp"
#include "app/probe.hpp"
#include "config/config.hpp"
#include "lifecycle/readiness.hpp"
#include "lifecycle/supervisor.hpp"
#include "obs/log.hpp"
#include "version.hpp"

namespace {

constexpr int kExitConfig = 78;  // EX_CONFIG: lets a unit say RestartPreventExitStatus=78

// Resolved once at start: a hot restart execs whatever file is at this path then, so
// replacing the file and sending SIGHUP upgrades the binary.
std::string own_executable_path(const char* argv0) {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n > 0) return std::string(buf, static_cast<std::size_t>(n));
  return argv0;
}

template <class Enum>
std::optional<Enum> parse_enum(const std::string& text, std::initializer_list<Enum> values) {
  for (Enum v : values) {
    if (echorelay::config::to_string(v) == text) return v;
  }
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace echorelay;
  CLI::App cli{"echorelayd: TCP/UDP echo and relay daemon"};
  std::string config_path = "/etc/echorelay/echorelay.toml";
  const int ready_fd = lifecycle::take_ready_fd();  // set when a predecessor started us
  bool check = false;
  bool supervise = false;
  bool no_supervise = false;
  bool version = false;
  std::string log_level;
  std::string log_format;
  app::Options options;
  cli.add_option("-c,--config", config_path, "configuration file");
  cli.add_flag("--check", check, "validate the configuration and exit (0 valid, 1 invalid)");
  cli.add_flag("--version", version, "print the version and exit");
  auto* supervise_flag = cli.add_flag(
      "--supervise", supervise,
      "run under a stable-PID supervisor (the default)");
  cli.add_flag("--no-supervise", no_supervise,
               "never run the supervisor: a hot restart replaces this process by a new PID")
      ->excludes(supervise_flag);
  cli.add_option("--log-level", log_level, "trace|debug|info|warn|error (overrides [log] level)");
  cli.add_option("--log-format", log_format, "auto|text|json|journal (overrides [log] format)");
  cli.add_option("--bound-addresses-file", options.bound_addresses_file,
                 "write 'NAME PROTOCOL ADDRESS' lines here once every listener is open");

  app::ProbeOptions probe;
  auto* probe_cmd = cli.add_subcommand("probe", "send one echo request to a listener; exit 0 if it came back intact");
  probe_cmd->add_option("address", probe.address, "tcp://host:port, udp://host:port, unix:///path, unix://@name")
      ->required();
  probe_cmd->add_option("--timeout", probe.timeout, "how long to wait, e.g. 2s");
  probe_cmd->add_option("--framing", probe.framing, "line (default), length-prefixed or raw, as the listener frames");

  // A usage error exits 2 (as nc and most CLI tools do), apart from a failed check (1).
  try {
    cli.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = cli.exit(e);
    return code == 0 ? 0 : app::kProbeUsage;
  }

  if (version) {
    std::printf("echorelayd %s\n", kVersion);
    return 0;
  }
  if (*probe_cmd) return app::run_probe(probe);

  auto loaded = config::load_config(config_path);
  for (const auto& d : loaded.diagnostics) std::fprintf(stderr, "%s\n", d.text.c_str());
  if (!loaded.config) {
    int fd = ready_fd;
    lifecycle::report_failure(fd, "configuration error: " + loaded.diagnostics.front().text);
    return check ? 1 : kExitConfig;
  }
  if (check) {
    std::fprintf(stderr, "%s: ok\n", config_path.c_str());
    return 0;
  }
  config::Config cfg = std::move(*loaded.config);

  if (!log_level.empty()) {
    auto level = parse_enum(log_level, {config::LogLevel::Trace, config::LogLevel::Debug, config::LogLevel::Info,
                                        config::LogLevel::Warn, config::LogLevel::Error});
    if (!level) {
      std::fprintf(stderr, "--log-level: unknown level \"%s\"\n", log_level.c_str());
      return 2;
    }
    cfg.log.level = *level;
  }
  if (!log_format.empty()) {
    auto format = parse_enum(log_format, {config::LogFormat::Auto, config::LogFormat::Text, config::LogFormat::Json,
                                          config::LogFormat::Journal});
    if (!format) {
      std::fprintf(stderr, "--log-format: unknown format \"%s\"\n", log_format.c_str());
      return 2;
    }
    cfg.log.format = *format;
  }
  obs::setup_logging(cfg.log.level, cfg.log.format);
  options.exe_path = own_executable_path(argv[0]);
  // Supervised by default: a hot restart would otherwise hand the service to a new PID
  // that the shell or the container runtime does not know, and that systemd, which
  // follows MAINPID=, does not wait for on stop before version 254 (it is not its
  // child). A successor started by a hot restart (ready_fd set) is always a worker.
  if (!no_supervise && ready_fd < 0) supervise = true;
  if (supervise && ready_fd < 0) {
    // The supervisor re-runs this binary as its worker, with --no-supervise (the
    // worker and its successors must never start a supervisor of their own).
    std::vector<std::string> worker_argv;
    for (int i = 0; i < argc; ++i) {
      const std::string_view arg(argv[i]);
      if (arg != "--supervise" && arg != "--no-supervise") worker_argv.emplace_back(argv[i]);
    }
    worker_argv.emplace_back("--no-supervise");
    return lifecycle::run_supervisor(options.exe_path, std::move(worker_argv));
  }
  for (int i = 0; i < argc; ++i) options.argv.emplace_back(argv[i]);
  options.ready_fd = ready_fd;
  // The one boundary for exceptions of the control plane: building the workers (epoll,
  // eventfd, threads) can fail for want of fds or memory. Past this, App::run reports
  // its own start failures the same way.
  std::unique_ptr<app::App> daemon;
  try {
    daemon = std::make_unique<app::App>(std::move(cfg), std::move(options));
  } catch (const std::exception& e) {
    const std::string error = std::string("cannot start: ") + e.what();
    spdlog::error("{}", error);
    int fd = ready_fd;
    lifecycle::report_failure(fd, error);
    return 1;
  }
  return daemon->run();
}
