// Hot restart (SIGHUP): a storm of restarts under load that must cost no connection,
// no request and (almost) no datagram, with listeners added and removed by the new
// config; and restarts that fail (bad config, a binary that exits, one that hangs),
// after which the old process must keep serving under the same pid.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <algorithm>
#include <thread>

#include "harness.hpp"
#include "lifecycle_support.hpp"

namespace echorelay::test {
namespace {

// Config A: tcp, unix, udp. Config B: the same plus the tcp listener "extra".
std::string storm_config(const std::string& unix_path, bool with_extra) {
  std::string toml = tcp_unix_udp_config(unix_path);
  if (with_extra) toml += R"(
[[listener]]
name = "extra"
protocol = "tcp"
address = "127.0.0.1:0"
)";
  return toml;
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

// 50 restarts as issue 8 asks; 20 under the sanitizers, which slow every process
// several times over and run this suite twice more.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr int kStormRestarts = 20;
#else
constexpr int kStormRestarts = 50;
#endif

// The storm's client tells a request that crossed the server's FIN (sent, then EOF)
// from a FIN that came before it sent anything: only the first is a lost request.
TEST(LoadClient, TellsAFinBeforeTheSendFromARequestThatCrossedIt) {
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  Fd client(pair[0]), server(pair[1]);
  ASSERT_EQ(::shutdown(server.get(), SHUT_WR), 0);
  EXPECT_EQ(round_trip(client.get(), "ping 1\n", 1000ms), Outcome::ClosedUnsent);

  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  client = Fd(pair[0]);
  server = Fd(pair[1]);
  std::thread peer([fd = server.get()] {
    char request[16];
    const ssize_t n = ::recv(fd, request, sizeof request, 0);  // takes the request, never answers
    EXPECT_EQ(n, 7);
    ::shutdown(fd, SHUT_WR);
  });
  EXPECT_EQ(round_trip(client.get(), "ping 2\n", 1000ms), Outcome::CleanClose);
  peer.join();
}

TEST(RestartStorm, HotRestartsUnderLoadLoseNoConnectionNoRequest) {
  TempDir sockets;
  const std::string unix_path = sockets.file("storm.sock");
  ServiceUnderTest svc(storm_config(unix_path, false));
  ASSERT_TRUE(svc.start());
  const std::string tcp = svc.address("tcp");
  const std::string udp = svc.address("udp");
  const std::string admin = svc.admin();
  ASSERT_FALSE(svc.has_address("extra"));

  Load load;
  load.churn(tcp, 8);
  load.churn(unix_path, 4);
  load.persistent(tcp, 4);
  load.persistent(unix_path, 4);
  load.udp(udp);
  ASSERT_TRUE(wait_until([&] { return load.counters().requests_ok > 200; }, 5000ms)) << load.summary();

  std::vector<pid_t> old_pids;
  std::vector<std::size_t> handover_index;  // index of each successor's READY message
  std::vector<long> restart_ms;
  std::string last_extra;
  for (int i = 0; i < kStormRestarts; ++i) {
    const bool with_extra = i % 2 == 0;  // 1st restart adds "extra", 2nd removes it, ...
    const auto round_start = Clock::now();
    svc.write_config(storm_config(unix_path, with_extra));
    const pid_t old = svc.main_pid();
    auto r = svc.hot_restart(10000ms);
    ASSERT_TRUE(r.ok) << "restart " << i + 1 << ": " << r.status << "\n" << load.summary();
    ASSERT_NE(r.pid, old);
    old_pids.push_back(old);
    restart_ms.push_back(r.took.count());
    handover_index.push_back(svc.notify().size());
    // The admin socket is handed over too: same address after every restart.
    EXPECT_EQ(svc.admin(), admin);
    EXPECT_EQ(svc.address("tcp"), tcp) << "a port-0 listener must keep its port across restarts";
    EXPECT_EQ(svc.address("udp"), udp);

    if (with_extra) {
      ASSERT_TRUE(svc.has_address("extra")) << "restart " << i + 1;
      last_extra = svc.address("extra");
      Fd c = connect_to(last_extra, 2000ms);
      ASSERT_TRUE(c);
      EXPECT_TRUE(echo_line(c.get(), "extra listener serves\n", 2000ms)) << "restart " << i + 1;
    } else {
      EXPECT_FALSE(svc.has_address("extra")) << "restart " << i + 1;
      // The old process keeps its copy of the socket while it drains; once it is gone
      // nothing holds the removed listener and a connect must be refused.
      Gone g = wait_gone(old, 7000ms);
      ASSERT_TRUE(g.gone) << "old pid " << old << " still running after restart " << i + 1;
      int err = 0;
      Fd c = try_connect(last_extra, &err, 1000ms);
      EXPECT_FALSE(c) << "removed listener " << last_extra << " still accepts after restart " << i + 1;
      EXPECT_EQ(err, ECONNREFUSED) << std::strerror(err);
    }
    // About 0.5 s between SIGHUPs.
    std::this_thread::sleep_until(round_start + 500ms);
  }
  // Let the clients run on the last generation for a moment.
  const auto ok_before = load.counters().requests_ok.load();
  EXPECT_TRUE(wait_until([&] { return load.counters().requests_ok > ok_before + 200; }, 5000ms));
  load.stop();

  const auto& c = load.counters();
  std::cerr << "storm: " << load.summary() << "\n";
  std::sort(restart_ms.begin(), restart_ms.end());
  std::cerr << "restart latency (SIGHUP to successor READY): median " << restart_ms[restart_ms.size() / 2]
            << " ms, max " << restart_ms.back() << " ms\n";
  EXPECT_EQ(c.failed_connects, 0u) << load.summary();
  EXPECT_EQ(c.resets, 0u) << load.summary();
  EXPECT_EQ(c.partial, 0u) << load.summary();
  EXPECT_EQ(c.wrong, 0u) << load.summary();
  EXPECT_EQ(c.timeouts, 0u) << load.summary();
  EXPECT_EQ(c.errors, 0u) << load.summary();
  EXPECT_EQ(c.eof_after_send, 0u) << "requests sent and answered with EOF: " << load.summary();
  // The echo shuts a Unix connection's read side before its FIN, so no request can cross it.
  EXPECT_EQ(c.unix_close_crossed, 0u) << "Unix requests crossing the server's FIN: " << load.summary();
  EXPECT_EQ(c.udp_wrong, 0u) << load.summary();
  EXPECT_GT(c.requests_ok, 1000u);
  EXPECT_GT(c.udp_sent, 1000u);
  EXPECT_LE(c.udp_lost * 1000, c.udp_sent) << "UDP loss above 0.1%: " << load.summary();

  // Every old process exits (0 when the test reaped it as subreaper).
  for (pid_t pid : old_pids) {
    Gone g = wait_gone(pid, 10000ms);
    EXPECT_TRUE(g.gone) << "old pid " << pid << " still running";
    if (g.exit_code) {
      EXPECT_EQ(*g.exit_code, 0) << "old pid " << pid;
    }
  }
  // After its successor's READY, an old process says nothing more to the service manager.
  for (std::size_t i = 0; i < old_pids.size(); ++i) {
    for (std::size_t m = handover_index[i]; m < svc.notify().size(); ++m) {
      const Notice& n = svc.notify().at(m);
      EXPECT_NE(n.sender, old_pids[i]) << "old pid " << old_pids[i] << " sent '" << n.text << "' after handover";
    }
  }
  for (const Notice& n : svc.notify().snapshot()) EXPECT_FALSE(n.has("STOPPING=1")) << "nobody stopped the service";

  // The Unix path survived 20 handovers and still serves.
  EXPECT_TRUE(exists(unix_path));
  Fd u = connect_to(unix_path);
  ASSERT_TRUE(u);
  EXPECT_TRUE(echo_line(u.get(), "unix still serves\n"));
  EXPECT_EQ(fetch_metric(admin, "echorelay_restarts_total", {}), std::optional<double>(kStormRestarts));
  EXPECT_EQ(fetch_metric(admin, "echorelay_restart_failures_total", {}), std::optional<double>(0));

  ASSERT_TRUE(svc.signal(SIGTERM));
  Gone last = svc.wait_main_exit(10000ms);
  EXPECT_TRUE(last.gone);
  if (last.exit_code) {
    EXPECT_EQ(*last.exit_code, 0);
  }
  EXPECT_FALSE(exists(unix_path)) << "the last main process owns the path and removes it at exit";
}

std::string failure_config(bool valid) {
  if (!valid) return "[daemon]\nrestart_timeout = \"4s\"\n[[listener]\nname = \"broken\n";
  // 4 s: long enough for a real successor to get ready under ASan on a loaded machine,
  // short enough for the hanging-binary case.
  return config_toml("restart_timeout = \"4s\"\ndrain_timeout = \"3s\"", {{"tcp", "tcp"}, {"udp", "udp"}});
}

// One failed restart: the old process reports it, counts it and serves on.
void expect_failed_restart(ServiceUnderTest& svc, int persistent_fd, pid_t pid, int failures,
                           const std::string& reason_part, int round) {
  SCOPED_TRACE("failure " + std::to_string(failures) + " (" + reason_part + ")");
  auto r = svc.hot_restart(10000ms);
  ASSERT_TRUE(r.failed) << r.status;
  EXPECT_EQ(r.pid, pid);
  EXPECT_EQ(svc.main_pid(), pid);
  EXPECT_EQ(r.status.rfind("reload failed: ", 0), 0u) << r.status;
  EXPECT_NE(r.status.find(reason_part), std::string::npos) << r.status;
  EXPECT_EQ(::kill(pid, 0), 0) << "old process gone";
  EXPECT_TRUE(wait_metric(svc.admin(), "echorelay_restart_failures_total", {}, failures));
  EXPECT_EQ(fetch_metric(svc.admin(), "echorelay_restarts_total", {}), std::optional<double>(0));
  // The same connection and new ones are served by the same process.
  EXPECT_TRUE(echo_line(persistent_fd, "still here " + std::to_string(round) + "\n"));
  Fd c = connect_to(svc.address("tcp"));
  ASSERT_TRUE(c);
  EXPECT_TRUE(echo_line(c.get(), "new connection after failure\n"));
  Fd u = udp_connect(svc.address("udp"));
  ASSERT_TRUE(udp_send(u.get(), "udp after failure"));
  EXPECT_EQ(udp_recv(u.get()), std::optional<std::string>("udp after failure"));
  // The failed successor was reaped: the old process has no child left.
  EXPECT_TRUE(wait_until([&] { return children_of(pid).empty(); }, 3000ms)) << "successor left running";
}

// A connection to the "tcp" listener that has been answered once.
Fd answered_connection(const ServiceUnderTest& svc) {
  Fd c = connect_to(svc.address("tcp"));
  if (c && !echo_line(c.get(), "before\n")) c.reset();
  return c;
}

TEST(RestartFailure, BadConfigFailingBinaryAndHangingBinaryKeepTheOldProcessServing) {
  TempDir bin_dir;
  ServiceUnderTest svc(failure_config(true), from_copied_binary(bin_dir));
  const std::string binary = svc.options().binary;
  ASSERT_TRUE(svc.start());
  const pid_t pid = svc.main_pid();
  Fd persistent = answered_connection(svc);
  ASSERT_TRUE(persistent);

  // 1. A config that does not parse: the successor exits 78 (EX_CONFIG).
  svc.write_config(failure_config(false));
  expect_failed_restart(svc, persistent.get(), pid, 1, "status 78", 1);
  svc.write_config(failure_config(true));

  // 2. The binary on disk exits 1 at once.
  ASSERT_TRUE(replace_with_script(binary, "#!/bin/sh\nexit 1\n"));
  expect_failed_restart(svc, persistent.get(), pid, 2, "status 1", 2);

  // 3. The binary on disk never gets ready: killed at restart_timeout (4 s). A second
  // SIGHUP during the attempt is coalesced into it.
  ASSERT_TRUE(replace_with_script(binary, "#!/bin/sh\nexec sleep 600\n"));
  const std::size_t before = svc.notify().size();
  std::thread second_hup([&] {
    // During the attempt: RELOADING=1 is sent as it begins.
    (void)svc.notify().wait_line("RELOADING=1", before, 3000ms);
    ::kill(pid, SIGHUP);
  });
  const auto t0 = Clock::now();
  expect_failed_restart(svc, persistent.get(), pid, 3, "not ready within", 3);
  second_hup.join();
  EXPECT_GE(Clock::now() - t0, 3900ms) << "gave up before restart_timeout";
  int reloading = 0;
  for (std::size_t i = before; i < svc.notify().size(); ++i) reloading += svc.notify().at(i).has("RELOADING=1");
  EXPECT_EQ(reloading, 1) << "the SIGHUP during the restart must be coalesced";
  EXPECT_TRUE(wait_metric(svc.admin(), "echorelay_restart_failures_total", {}, 3));

  // 4. With the real binary back, the next restart succeeds.
  ASSERT_TRUE(replace_file(ECHORELAYD_PATH, binary));
  auto r = svc.hot_restart(10000ms);
  ASSERT_TRUE(r.ok) << r.status;
  EXPECT_NE(r.pid, pid);
  EXPECT_TRUE(wait_metric(svc.admin(), "echorelay_restarts_total", {}, 1));
  EXPECT_TRUE(expect_closed(persistent.get())) << "old process drains its idle connection";
  Gone g = wait_gone(pid, 5000ms);
  EXPECT_TRUE(g.gone);
  if (g.exit_code) {
    EXPECT_EQ(*g.exit_code, 0);
  }
  Fd c = connect_to(svc.address("tcp"));
  ASSERT_TRUE(c);
  EXPECT_TRUE(echo_line(c.get(), "successor serves\n"));
}

// A TCP port held open by the test, so that a listener configured on it cannot bind.
struct HeldPort {
  Fd fd;
  std::string address;
  HeldPort() {
    fd.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof in;
    if (!fd || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&in), sizeof in) != 0 || ::listen(fd.get(), 1) != 0 ||
        ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&in), &len) != 0) {
      ADD_FAILURE() << "hold a port: " << std::strerror(errno);
      return;
    }
    address = "127.0.0.1:" + std::to_string(ntohs(in.sin_port));
  }
};

