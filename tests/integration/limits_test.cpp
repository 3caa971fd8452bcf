// Connection limits: a listener's max_connections and the daemon-wide [daemon]
// max_connections close connections beyond the limit at once and count them
// (refused_total{reason="max_connections"}); a freed slot is reused.
#include <poll.h>
#include <unistd.h>

#include <filesystem>
#include <sstream>

#include "harness.hpp"

namespace echorelay::test {
namespace {

TEST(Limits, ListenerMaxConnectionsClosesTheExtraConnectionAndCountsIt) {
  Daemon daemon(R"(
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "echo"
protocol = "tcp"
address = "127.0.0.2:0"
handler = "echo"
max_connections = 2
)");
  ASSERT_TRUE(daemon.start());
  const std::string addr = daemon.address("echo");
  Fd first = connect_to(addr);
  Fd second = connect_to(addr);
  ASSERT_TRUE(first && second);
  // A served echo proves each is accepted and counted, not merely in the backlog.
  ASSERT_TRUE(echo_line(first.get(), "one\n"));
  ASSERT_TRUE(echo_line(second.get(), "two\n"));

  Fd third = connect_to(addr);
  ASSERT_TRUE(third);
  (void)send_all(third.get(), "three\n");  // may already fail with a reset
  std::string received;
  EXPECT_TRUE(expect_closed(third.get(), kIoTimeout, &received));
  EXPECT_EQ(received, "");
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_refused_total",
                          {{"listener", "echo"}, {"reason", "max_connections"}}, 1));
  EXPECT_TRUE(echo_line(first.get(), "still one\n"));
  EXPECT_TRUE(echo_line(second.get(), "still two\n"));

  // Free a slot; once the daemon has seen it go, a new connection is served.
  first.reset();
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_connections_active", {{"listener", "echo"}}, 1));
  Fd fourth = connect_to(addr);
  ASSERT_TRUE(fourth);
  EXPECT_TRUE(echo_line(fourth.get(), "four\n"));
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_refused_total",
                          {{"listener", "echo"}, {"reason", "max_connections"}}, 1));
}

TEST(Limits, DaemonMaxConnectionsCountsAllListeners) {
  Daemon daemon(R"(
[daemon]
max_connections = 3

[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "a"
protocol = "tcp"
address = "127.0.0.2:0"
handler = "echo"

[[listener]]
name = "b"
protocol = "tcp"
address = "127.0.0.3:0"
handler = "echo"
)");
  ASSERT_TRUE(daemon.start());
  Fd a1 = connect_to(daemon.address("a"));
  Fd a2 = connect_to(daemon.address("a"));
  Fd b1 = connect_to(daemon.address("b"));
  ASSERT_TRUE(a1 && a2 && b1);
  ASSERT_TRUE(echo_line(a1.get(), "a1\n"));
  ASSERT_TRUE(echo_line(a2.get(), "a2\n"));
  ASSERT_TRUE(echo_line(b1.get(), "b1\n"));

  Fd b2 = connect_to(daemon.address("b"));
  ASSERT_TRUE(b2);
  (void)send_all(b2.get(), "b2\n");
  std::string received;
  EXPECT_TRUE(expect_closed(b2.get(), kIoTimeout, &received));
  EXPECT_EQ(received, "");
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_refused_total",
                          {{"listener", "b"}, {"reason", "max_connections"}}, 1));

  a1.reset();
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_connections_active", {{"listener", "a"}}, 1));
  Fd b3 = connect_to(daemon.address("b"));
  ASSERT_TRUE(b3);
  EXPECT_TRUE(echo_line(b3.get(), "b3\n"));
}

}  // namespace
}  // namespace echorelay::test

namespace echorelay::test {
namespace {

TEST(Limits, AcceptBacksOffWithoutSpinningWhenOutOfFdsAndServesTheBacklogAfterwards) {
  Daemon daemon(R"(
[daemon]
workers = 1

[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "echo"
protocol = "tcp"
address = "127.0.0.2:0"
)");
  ASSERT_TRUE(daemon.start());
  const std::string addr = daemon.address("echo");
  // The counter exists (at 0) before the limit goes down.
  ASSERT_TRUE(fetch_metric(daemon.admin(), "echorelay_accept_errors_total", {{"listener", "echo"}}));
  // Lower only the soft limit, leaving room for two more connections; the hard limit
  // stays, so the limit can be restored below as an operator would.
  const std::string pid = std::to_string(daemon.pid());
  const std::size_t limit = open_fds(daemon.pid()) + 2;
  const auto lowered = run_process({"/usr/bin/prlimit", "--pid", pid, "--nofile=" + std::to_string(limit) + ":"});
  ASSERT_EQ(lowered.exit_code, 0) << lowered.output;

  // Open connections until one is no longer answered: its handshake completed into
  // the backlog, but accept() fails with EMFILE.
  std::vector<Fd> served;
  Fd waiting;
  for (int i = 0; i < 16 && !waiting; ++i) {
    Fd c = connect_to(addr);
    ASSERT_TRUE(c);
    ASSERT_TRUE(send_all(c.get(), "waiting\n"));
    pollfd p{c.get(), POLLIN, 0};
    if (::poll(&p, 1, 1500) == 1) {
      ASSERT_EQ(recv_exact(c.get(), 8), "waiting\n");
      served.push_back(std::move(c));
    } else {
      waiting = std::move(c);
    }
  }
  ASSERT_TRUE(waiting) << "the daemon never ran out of fds";

  ASSERT_TRUE(wait_until([&] { return daemon.log().find("Too many open files") != std::string::npos; }))
      << daemon.log();
  // Backing off (5 ms doubling to 1 s) costs next to nothing; a spinning accept loop
  // would burn a whole core over this window.
  const long before = cpu_ticks(daemon.pid());
  const auto window = std::chrono::milliseconds(1500);
  const auto start = std::chrono::steady_clock::now();
  wait_until([&] { return std::chrono::steady_clock::now() - start >= window; }, window * 2);
  const long used = cpu_ticks(daemon.pid()) - before;
  EXPECT_LT(used, sysconf(_SC_CLK_TCK) / 4) << "ticks used while out of fds: " << used;
  EXPECT_TRUE(is_open_and_quiet(waiting.get()));

  // Free the fds: the queued connection is accepted at the next retry and answered.
  served.clear();
  EXPECT_EQ(recv_exact(waiting.get(), 8, Millis(5000)), "waiting\n");
  const auto restored = run_process({"/usr/bin/prlimit", "--pid", pid, "--nofile=1024:"});
  ASSERT_EQ(restored.exit_code, 0) << restored.output;
  const auto errors = fetch_metric(daemon.admin(), "echorelay_accept_errors_total", {{"listener", "echo"}});
  ASSERT_TRUE(errors);
  EXPECT_GE(*errors, 1);
}

}  // namespace
}  // namespace echorelay::test
