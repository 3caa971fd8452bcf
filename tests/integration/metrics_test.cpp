// The admin endpoint: /healthz and /readyz answer 200, and /metrics counters move by
// exactly the traffic the test sends (connections, requests, bytes each way, datagrams).
// Counters may be updated just after a reply is written, so each is polled to its value.
#include "harness.hpp"

namespace echorelay::test {
namespace {

const char* kConfig = R"(
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "echo"
protocol = "tcp"
address = "127.0.0.2:0"
handler = "echo"

[[listener]]
name = "udp"
protocol = "udp"
address = "127.0.0.2:0"
handler = "echo"
)";

TEST(Metrics, HealthAndReadinessAnswer200) {
  Daemon daemon(kConfig);
  ASSERT_TRUE(daemon.start());
  EXPECT_EQ(daemon.protocol("admin"), "http");
  for (const char* path : {"/healthz", "/readyz", "/metrics"}) {
    auto r = http_get(daemon.admin(), path);
    ASSERT_TRUE(r.has_value()) << path;
    EXPECT_EQ(r->status, 200) << path;
  }
  auto missing = http_get(daemon.admin(), "/no-such-page");
  ASSERT_TRUE(missing.has_value());
  EXPECT_EQ(missing->status, 404);
}

TEST(Metrics, TcpCountersMatchTrafficExactly) {
  Daemon daemon(kConfig);
  ASSERT_TRUE(daemon.start());
  const std::string admin = daemon.admin();
  const Labels echo{{"listener", "echo"}};
  // Before traffic a counter is 0 (or not yet exported).
  EXPECT_EQ(fetch_metric(admin, "echorelay_connections_accepted_total", echo).value_or(0), 0);
  EXPECT_EQ(fetch_metric(admin, "echorelay_requests_total", echo).value_or(0), 0);

  std::size_t bytes = 0;
  {
    Fd c = connect_to(daemon.address("echo"));
    ASSERT_TRUE(c);
    for (std::string line : {"a\n", "bc\n", "hello world\n"}) {
      ASSERT_TRUE(echo_line(c.get(), line));
      bytes += line.size();
    }
    EXPECT_TRUE(wait_metric(admin, "echorelay_connections_active", echo, 1));
    EXPECT_TRUE(wait_metric(admin, "echorelay_requests_total", echo, 3));
    EXPECT_TRUE(wait_metric(admin, "echorelay_bytes_received_total", echo, static_cast<double>(bytes)));
    EXPECT_TRUE(wait_metric(admin, "echorelay_bytes_sent_total", echo, static_cast<double>(bytes)));
    EXPECT_TRUE(wait_metric(admin, "echorelay_connections_accepted_total", echo, 1));
  }
  EXPECT_TRUE(wait_metric(admin, "echorelay_connections_active", echo, 0));

  Fd c2 = connect_to(daemon.address("echo"));
  ASSERT_TRUE(c2);
  std::string pipelined = "x\ny\nz\n";
  ASSERT_TRUE(send_all(c2.get(), pipelined));
  ASSERT_EQ(recv_exact(c2.get(), pipelined.size()), pipelined);
  bytes += pipelined.size();
  EXPECT_TRUE(wait_metric(admin, "echorelay_connections_accepted_total", echo, 2));
  EXPECT_TRUE(wait_metric(admin, "echorelay_requests_total", echo, 6));
  EXPECT_TRUE(wait_metric(admin, "echorelay_bytes_received_total", echo, static_cast<double>(bytes)));
  EXPECT_TRUE(wait_metric(admin, "echorelay_bytes_sent_total", echo, static_cast<double>(bytes)));
}

TEST(Metrics, UdpDatagramCounterMatchesTraffic) {
  Daemon daemon(kConfig);
  ASSERT_TRUE(daemon.start());
  Fd s = udp_connect(daemon.address("udp"));
  ASSERT_TRUE(s);
  std::size_t bytes = 0;
  for (int i = 0; i < 10; ++i) {
    std::string payload = "datagram " + std::to_string(i);
    ASSERT_TRUE(udp_send(s.get(), payload));
    ASSERT_EQ(udp_recv(s.get()), std::optional<std::string>(payload));
    bytes += payload.size();
  }
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_datagrams_received_total", {{"listener", "udp"}}, 10));
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_bytes_received_total", {{"listener", "udp"}},
                          static_cast<double>(bytes)));
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_bytes_sent_total", {{"listener", "udp"}},
                          static_cast<double>(bytes)));
}

TEST(Metrics, ExpositionHasHelpAndTypeLines) {
  Daemon daemon(kConfig);
  ASSERT_TRUE(daemon.start());
  auto r = http_get(daemon.admin(), "/metrics");
  ASSERT_TRUE(r.has_value());
  EXPECT_NE(r->body.find("# TYPE echorelay_requests_total counter"), std::string::npos) << r->body;
  EXPECT_NE(r->body.find("# TYPE echorelay_connections_active gauge"), std::string::npos) << r->body;
}

}  // namespace
}  // namespace echorelay::test
