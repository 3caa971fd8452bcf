// TCP echo through the real daemon: line framing on IPv4 and IPv6 (pipelining, the
// max_frame limit), length-prefixed binary frames (every byte value, empty payload, an
// absurd length), and raw echo with half-close. Each listener sits on its own loopback
// address so the config never holds two identical "host:0" addresses.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include <string>

#include "harness.hpp"

namespace echorelay::test {
namespace {

const char* kConfig = R"(
[daemon]
workers = 2
drain_timeout = "2s"

[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "line4"
protocol = "tcp"
address = "127.0.0.2:0"
handler = "echo"
framing = "line"
max_frame = "1KiB"

[[listener]]
name = "line6"
protocol = "tcp"
address = "[::1]:0"
handler = "echo"
framing = "line"

[[listener]]
name = "lp"
protocol = "tcp"
address = "127.0.0.3:0"
handler = "echo"
framing = "length-prefixed"
max_frame = "64KiB"

[[listener]]
name = "raw"
protocol = "tcp"
address = "127.0.0.4:0"
handler = "echo"
framing = "raw"
)";

std::string be32(std::uint32_t n) {
  std::string s(4, '\0');
  s[0] = static_cast<char>(n >> 24);
  s[1] = static_cast<char>(n >> 16);
  s[2] = static_cast<char>(n >> 8);
  s[3] = static_cast<char>(n);
  return s;
}

// One daemon for the whole suite: these tests only add traffic and never stop it.
class TcpEcho : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new Daemon(kConfig);
    auto started = daemon_->start();
    if (!started) {
      start_error_ = new std::string(started.message());
    }
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
    delete start_error_;
    start_error_ = nullptr;
  }
  void SetUp() override {
    if (start_error_ != nullptr) GTEST_FAIL() << "daemon did not start: " << *start_error_;
    ASSERT_TRUE(daemon_->running()) << "daemon died earlier in the suite:\n" << daemon_->log();
  }
  void TearDown() override {
    // Every test ends with the daemon still serving.
    EXPECT_TRUE(daemon_->running()) << "daemon exited during the test:\n" << daemon_->log();
  }

  static Daemon* daemon_;
  static std::string* start_error_;
};

Daemon* TcpEcho::daemon_ = nullptr;
std::string* TcpEcho::start_error_ = nullptr;

TEST_F(TcpEcho, BoundAddressesFileListsRealPorts) {
  EXPECT_EQ(daemon_->protocol("line4"), "tcp");
  EXPECT_EQ(daemon_->address("line4").rfind("127.0.0.2:", 0), 0u) << daemon_->address("line4");
  EXPECT_EQ(daemon_->address("line6").rfind("[::1]:", 0), 0u) << daemon_->address("line6");
  for (const char* name : {"line4", "line6", "lp", "raw", "admin"}) EXPECT_NE(daemon_->port(name), 0) << name;
}

TEST_F(TcpEcho, LineEchoOverIpv4) {
  Fd c = connect_to(daemon_->address("line4"));
  ASSERT_TRUE(c);
  EXPECT_TRUE(echo_line(c.get(), "hello\n"));
  EXPECT_TRUE(echo_line(c.get(), "\n"));
  EXPECT_TRUE(echo_line(c.get(), std::string(1000, 'z') + "\n"));
}

TEST_F(TcpEcho, LineEchoOverIpv6) {
  Fd c = connect_to(daemon_->address("line6"));
  ASSERT_TRUE(c);
  EXPECT_TRUE(echo_line(c.get(), "hello over v6\n"));
}

TEST_F(TcpEcho, LineEchoKeepsRequestSplitAcrossWrites) {
  Fd c = connect_to(daemon_->address("line4"));
  ASSERT_TRUE(c);
  ASSERT_TRUE(send_all(c.get(), "first half "));
  ASSERT_TRUE(send_all(c.get(), "second half\n"));
  EXPECT_EQ(recv_exact(c.get(), 23), "first half second half\n");
}

TEST_F(TcpEcho, PipelinedLinesAreAnsweredInOrder) {
  std::string all;
  for (int i = 0; i < 100; ++i) all += "line number " + std::to_string(i) + "\n";
  Fd c = connect_to(daemon_->address("line4"));
  ASSERT_TRUE(c);
  ASSERT_TRUE(send_all(c.get(), all));  // one write carrying all 100 requests
  std::string got = recv_exact(c.get(), all.size());
  EXPECT_EQ(got, all);
}