// A successor that adopted the Unix socket and then failed (a new listener's port is
// taken) must not remove the socket file on its way out: the old process still serves
// that path, and new clients find it by the file.
TEST(RestartFailure, SuccessorFailingAfterAdoptingAUnixSocketLeavesItsFile) {
  TempDir sockets;
  const std::string unix_path = sockets.file("kept.sock");
  ServiceUnderTest svc(tcp_unix_udp_config(unix_path));
  ASSERT_TRUE(svc.start());
  const pid_t pid = svc.main_pid();
  HeldPort held;
  ASSERT_FALSE(held.address.empty());
  svc.write_config(tcp_unix_udp_config(unix_path) + R"(
[[listener]]
name = "blocked"
protocol = "tcp"
address = ")" + held.address + R"("
)");
  auto r = svc.hot_restart(10000ms);
  ASSERT_TRUE(r.failed) << r.status;
  EXPECT_NE(r.status.find("blocked"), std::string::npos) << r.status;
  EXPECT_EQ(svc.main_pid(), pid);
  EXPECT_TRUE(exists(unix_path)) << "the failed successor removed the old process's socket file";
  Fd c = connect_to(unix_path);
  ASSERT_TRUE(c);
  EXPECT_TRUE(echo_line(c.get(), "the old process still serves the path\n"));
}

