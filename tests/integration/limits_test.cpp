// Connection limits: a listener's max_connections and the daemon-wide [daemon]
// max_connections close connections beyond the limit at once and count them
// (refused_total{reason="max_connections"}); a freed slot is reused.
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
