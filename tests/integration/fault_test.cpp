// Fault injection against the real binary (ctest label `fault`, issue 10): slow and
// idle clients, upstream faults through the relay, lifecycle faults, UDP abuse and bad
// peers. Each test asserts what the service must still do (answer a normal client,
// keep RSS and fd counts bounded, count what it refused) and prints its figures.
// Counts are kept modest for a 2-core machine (3,000 one-byte + 300 long-line stalled
// clients; a tenth of that in ASan/TSan builds, ECHORELAY_SANITIZED); set
// ECHORELAY_FAULT_SCALE=N (N > 1) to multiply them (the fd limit of 20,000 bounds it).
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <thread>

#include "harness.hpp"
#include "lifecycle_support.hpp"
#include "relay_support.hpp"

namespace echorelay::test {
namespace {

int scale() {
  const char* s = std::getenv("ECHORELAY_FAULT_SCALE");
  const int n = s ? std::atoi(s) : 1;
  return n > 0 ? n : 1;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

// ---- slow and idle clients

// N connections that send one byte and stall, M that send max_frame - 1 bytes of a line
// without its newline: a normal client keeps being answered, RSS stays bounded, and
// every stalled connection is cut by its deadline and counted.
// ECHORELAY_FAULT_STALLED="10000,2000" sets the two counts (issue 10's figures, run by
// hand: the test's own fds count against its limit too).
TEST(FaultSlowClients, StalledConnectionsAreCutByTheirDeadlineWhileANormalClientIsAnswered) {
#ifdef ECHORELAY_SANITIZED
  int kOneByte = 300 * scale();
  int kLongLine = 30 * scale();
#else
  int kOneByte = 3000 * scale();
  int kLongLine = 300 * scale();
#endif
  if (const char* counts = std::getenv("ECHORELAY_FAULT_STALLED")) {
    ASSERT_EQ(std::sscanf(counts, "%d,%d", &kOneByte, &kLongLine), 2) << "ECHORELAY_FAULT_STALLED=ONE_BYTE,LONG_LINE";
  }
  constexpr std::size_t kMaxFrame = 16 * 1024;
  constexpr std::uint64_t kRssBoundKib = 256 * 1024;
  Daemon daemon(R"([daemon]
workers = 2
[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "echo"
protocol = "tcp"
address = "127.0.0.1:0"
max_frame = "16KiB"
read_timeout = "3s"
request_timeout = "3s"
# above the default share of the fd limit (half of it), for the 12,000-client run
max_connections = 15000
)");
  ASSERT_TRUE(daemon.start()) << daemon.log();
  const std::string address = daemon.address("echo");
  const std::size_t fd_baseline = open_fds(daemon.pid());
  const std::uint64_t rss_baseline = vm_rss_kib(daemon.pid());

  std::atomic<bool> stop{false};
  std::vector<double> latencies_ms;
  std::atomic<int> normal_failures{0};
  std::thread normal([&] {
    Fd c = connect_to(address);
    int i = 0;
    while (!stop.load()) {
      const auto t0 = Clock::now();
      if (!echo_line(c.get(), "normal " + std::to_string(i++) + "\n", 5000ms)) {
        ++normal_failures;
        c = connect_to(address);
      } else {
        latencies_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      }
      std::this_thread::sleep_for(20ms);  // pacing: a line every 20 ms
    }
  });

  std::vector<Fd> stalled;
  stalled.reserve(static_cast<std::size_t>(kOneByte + kLongLine));
  const std::string long_line(kMaxFrame - 1, 'x');
  const auto opened_at = Clock::now();
  int connect_failures = 0;
  for (int i = 0; i < kOneByte + kLongLine; ++i) {
    Fd s = start_connect(address);
    if (!s || !writable(s.get(), 5000ms)) {
      ++connect_failures;
      continue;
    }
    if (i < kOneByte) {
      (void)::send(s.get(), "x", 1, MSG_NOSIGNAL);
    } else {
      (void)::send(s.get(), long_line.data(), long_line.size(), MSG_NOSIGNAL);
    }
    stalled.push_back(std::move(s));
  }
  const double open_seconds = std::chrono::duration<double>(Clock::now() - opened_at).count();
  const std::uint64_t rss_loaded = vm_rss_kib(daemon.pid());

  // Every stalled connection is closed by the daemon within its deadline (3 s) plus slack.
  std::size_t closed = 0;
  std::vector<bool> seen(stalled.size(), false);
  wait_until(
      [&] {
        for (std::size_t i = 0; i < stalled.size(); ++i) {
          if (!seen[i] && peer_closed(stalled[i].get())) {
            seen[i] = true;
            ++closed;
          }
        }
        return closed == stalled.size();
      },
      20s, 100ms);
  stop = true;
  normal.join();
  const double refused =
      metric_or(daemon.admin(), "echorelay_refused_total", {{"listener", "echo"}, {"reason", "read_timeout"}}) +
      metric_or(daemon.admin(), "echorelay_refused_total", {{"listener", "echo"}, {"reason", "request_timeout"}});
  std::printf("[ figures  ] %d one-byte + %d long-line stalled clients opened in %.1f s (%d failed); "
              "normal client: %zu requests, p50 %.2f ms, p99 %.2f ms, max %.2f ms; RSS %llu KiB -> %llu KiB; "
              "%zu cut by deadline, refused(read/request timeout) = %.0f\n",
              kOneByte, kLongLine, open_seconds, connect_failures, latencies_ms.size(), percentile(latencies_ms, 0.5),
              percentile(latencies_ms, 0.99), percentile(latencies_ms, 1.0),
              static_cast<unsigned long long>(rss_baseline), static_cast<unsigned long long>(rss_loaded), closed,
              refused);
  EXPECT_EQ(connect_failures, 0);
  EXPECT_EQ(normal_failures.load(), 0);
  EXPECT_GT(latencies_ms.size(), 10U);
  EXPECT_LT(percentile(latencies_ms, 0.99), 1000.0);
  EXPECT_LT(rss_loaded, rss_baseline + kRssBoundKib) << "RSS bound " << kRssBoundKib << " KiB over the baseline";
  EXPECT_EQ(closed, stalled.size()) << "stalled connections still open after their deadline";
  EXPECT_GE(refused, static_cast<double>(stalled.size()));
  stalled.clear();
  EXPECT_TRUE(wait_until([&] { return open_fds(daemon.pid()) <= fd_baseline + 2; }, 10000ms))
      << open_fds(daemon.pid()) << " fds, baseline " << fd_baseline;
}

// ---- upstream faults through the relay

// An upstream that accepts (in the kernel) and never reads: the client sees
// back-pressure, the daemon's memory stays bounded.
TEST(FaultUpstream, UpstreamThatNeverReadsGivesBackPressureNotMemory) {
  // Listening, never accepting: the kernel completes the handshake and buffers a
  // receive window's worth, then nothing more moves.
  Fd never(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  socklen_t len = 0;
  sockaddr_storage addr = parse_inet("127.0.0.1:0", &len);
  ASSERT_EQ(::bind(never.get(), reinterpret_cast<sockaddr*>(&addr), len), 0);
  ASSERT_EQ(::listen(never.get(), 16), 0);
  const std::string upstream = "127.0.0.1:" + std::to_string(local_port(never.get()));
  constexpr std::uint64_t kRssBoundKib = 64 * 1024;
  for (const bool splice : {true, false}) {
    SCOPED_TRACE(splice ? "splice" : "copy");
    Daemon daemon(R"([daemon]
workers = 1
[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "relay"
protocol = "tcp"
address = "127.0.0.1:0"
handler = "relay"
upstreams = [")" + upstream + R"("]
splice = )" + (splice ? std::string("true") : std::string("false")) + R"(
)");
    ASSERT_TRUE(daemon.start()) << daemon.log();
    const std::uint64_t rss_baseline = vm_rss_kib(daemon.pid());
    Fd c = start_connect(daemon.address("relay"));
    ASSERT_TRUE(writable(c.get(), 5000ms));
    const std::string chunk(64 * 1024, 'b');
    std::uint64_t sent = 0;
    const auto until = Clock::now() + 3s;
    while (Clock::now() < until && sent < (256ULL << 20)) {
      const ssize_t n = ::send(c.get(), chunk.data(), chunk.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        sent += static_cast<std::uint64_t>(n);
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        writable(c.get(), 100ms);
      } else {
        break;
      }
    }
    const std::uint64_t rss = vm_rss_kib(daemon.pid());
    std::printf("[ figures  ] %s: client pushed %llu KiB before back-pressure held it; daemon RSS %llu -> %llu KiB\n",
                splice ? "splice" : "copy", static_cast<unsigned long long>(sent >> 10),
                static_cast<unsigned long long>(rss_baseline), static_cast<unsigned long long>(rss));
    EXPECT_LT(sent, 64ULL << 20) << "no back-pressure: the relay kept reading";
    EXPECT_LT(rss, rss_baseline + kRssBoundKib);
  }
}

// An upstream that echoes a little, then resets: the client is reset or closed, the
// reset is counted, and the daemon's fds return to their baseline.
TEST(FaultUpstream, UpstreamResetMidStreamClosesTheClientAndIsCounted) {
  Fd lsock(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  socklen_t len = 0;
  sockaddr_storage addr = parse_inet("127.0.0.1:0", &len);
  ASSERT_EQ(::bind(lsock.get(), reinterpret_cast<sockaddr*>(&addr), len), 0);
  ASSERT_EQ(::listen(lsock.get(), 64), 0);
  const std::string upstream = "127.0.0.1:" + std::to_string(local_port(lsock.get()));
  constexpr int kClients = 20;
  std::thread server([&] {
    for (int i = 0; i < kClients; ++i) {
      pollfd p{lsock.get(), POLLIN, 0};
      if (::poll(&p, 1, 10000) != 1) return;
      Fd s(::accept4(lsock.get(), nullptr, nullptr, SOCK_CLOEXEC));
      char buf[64];
      const ssize_t n = ::recv(s.get(), buf, sizeof buf, 0);  // part of the first line
      if (n > 0) (void)::send(s.get(), buf, static_cast<std::size_t>(n), MSG_NOSIGNAL);
      linger lg{1, 0};
      ::setsockopt(s.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
      std::this_thread::sleep_for(20ms);  // pacing: the resets come 20 ms apart
    }
  });
  Daemon daemon(R"([daemon]
workers = 2
[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "relay"
protocol = "tcp"
address = "127.0.0.1:0"
handler = "relay"
upstreams = [")" + upstream + R"("]
)");
  ASSERT_TRUE(daemon.start()) << daemon.log();
  const std::size_t fd_baseline = open_fds(daemon.pid());
  int closed = 0;
  for (int i = 0; i < kClients; ++i) {
    Fd c = connect_to(daemon.address("relay"));
    ASSERT_TRUE(c.valid());
    ASSERT_TRUE(send_all(c.get(), "first part of a longer stream\n"));
    std::string got;
    if (expect_closed(c.get(), 5000ms, &got)) ++closed;
  }
  server.join();
  EXPECT_EQ(closed, kClients);
  EXPECT_TRUE(wait_until([&] {
    return metric_or(daemon.admin(), "echorelay_upstream_errors_total", {{"listener", "relay"}, {"reason", "reset"}}) >=
           kClients;
  })) << "upstream resets counted: "
      << metric_or(daemon.admin(), "echorelay_upstream_errors_total", {{"listener", "relay"}, {"reason", "reset"}});
  // Up to two pooled splice pipes (two fds each) may stay for the next relays.
  EXPECT_TRUE(wait_until([&] { return open_fds(daemon.pid()) <= fd_baseline + 4; }))
      << open_fds(daemon.pid()) << " fds, baseline " << fd_baseline;
  EXPECT_EQ(metric_or(daemon.admin(), "echorelay_connections_active", {{"listener", "relay"}}), 0);
}

// ---- UDP abuse

// A flood from one source is answered at most at rate_limit (burst of one second's
// worth) while a second source is answered normally.
TEST(FaultUdp, FloodFromOneSourceIsHeldToRateLimitWhileAnotherSourceIsAnswered) {
  constexpr int kRate = 200;
  Daemon daemon(R"([daemon]
workers = 1
[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "u"
protocol = "udp"
address = "0.0.0.0:0"
rate_limit = 200
recv_buffer = "4MiB"
)");
  ASSERT_TRUE(daemon.start()) << daemon.log();
  const std::string to = "127.0.0.1:" + std::to_string(daemon.port("u"));
  Fd flood = udp_connect(to, "127.0.0.1:0");
  int big = 8 << 20;  // hold every answer until it is counted
  ::setsockopt(flood.get(), SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
  Fd calm = udp_connect(to, "127.0.0.2:0");
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> flooded{0};
  const auto started = Clock::now();
  std::thread flooder([&] {
    while (!stop.load()) {
      for (int i = 0; i < 64; ++i) {
        if (::send(flood.get(), "flood", 5, MSG_DONTWAIT) == 5) ++flooded;
      }
      std::this_thread::sleep_for(1ms);  // pacing: bursts of 64
    }
  });
  int calm_answered = 0;
  for (int i = 0; i < 40; ++i) {
    const std::string d = "calm " + std::to_string(i);
    ASSERT_TRUE(udp_send(calm.get(), d));
    if (udp_recv(calm.get(), 2000ms) == std::optional<std::string>(d)) ++calm_answered;
    std::this_thread::sleep_for(25ms);  // pacing: the calm client's rate
  }
  stop = true;
  flooder.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  std::uint64_t answered = 0;
  while (udp_recv(flood.get(), 300ms)) ++answered;
  const double allowed = kRate + kRate * seconds;
  std::printf("[ figures  ] flood: %llu datagrams in %.2f s, %llu answered (limit allows %.0f); second source: %d/40\n",
              static_cast<unsigned long long>(flooded.load()), seconds, static_cast<unsigned long long>(answered),
              allowed, calm_answered);
  EXPECT_GT(flooded.load(), 4 * static_cast<std::uint64_t>(allowed)) << "the flood was not a flood";
  EXPECT_LE(static_cast<double>(answered), allowed * 1.1 + 10);
  EXPECT_GE(answered, static_cast<std::uint64_t>(kRate / 2));
  EXPECT_EQ(calm_answered, 40);
  const double refused =
      metric_or(daemon.admin(), "echorelay_refused_total", {{"listener", "u"}, {"reason", "rate_limited"}});
  EXPECT_GE(refused, 1);
  EXPECT_LE(refused + static_cast<double>(answered), static_cast<double>(flooded.load()));
}

// A datagram longer than max_datagram is dropped and counted, never answered cut short;
// the largest IPv4 UDP payload (65507 bytes) is answered whole under the default.
TEST(FaultUdp, OversizedDatagramIsDroppedAndCountedAndTheLargestIsAnsweredWhole) {
  Daemon daemon(R"([daemon]
workers = 1
[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "small"
protocol = "udp"
address = "127.0.0.1:0"
max_datagram = 1000
[[listener]]
name = "big"
protocol = "udp"
address = "127.0.0.1:0"
)");
  ASSERT_TRUE(daemon.start()) << daemon.log();
  Fd s = udp_connect(daemon.address("small"));
  ASSERT_TRUE(udp_send(s.get(), std::string(1500, 's')));
  EXPECT_EQ(udp_recv(s.get(), 1000ms), std::nullopt) << "a truncated echo came back";
  EXPECT_TRUE(wait_until([&] {
    return metric_or(daemon.admin(), "echorelay_datagrams_dropped_total", {{"listener", "small"}, {"reason", "truncated"}}) == 1;
  }));
  ASSERT_TRUE(udp_send(s.get(), std::string(1000, 'k')));
  EXPECT_EQ(udp_recv(s.get()), std::optional<std::string>(std::string(1000, 'k')));

  Fd b = udp_connect(daemon.address("big"));
  int size = 1 << 20;
  ::setsockopt(b.get(), SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  const std::string largest = random_bytes(65507);
  ASSERT_TRUE(udp_send(b.get(), largest));
  const auto echoed = udp_recv(b.get());
  ASSERT_TRUE(echoed.has_value());
  EXPECT_EQ(echoed->size(), largest.size());
  EXPECT_TRUE(*echoed == largest);
}

// ---- bad peers on the wire

TEST(FaultPeers, ResetMidFrameAndAClientThatStopsReadingButKeepsWriting) {
  Daemon daemon(R"([daemon]
workers = 1
[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "echo"
protocol = "tcp"
address = "127.0.0.1:0"
write_timeout = "1s"
[[listener]]
name = "lp"
protocol = "tcp"
address = "127.0.0.1:0"
framing = "length-prefixed"
)");
  ASSERT_TRUE(daemon.start()) << daemon.log();
  const std::size_t fd_baseline = open_fds(daemon.pid());
  // RST in the middle of a frame, on both framings.
  for (const char* name : {"echo", "lp"}) {
    for (int i = 0; i < 20; ++i) {
      Fd c = connect_to(daemon.address(name));
      ASSERT_TRUE(c.valid());
      const std::string half = std::string(name) == "lp" ? be32(100) + "only part" : "half a line";
      ASSERT_TRUE(send_all(c.get(), half));
      linger lg{1, 0};
      ::setsockopt(c.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
  }
  EXPECT_TRUE(wait_until([&] {
    return metric_or(daemon.admin(), "echorelay_connections_active", {{"listener", "echo"}}) == 0 &&
           metric_or(daemon.admin(), "echorelay_connections_active", {{"listener", "lp"}}) == 0;
  })) << daemon.log();

  // Shut its read side, keep writing lines: the echoes pile up in its receive buffer
  // until the daemon cannot send, stops reading (back-pressure) and cuts it at
  // write_timeout. Meanwhile another client is served.
  Fd rude = connect_to(daemon.address("echo"));
  ASSERT_TRUE(rude.valid());
  int small = 4096;
  ::setsockopt(rude.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  ASSERT_EQ(::shutdown(rude.get(), SHUT_RD), 0);
  const std::string line = std::string(1023, 'r') + "\n";
  std::uint64_t written = 0;
  bool cut = false;
  const auto until = Clock::now() + 15s;
  while (Clock::now() < until) {
    const ssize_t n = ::send(rude.get(), line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      written += static_cast<std::uint64_t>(n);
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
      cut = true;  // EPIPE / ECONNRESET: the daemon closed it
      break;
    }
    if (metric_or(daemon.admin(), "echorelay_refused_total", {{"listener", "echo"}, {"reason", "write_timeout"}}) >= 1) {
      cut = true;
      break;
    }
    (void)writable(rude.get(), 50ms);  // room again, or the cut (or another look at the metric)
  }
  Fd polite = connect_to(daemon.address("echo"));
  EXPECT_TRUE(echo_line(polite.get(), "served meanwhile\n"));
  std::printf("[ figures  ] client with its read side shut wrote %llu KiB before the daemon cut it\n",
              static_cast<unsigned long long>(written >> 10));
  EXPECT_TRUE(cut) << "the rude client was never cut";
  EXPECT_LT(written, 64ULL << 20);
  EXPECT_TRUE(wait_until([&] {
    return metric_or(daemon.admin(), "echorelay_refused_total", {{"listener", "echo"}, {"reason", "write_timeout"}}) >= 1;
  })) << daemon.log();
  rude.reset();
  polite.reset();
  EXPECT_TRUE(wait_until([&] { return open_fds(daemon.pid()) <= fd_baseline; }))
      << open_fds(daemon.pid()) << " fds, baseline " << fd_baseline;
}

// ---- lifecycle faults

// 50 SIGHUPs in 5 s to whichever process is main: the service never stops answering,
// the pid file names the final main process, fd and process counts return to baseline.
TEST(FaultLifecycle, SighupStormNeverStopsTheServiceAndLeavesNothingBehind) {
  TempDir run_dir;
  const std::string pid_file = run_dir.file("echorelayd.pid");
  ServiceUnderTest svc(
      config_toml("workers = 1\ndrain_timeout = \"2s\"\nrestart_timeout = \"5s\"\npid_file = \"" + pid_file + "\"",
                  {{"tcp", "tcp"}}, /*admin=*/false));
  ASSERT_TRUE(svc.start());
  const std::size_t fd_baseline = open_fds(svc.main_pid());
  Load load;
  load.churn(svc.address("tcp"), 2, 5ms);
  load.persistent(svc.address("tcp"), 2, 5ms);
  // Follow MAINPID from the notify socket, as systemd would send `systemctl reload` to it.
  auto current_main = [&] {
    pid_t pid = svc.main_pid();
    for (const Notice& n : svc.notify().snapshot())
      if (auto v = n.value("MAINPID")) pid = static_cast<pid_t>(std::stol(*v));
    return pid;
  };
  std::set<pid_t> signalled;
  std::size_t before_last = 0;
  for (int i = 0; i < 50; ++i) {
    const pid_t target = current_main();
    signalled.insert(target);
    before_last = svc.notify().size();
    ::kill(target, SIGHUP);
    std::this_thread::sleep_for(100ms);  // the storm: a SIGHUP every 100 ms
  }
  // Let the restart the last SIGHUP started or joined finish: its READY=1 (a new main's,
  // or "reload failed"); restart_timeout (5 s) bounds the wait.
  (void)svc.notify().wait_line("READY=1", before_last, 5000ms);
  load.stop();
  std::printf("[ figures  ] SIGHUP storm: 50 SIGHUPs in 5 s reached %zu main processes; load: %s\n",
              signalled.size(), load.summary().c_str());
  EXPECT_GE(signalled.size(), 3U) << "the storm restarted the service only " << signalled.size() << " times";
  // Nothing may fail outright; a request may only be slow, as when a successor starting
  // on a machine shared with other builds takes seconds: at most 1% of them time out.
  const auto& k = load.counters();
  EXPECT_EQ(k.failures() - k.timeouts.load(), 0U) << load.summary();
  EXPECT_LE(k.timeouts.load() * 100, k.requests_ok.load()) << load.summary();
  EXPECT_GT(load.counters().requests_ok.load(), 100U);
  const pid_t main_pid = current_main();
  ASSERT_NE(process_state(main_pid), 0) << "the main process is gone";
  std::string in_file = read_file(pid_file);
  while (!in_file.empty() && in_file.back() == '\n') in_file.pop_back();
  EXPECT_EQ(in_file, std::to_string(main_pid));
  // Old processes finish their drain (2 s) and exit: only the main one is left.
  EXPECT_TRUE(wait_until(
      [&] {
        for (pid_t p : signalled)
          if (p != main_pid && process_state(p) != 0 && process_state(p) != 'Z') return false;
        return true;
      },
      15000ms))
      << "an old process still runs";
  EXPECT_TRUE(children_of(main_pid).empty());
  EXPECT_TRUE(wait_until([&] { return open_fds(main_pid) <= fd_baseline + 3; }))
      << open_fds(main_pid) << " fds, baseline " << fd_baseline;
  Fd c = connect_to(svc.address("tcp"));
  EXPECT_TRUE(echo_line(c.get(), "after the storm\n"));
}

// The old process is SIGKILLed while it drains a connection: the successor serves on,
// new connections are answered, nothing of the old process remains.
TEST(FaultLifecycle, SigkillOfTheOldProcessWhileItDrainsLeavesTheSuccessorServing) {
  ServiceUnderTest svc(R"([daemon]
workers = 1
drain_timeout = "30s"
[[listener]]
name = "tcp"
protocol = "tcp"
address = "127.0.0.1:0"
)");
  ASSERT_TRUE(svc.start());
  const pid_t old = svc.main_pid();
  Fd held = connect_to(svc.address("tcp"));
  ASSERT_TRUE(echo_line(held.get(), "held by the old process\n"));
  auto restart = svc.hot_restart();
  ASSERT_TRUE(restart.ok) << svc.log();
  ASSERT_NE(svc.main_pid(), old);
  // The old process is draining `held` (30 s): kill it now.
  ASSERT_NE(process_state(old), 0);
  ASSERT_EQ(::kill(old, SIGKILL), 0);
  EXPECT_TRUE(wait_gone(old, 5000ms).gone);
  EXPECT_TRUE(expect_closed(held.get(), 5000ms));
  for (int i = 0; i < 20; ++i) {
    Fd c = connect_to(svc.address("tcp"));
    ASSERT_TRUE(c.valid());
    EXPECT_TRUE(echo_line(c.get(), "served by the successor\n"));
  }
  EXPECT_EQ(svc.main_pid(), restart.pid);
  EXPECT_NE(process_state(restart.pid), 0);
}

}  // namespace
}  // namespace echorelay::test