// What the service manager saw from `from` on, for a stop during a restart: the old
// process said STOPPING=1 and nobody said READY=1 after it, except a successor that
// became main (MAINPID=) and then said STOPPING=1 itself.
void expect_stop_wins(NotifySocket& notify, std::size_t from, pid_t old_pid, pid_t successor) {
  auto stopping = notify.wait_for([&](const Notice& n) { return n.has("STOPPING=1") && n.sender == old_pid; }, from,
                                  3000ms);
  ASSERT_TRUE(stopping) << notify.dump();
  bool successor_main = false;
  for (std::size_t i = from; i < notify.size(); ++i) {
    const Notice& n = notify.at(i);
    if (n.value("MAINPID") == std::optional<std::string>(std::to_string(successor))) successor_main = true;
    if (i > *stopping && n.has("READY=1")) {
      EXPECT_EQ(n.sender, successor) << "READY=1 after STOPPING=1: " << n.text;
      EXPECT_TRUE(successor_main) << "READY=1 without MAINPID: " << n.text;
    }
  }
  if (successor_main) {
    EXPECT_TRUE(notify.wait_for([&](const Notice& n) { return n.has("STOPPING=1") && n.sender == successor; }, from,
                                5000ms))
        << "a successor that became main must say it stops: " << notify.dump();
  }
}

