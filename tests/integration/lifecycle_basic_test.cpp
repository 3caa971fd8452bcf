// Basic lifecycle over the systemd notify protocol: READY=1 only after the listeners
// are open, SIGTERM and SIGINT drain and exit 0 with STOPPING=1, listeners stop
// accepting and Unix socket files go away. Hot restart (SIGHUP) is tested elsewhere.
#include <signal.h>
#include <sys/stat.h>

#include "harness.hpp"

namespace echorelay::test {
namespace {

std::string config_with_unix(const std::string& path) {
  return R"(
[daemon]
drain_timeout = "2s"

[[listener]]
name = "tcp"
protocol = "tcp"
address = "127.0.0.2:0"
handler = "echo"

[[listener]]
name = "udp"
protocol = "udp"
address = "127.0.0.2:0"
handler = "echo"

[[listener]]
name = "unix"
protocol = "unix"
address = ")" + path + R"("
handler = "echo"
)";
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

void expect_clean_stop(int signo) {
  TempDir dir;
  std::string path = dir.file("life.sock");
  Daemon daemon(config_with_unix(path));
  ASSERT_TRUE(daemon.start());

  // READY=1 promises every listener is open: no retry needed here.
  Fd tcp = connect_to(daemon.address("tcp"));
  ASSERT_TRUE(tcp);
  EXPECT_TRUE(echo_line(tcp.get(), "before stop\n"));
  Fd unix_client = connect_to(path);
  ASSERT_TRUE(unix_client);
  EXPECT_TRUE(echo_line(unix_client.get(), "unix before stop\n"));
  Fd udp = udp_connect(daemon.address("udp"));
  ASSERT_TRUE(udp_send(udp.get(), "udp"));
  EXPECT_EQ(udp_recv(udp.get()), std::optional<std::string>("udp"));
  EXPECT_FALSE(daemon.saw_notify("STOPPING=1"));

  ASSERT_TRUE(daemon.signal(signo));
  EXPECT_TRUE(daemon.wait_notify("STOPPING=1"));
  // Idle connections are closed at their request boundary.
  EXPECT_TRUE(expect_closed(tcp.get()));
  EXPECT_TRUE(expect_closed(unix_client.get()));
  EXPECT_EQ(daemon.wait_exit(), 0);
  EXPECT_FALSE(exists(path)) << "socket file left behind";

  int err = 0;
  EXPECT_FALSE(try_connect(daemon.address("tcp"), &err, 1000ms)) << "port still accepting after exit";
}

TEST(LifecycleBasic, ReadyIsSentWithStatusAfterListenersAreBound) {
  TempDir dir;
  Daemon daemon(config_with_unix(dir.file("ready.sock")));
  ASSERT_TRUE(daemon.start());
  bool has_status = false;
  for (const auto& m : daemon.notifications())
    if (m.find("STATUS=") != std::string::npos) has_status = true;
  EXPECT_TRUE(has_status);
  EXPECT_EQ(daemon.addresses().size(), 3u);
  EXPECT_EQ(daemon.protocol("tcp"), "tcp");
  EXPECT_EQ(daemon.protocol("udp"), "udp");
  EXPECT_EQ(daemon.protocol("unix"), "unix");
}

TEST(LifecycleBasic, SigtermStopsCleanlyAndExitsZero) { expect_clean_stop(SIGTERM); }

TEST(LifecycleBasic, SigintStopsCleanlyAndExitsZero) { expect_clean_stop(SIGINT); }

TEST(LifecycleBasic, SigtermLetsARequestInProgressFinish) {
  TempDir dir;
  Daemon daemon(config_with_unix(dir.file("drain.sock")));
  ASSERT_TRUE(daemon.start());
  Fd c = connect_to(daemon.address("tcp"));
  ASSERT_TRUE(c);
  ASSERT_TRUE(echo_line(c.get(), "warm up\n"));
  // Half a request is in flight when the signal arrives; the rest still gets its echo.
  ASSERT_TRUE(send_all(c.get(), "half a "));
  ASSERT_TRUE(daemon.signal(SIGTERM));
  ASSERT_TRUE(daemon.wait_notify("STOPPING=1"));
  ASSERT_TRUE(send_all(c.get(), "request\n"));
  EXPECT_EQ(recv_exact(c.get(), 15), "half a request\n");
  EXPECT_TRUE(expect_closed(c.get()));
  EXPECT_EQ(daemon.wait_exit(), 0);
}

}  // namespace
}  // namespace echorelay::test