TEST_F(TcpEcho, LineLongerThanMaxFrameClosesOnlyThatConnection) {
  auto before = fetch_metric(daemon_->admin(), "echorelay_refused_total",
                             {{"listener", "line4"}, {"reason", "frame_too_large"}})
                    .value_or(0);
  Fd bystander = connect_to(daemon_->address("line4"));
  ASSERT_TRUE(bystander);
  ASSERT_TRUE(echo_line(bystander.get(), "before\n"));

  Fd c = connect_to(daemon_->address("line4"));
  ASSERT_TRUE(c);
  std::string received;
  // max_frame is 1 KiB: 2000 bytes without a newline can never become a valid request.
  ASSERT_TRUE(send_all(c.get(), std::string(2000, 'x')));
  EXPECT_TRUE(expect_closed(c.get(), kIoTimeout, &received));
  EXPECT_EQ(received, "") << "nothing of an oversized line may be echoed";

  EXPECT_TRUE(echo_line(bystander.get(), "after\n"));
  Fd fresh = connect_to(daemon_->address("line4"));
  ASSERT_TRUE(fresh);
  EXPECT_TRUE(echo_line(fresh.get(), "new client\n"));
  EXPECT_TRUE(wait_metric(daemon_->admin(), "echorelay_refused_total",
                          {{"listener", "line4"}, {"reason", "frame_too_large"}}, before + 1));
}

TEST_F(TcpEcho, LengthPrefixedEchoesEveryByteValue) {
  std::string payload;
  for (int i = 0; i < 256; ++i) payload += static_cast<char>(i);
  std::string frame = be32(static_cast<std::uint32_t>(payload.size())) + payload;
  Fd c = connect_to(daemon_->address("lp"));
  ASSERT_TRUE(c);
  ASSERT_TRUE(send_all(c.get(), frame));
  EXPECT_EQ(recv_exact(c.get(), frame.size()), frame);
}

TEST_F(TcpEcho, LengthPrefixedEchoesEmptyPayload) {
  Fd c = connect_to(daemon_->address("lp"));
  ASSERT_TRUE(c);
  std::string frames = be32(0) + be32(3) + "abc" + be32(0);
  ASSERT_TRUE(send_all(c.get(), frames));
  EXPECT_EQ(recv_exact(c.get(), frames.size()), frames);
  EXPECT_TRUE(is_open_and_quiet(c.get()));
}

TEST_F(TcpEcho, LengthPrefixedFrameAtMaxFrameIsEchoed) {
  std::string payload(64 * 1024, '\0');
  for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 7 + 3);
  std::string frame = be32(static_cast<std::uint32_t>(payload.size())) + payload;
  Fd c = connect_to(daemon_->address("lp"));
  ASSERT_TRUE(c);
  RecvAll got = exchange(c.get(), frame, false, frame.size());
  EXPECT_TRUE(got.data == frame) << "got " << got.data.size() << " of " << frame.size() << " bytes";
}

TEST_F(TcpEcho, LengthPrefixedHugeLengthClosesAndDaemonStaysUp) {
  auto labels = Labels{{"listener", "lp"}, {"reason", "frame_too_large"}};
  auto before = fetch_metric(daemon_->admin(), "echorelay_refused_total", labels).value_or(0);
  Fd c = connect_to(daemon_->address("lp"));
  ASSERT_TRUE(c);
  ASSERT_TRUE(send_all(c.get(), be32(0xFFFFFFFFu)));
  std::string received;
  EXPECT_TRUE(expect_closed(c.get(), kIoTimeout, &received));
  EXPECT_EQ(received, "");

  Fd fresh = connect_to(daemon_->address("lp"));
  ASSERT_TRUE(fresh);
  std::string frame = be32(2) + "ok";
  ASSERT_TRUE(send_all(fresh.get(), frame));
  EXPECT_EQ(recv_exact(fresh.get(), frame.size()), frame);
  EXPECT_TRUE(wait_metric(daemon_->admin(), "echorelay_refused_total", labels, before + 1));
}