// SIGTERM while the successor is still starting (here: a binary that takes 3 s to
// start): the stop wins. The successor is told to stop, the old process drains and
// exits 0 at once instead of waiting for restart_timeout, and no "reload failed"
// READY=1 follows its STOPPING=1.
TEST(RestartAbort, SigtermWhileTheSuccessorStartsStopsBothWithoutAReloadFailure) {
  TempDir bin_dir;
  ServiceUnderTest svc(failure_config(true), from_copied_binary(bin_dir));
  const std::string binary = svc.options().binary;
  ASSERT_TRUE(svc.start());
  const pid_t pid = svc.main_pid();
  Fd idle = answered_connection(svc);
  ASSERT_TRUE(idle);

  // The wrapper notes a SIGTERM (the old code SIGKILLed it at its own exit instead).
  const std::string told_to_stop = bin_dir.file("told-to-stop");
  const std::string trapping = bin_dir.file("trapping");
  ASSERT_TRUE(replace_with_script(binary, "#!/bin/sh\ntrap 'echo yes > " + told_to_stop + "; exit 0' TERM\n: > " +
                                              trapping + "\nsleep 3 &\nwait\nexec " + ECHORELAYD_PATH +
                                              " \"$@\"\n"));
  const std::size_t from = svc.notify().size();
  ASSERT_TRUE(svc.signal(SIGHUP));
  ASSERT_TRUE(svc.notify().wait_line("RELOADING=1", from, 3000ms));
  pid_t successor = 0;
  ASSERT_TRUE(wait_until(
      [&] {
        auto children = children_of(pid);
        if (!children.empty()) successor = children.front();
        return successor != 0 && exists(trapping);
      },
      3000ms));

  const auto t0 = Clock::now();
  ASSERT_TRUE(svc.signal(SIGTERM));
  EXPECT_TRUE(expect_closed(idle.get())) << "the idle connection is drained";
  idle.reset();
  EXPECT_EQ(svc.wait_exit(3000ms), std::optional<int>(0));
  EXPECT_LT(Clock::now() - t0, 2500ms) << "waited for the successor instead of stopping it";
  EXPECT_TRUE(wait_gone(successor, 1000ms).gone) << "successor left running";
  expect_stop_wins(svc.notify(), from, pid, successor);
  EXPECT_EQ(read_file(told_to_stop), "yes\n") << "the successor was not sent SIGTERM";
  EXPECT_NE(svc.log().find("hot restart abandoned: successor exited with status 0"), std::string::npos)
      << svc.log();
  EXPECT_EQ(svc.log().find("hot restart failed"), std::string::npos);
}

// SIGTERM to the old process while the real successor has its listeners open (its
// signal handlers too) but has not reported ready: the successor is frozen there with
// SIGSTOP, so the stop lands in that window every time. Both processes drain and exit
// 0, the successor never becomes main, a request in flight on the old process is
// answered, and no READY=1 follows STOPPING=1.
TEST(RestartAbort, SigtermBeforeTheSuccessorIsReadyDrainsBothAndItNeverBecomesMain) {
  for (int attempt = 1;; ++attempt) {
    SCOPED_TRACE("attempt " + std::to_string(attempt));
    ServiceUnderTest svc(failure_config(true));
    ASSERT_TRUE(svc.start());
    const pid_t pid = svc.main_pid();
    Fd busy = answered_connection(svc);
    ASSERT_TRUE(busy);
    ASSERT_TRUE(send_all(busy.get(), "half a "));

    const std::size_t from = svc.notify().size();
    ASSERT_TRUE(svc.signal(SIGHUP));
    pid_t successor = 0;
    auto logged = [&](const std::string& what) {
      return svc.log().find("[" + std::to_string(successor) + "] " + what) != std::string::npos;
    };
    ASSERT_TRUE(wait_until(
        [&] {
          if (successor == 0) {
            auto children = children_of(pid);
            if (!children.empty()) successor = children.front();
          }
          if (successor == 0 || !logged("listening on")) return false;
          ::kill(successor, SIGSTOP);
          return true;
        },
        5000ms, 1ms))
        << "successor never opened its listeners";
    // Frozen (every thread: it writes no more log); had it reported ready already, the
    // window was missed: try again.
    ASSERT_TRUE(wait_until([&] { return stopped(successor); }, 2000ms, 1ms)) << "SIGSTOP did not stop " << successor;
    const bool too_late = logged("echorelayd") || svc.log().find("handover done") != std::string::npos;
    if (too_late && attempt < 5) {
      ::kill(successor, SIGCONT);
      continue;
    }
    ASSERT_FALSE(too_late) << "the successor was ready before it could be stopped, 5 times";

    ASSERT_TRUE(svc.signal(SIGTERM));
    ASSERT_TRUE(wait_until([&] { return svc.log().find("told to stop") != std::string::npos; }, 3000ms));
    ::kill(successor, SIGCONT);

    // The request in flight on the old process is finished and answered, then closed.
    ASSERT_TRUE(send_all(busy.get(), "request\n"));
    EXPECT_EQ(recv_exact(busy.get(), 15, 3000ms), "half a request\n");
    EXPECT_TRUE(expect_closed(busy.get()));
    busy.reset();

    EXPECT_EQ(svc.wait_exit(6000ms), std::optional<int>(0));
    EXPECT_TRUE(logged("stop requested before this successor was ready")) << svc.log();
    EXPECT_NE(svc.log().find("hot restart abandoned: successor exited with status 0"), std::string::npos)
        << svc.log();
    // The old process waited for the successor's own exit, not for its grace period.
    EXPECT_EQ(svc.log().find("successor still stopping"), std::string::npos) << svc.log();
    EXPECT_TRUE(wait_gone(successor, 1000ms).gone) << "successor left running";
    expect_stop_wins(svc.notify(), from, pid, successor);
    for (std::size_t i = from; i < svc.notify().size(); ++i)
      EXPECT_NE(svc.notify().at(i).sender, successor) << "a successor that never became main spoke: "
                                                        << svc.notify().at(i).text;
    EXPECT_EQ(svc.log().find("hot restart failed"), std::string::npos);
    return;
  }
}