TEST_F(TcpEcho, LengthPrefixedOneOverMaxFrameCloses) {
  Fd c = connect_to(daemon_->address("lp"));
  ASSERT_TRUE(c);
  ASSERT_TRUE(send_all(c.get(), be32(64 * 1024 + 1)));
  EXPECT_TRUE(expect_closed(c.get()));
}

TEST_F(TcpEcho, RawEchoesOneMebibyteThenClosesAfterHalfClose) {
  std::string data(1 << 20, '\0');
  std::uint32_t x = 2463534242u;  // xorshift: incompressible, every byte value occurs
  for (auto& ch : data) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    ch = static_cast<char>(x);
  }
  Fd c = connect_to(daemon_->address("raw"));
  ASSERT_TRUE(c);
  RecvAll got = exchange(c.get(), data, /*shut_wr=*/true, SIZE_MAX, 10000ms);
  EXPECT_EQ(got.data.size(), data.size());
  EXPECT_TRUE(got.data == data) << "echoed bytes differ";
  EXPECT_TRUE(got.eof) << "daemon must close after flushing once the client sent FIN (errno " << got.error
                       << ")";
}

TEST_F(TcpEcho, RawEchoesSmallWritesAsTheyArrive) {
  Fd c = connect_to(daemon_->address("raw"));
  ASSERT_TRUE(c);
  // No delimiter: raw echo must not wait for one.
  ASSERT_TRUE(send_all(c.get(), "abc"));
  EXPECT_EQ(recv_exact(c.get(), 3), "abc");
  ASSERT_TRUE(send_all(c.get(), std::string("\0\xff", 2)));
  EXPECT_EQ(recv_exact(c.get(), 2), std::string("\0\xff", 2));
}

// Socket options seen from outside: v6only decides whether an IPv6 wildcard listener
// also takes IPv4 connections, reuse_port whether another socket may join its port.
TEST(TcpSocketOptions, V6onlyAndReusePortTakeEffect) {
  Daemon daemon(R"(
[[listener]]
name = "v6only"
protocol = "tcp"
address = "[::]:0"
v6only = true

[[listener]]
name = "dual"
protocol = "tcp"
address = "[::]:0"
v6only = false

[[listener]]
name = "shared"
protocol = "tcp"
address = "127.0.0.3:0"
reuse_port = true

[[listener]]
name = "exclusive"
protocol = "tcp"
address = "127.0.0.4:0"
reuse_port = false
)");
  ASSERT_TRUE(daemon.start());
  int err = 0;
  Fd v4_to_v6only = try_connect("127.0.0.1:" + std::to_string(daemon.port("v6only")), &err, 2000ms);
  EXPECT_FALSE(v4_to_v6only) << "an IPv4 client reached a v6only listener";
  EXPECT_EQ(err, ECONNREFUSED) << std::strerror(err);
  Fd v6 = connect_to("[::1]:" + std::to_string(daemon.port("v6only")));
  ASSERT_TRUE(v6);
  EXPECT_TRUE(echo_line(v6.get(), "over IPv6\n"));
  Fd v4_to_dual = connect_to("127.0.0.1:" + std::to_string(daemon.port("dual")));
  ASSERT_TRUE(v4_to_dual) << "an IPv4 client did not reach the dual-stack listener";
  EXPECT_TRUE(echo_line(v4_to_dual.get(), "over IPv4\n"));

  // Only bound, never listening: a socket that does not listen takes no connections.
  auto join = [](const std::string& address) {
    Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    sockaddr_in in{};
    in.sin_family = AF_INET;
    const auto colon = address.rfind(':');
    ::inet_pton(AF_INET, address.substr(0, colon).c_str(), &in.sin_addr);
    in.sin_port = htons(static_cast<std::uint16_t>(std::stoi(address.substr(colon + 1))));
    return ::bind(fd.get(), reinterpret_cast<sockaddr*>(&in), sizeof in) == 0 ? 0 : errno;
  };
  EXPECT_EQ(join(daemon.address("shared")), 0) << "reuse_port = true, yet the port could not be shared";
  EXPECT_EQ(join(daemon.address("exclusive")), EADDRINUSE) << "reuse_port = false, yet the port was shared";
}

}  // namespace
}  // namespace echorelay::test