// Options whose after_spawn freezes the first process (SIGSTOP) once its listeners are
// open, sends it `signo` there if it has not reported ready yet, and lets it go on.
// `in_window` tells whether the signal landed before READY=1.
ServiceUnderTest::Options signal_while_starting(ServiceUnderTest*& svc, int signo, bool& in_window) {
  ServiceUnderTest::Options options;
  options.after_spawn = [&svc, signo, &in_window] {
    const pid_t pid = svc->first_pid();
    const std::string prefix = "[" + std::to_string(pid) + "] ";
    in_window = false;
    if (!wait_until(
            [&] {
              if (svc->log().find(prefix + "listening on") == std::string::npos) return false;
              ::kill(pid, SIGSTOP);
              return true;
            },
            5000ms, 1ms))
      return;
    // Frozen, every thread: what it logged so far is in the file, and nothing more comes.
    in_window = wait_until([&] { return stopped(pid); }, 2000ms, 1ms) &&
                svc->log().find(prefix + "echorelayd") == std::string::npos;
    if (in_window) ::kill(pid, signo);
    ::kill(pid, SIGCONT);
  };
  return options;
}

// SIGHUP while the first process is still starting (frozen between opening its
// listeners and READY=1): not lost and not acted on half-started; the process reports
// ready first, then restarts.
TEST(RestartAbort, SighupBeforeReadyRestartsOnceReady) {
  for (int attempt = 1;; ++attempt) {
    SCOPED_TRACE("attempt " + std::to_string(attempt));
    ServiceUnderTest* self = nullptr;
    bool in_window = false;
    ServiceUnderTest svc(failure_config(true), signal_while_starting(self, SIGHUP, in_window));
    self = &svc;
    ASSERT_TRUE(svc.start());
    if (!in_window && attempt < 5) continue;
    ASSERT_TRUE(in_window) << "the process was ready before it could be stopped, 5 times";
    const pid_t first = svc.first_pid();
    auto ready = svc.notify().wait_line("READY=1", 0, 0ms);
    ASSERT_TRUE(ready);
    EXPECT_EQ(svc.notify().at(*ready).sender, first);
    auto reloading = svc.notify().wait_line("RELOADING=1", 0, 5000ms);
    ASSERT_TRUE(reloading) << svc.notify().dump();
    EXPECT_GT(*reloading, *ready) << "restarted before it was ready";
    auto successor_ready = svc.notify().wait_for(
        [&](const Notice& n) { return n.has("READY=1") && n.sender != first && n.value("MAINPID"); }, *reloading,
        10000ms);
    ASSERT_TRUE(successor_ready) << svc.notify().dump();
    EXPECT_NE(svc.log().find("SIGHUP before ready: restarting once ready"), std::string::npos) << svc.log();
    return;
  }
}

// SIGTERM in the same window: the process never reports READY=1 (the service manager
// would take it for started), says STOPPING=1, removes its Unix socket file and exits 0.
TEST(RestartAbort, SigtermBeforeReadyStopsWithoutReportingReady) {
  for (int attempt = 1;; ++attempt) {
    SCOPED_TRACE("attempt " + std::to_string(attempt));
    TempDir sockets;
    const std::string unix_path = sockets.file("starting.sock");
    ServiceUnderTest* self = nullptr;
    bool in_window = false;
    ServiceUnderTest svc(tcp_unix_udp_config(unix_path), signal_while_starting(self, SIGTERM, in_window));
    self = &svc;
    const bool started = svc.start();
    if (!in_window && attempt < 5) continue;
    ASSERT_TRUE(in_window) << "the process was ready before it could be stopped, 5 times";
    EXPECT_FALSE(started) << "reported ready after SIGTERM";
    EXPECT_EQ(svc.wait_exit(5000ms), std::optional<int>(0));
    EXPECT_TRUE(svc.notify().wait_line("STOPPING=1", 0, 0ms)) << svc.notify().dump();
    EXPECT_FALSE(svc.notify().wait_line("READY=1", 0, 0ms)) << svc.notify().dump();
    EXPECT_FALSE(exists(unix_path)) << "socket file left behind";
    return;
  }
}

// pid_file names the current main process: written at READY, rewritten by each
// successor, left alone by the old process on its way out, removed by the last.
TEST(PidFile, FollowsTheMainProcessAcrossAHotRestartAndGoesWithTheLast) {
  TempDir run_dir;
  const std::string pid_file = run_dir.file("echorelayd.pid");
  auto pid_in_file = [&] {
    std::string text = read_file(pid_file);
    while (!text.empty() && text.back() == '\n') text.pop_back();
    return text;
  };
  std::string toml = failure_config(true);
  const std::string daemon_table = "[daemon]\n";
  toml.replace(toml.find(daemon_table), daemon_table.size(), daemon_table + "pid_file = \"" + pid_file + "\"\n");
  ServiceUnderTest svc(toml);
  ASSERT_TRUE(svc.start());
  const pid_t first = svc.main_pid();
  EXPECT_EQ(pid_in_file(), std::to_string(first));
  auto r = svc.hot_restart(10000ms);
  ASSERT_TRUE(r.ok) << r.status;
  EXPECT_EQ(pid_in_file(), std::to_string(r.pid));
  EXPECT_EQ(svc.wait_exit(6000ms), std::optional<int>(0));
  EXPECT_EQ(pid_in_file(), std::to_string(r.pid)) << "the old process removed or rewrote its successor's pid file";
  ASSERT_TRUE(svc.signal(SIGTERM));
  EXPECT_TRUE(svc.wait_main_exit(6000ms).gone);
  EXPECT_FALSE(exists(pid_file)) << "the last main process leaves its pid file behind";
}

}  // namespace
}  // namespace echorelay::test
