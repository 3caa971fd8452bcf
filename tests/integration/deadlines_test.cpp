// Per-connection deadlines of the echo handler: read_timeout (a request must arrive whole
// in time, so trickling is cut; raw idles are cut), write_timeout (a client that never
// reads is cut) and request_timeout (bounds one request, not the connection's life).
// Timings are asserted with generous upper bounds: the machine is shared and slow.
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "harness.hpp"

namespace echorelay::test {
namespace {

using std::chrono::duration_cast;

long elapsed_ms(Clock::time_point since) { return duration_cast<Millis>(Clock::now() - since).count(); }

// Sends one byte every 100 ms until the daemon closes the connection; returns how long
// that took, or nullopt if it stayed open for `limit`. `between` runs after each byte.
std::optional<long> trickle_until_cut(int fd, Millis limit, const std::function<void()>& between = {}) {
  auto start = Clock::now();
  auto next = start;
  while (Clock::now() - start < limit) {
    // Closed? (EOF, RST, or any echoed data which would itself be a bug: count it as open.)
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 0) > 0) {
      char b;
      ssize_t r = ::recv(fd, &b, 1, MSG_DONTWAIT);
      if (r == 0 || (r < 0 && (errno == ECONNRESET || errno == EPIPE))) return elapsed_ms(start);
    }
    ssize_t n = ::send(fd, "a", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) return elapsed_ms(start);
    if (between) between();
    next += 100ms;
    // Pacing, not synchronisation: the point of the test is a slow sender.
    std::this_thread::sleep_until(next);
  }
  return std::nullopt;
}

TEST(Deadlines, TricklingClientIsCutAtReadTimeoutWhilePromptClientIsServed) {
  Daemon daemon(R"(
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "echo"
protocol = "tcp"
address = "127.0.0.2:0"
handler = "echo"
framing = "line"
read_timeout = "500ms"
)");
  ASSERT_TRUE(daemon.start());
  Fd prompt = connect_to(daemon.address("echo"));
  Fd slow = connect_to(daemon.address("echo"));
  ASSERT_TRUE(prompt && slow);

  int answered = 0;
  auto cut = trickle_until_cut(slow.get(), 4000ms, [&] {
    // A full request every 100 ms: each one arrives well within read_timeout.
    if (echo_line(prompt.get(), "ping " + std::to_string(answered) + "\n", 2000ms)) ++answered;
  });
  ASSERT_TRUE(cut.has_value()) << "trickling client was never cut";
  EXPECT_GE(*cut, 400) << "cut before read_timeout";
  EXPECT_LE(*cut, 2000) << "cut long after read_timeout (500 ms)";
  EXPECT_GE(answered, 3);

  // The prompt client outlived the trickler and keeps being served past read_timeout.
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(echo_line(prompt.get(), "still here\n"));
    std::this_thread::sleep_for(100ms);  // pacing: spread requests over > read_timeout
  }
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_refused_total",
                          {{"listener", "echo"}, {"reason", "read_timeout"}}, 1));
}

TEST(Deadlines, IdleRawConnectionIsClosedAfterReadTimeout) {
  Daemon daemon(R"(
[[listener]]
name = "raw"
protocol = "tcp"
address = "127.0.0.2:0"
handler = "echo"
framing = "raw"
read_timeout = "400ms"
)");
  ASSERT_TRUE(daemon.start());
  Fd c = connect_to(daemon.address("raw"));
  ASSERT_TRUE(c);
  ASSERT_TRUE(send_all(c.get(), "x"));
  ASSERT_EQ(recv_exact(c.get(), 1), "x");
  auto start = Clock::now();
  EXPECT_TRUE(expect_closed(c.get(), 3000ms));
  EXPECT_GE(elapsed_ms(start), 300);
}

TEST(Deadlines, ClientThatNeverReadsIsCutAtWriteTimeout) {
  Daemon daemon(R"(
[[listener]]
name = "raw"
protocol = "tcp"
address = "127.0.0.2:0"
handler = "echo"
framing = "raw"
send_buffer = 4096
recv_buffer = 4096
read_timeout = "30s"
write_timeout = "500ms"
)");
  ASSERT_TRUE(daemon.start());
  int err = 0;
  // A small receive window on our side so the echo backs up quickly.
  Fd c = try_connect(daemon.address("raw"), &err, kIoTimeout, [](int fd) {
    int small = 4096;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  });
  ASSERT_TRUE(c) << std::strerror(err);

  // Stream data and never read. Once every buffer is full the daemon's write stalls;
  // read_timeout is 30 s, so only write_timeout can end the connection within seconds.
  std::string chunk(16384, 'w');
  auto start = Clock::now();
  auto last_progress = start;
  bool cut = false;
  while (elapsed_ms(start) < 8000) {
    pollfd p{c.get(), POLLOUT, 0};
    ::poll(&p, 1, 50);
    if (p.revents & (POLLERR | POLLHUP)) {
      cut = true;
      break;
    }
    if (p.revents & POLLOUT) {
      ssize_t n = ::send(c.get(), chunk.data(), chunk.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
        cut = true;
        break;
      }
      if (n > 0) last_progress = Clock::now();
    }
    // A FIN from the daemon shows up as readable EOF once our buffers drain; peek for it.
    char b;
    ssize_t r = ::recv(c.get(), &b, 1, MSG_DONTWAIT | MSG_PEEK);
    if (r == 0 || (r < 0 && errno == ECONNRESET)) {
      cut = true;
      break;
    }
  }
  ASSERT_TRUE(cut) << "a client that never reads was not cut within 8 s";
  long stalled_for = duration_cast<Millis>(Clock::now() - last_progress).count();
  EXPECT_LE(stalled_for, 4000);

  // Others are still served.
  Fd other = connect_to(daemon.address("raw"));
  ASSERT_TRUE(other);
  ASSERT_TRUE(send_all(other.get(), "fine"));
  EXPECT_EQ(recv_exact(other.get(), 4), "fine");
}

TEST(Deadlines, RequestTimeoutCutsASlowRequestButNotALongConnection) {
  Daemon daemon(R"(
[[listener]]
name = "echo"
protocol = "tcp"
address = "127.0.0.2:0"
handler = "echo"
framing = "line"
read_timeout = "60s"
write_timeout = "60s"
request_timeout = "1s"
)");
  ASSERT_TRUE(daemon.start());
  Fd busy = connect_to(daemon.address("echo"));
  Fd slow = connect_to(daemon.address("echo"));
  ASSERT_TRUE(busy && slow);

  int answered = 0;
  auto cut = trickle_until_cut(slow.get(), 5000ms, [&] {
    if (echo_line(busy.get(), "req\n", 2000ms)) ++answered;
  });
  ASSERT_TRUE(cut.has_value()) << "a request trickled over 5 s was never cut";
  EXPECT_GE(*cut, 800);
  EXPECT_LE(*cut, 3000);

  // The busy connection is now older than request_timeout and still served.
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(echo_line(busy.get(), "more\n"));
    std::this_thread::sleep_for(100ms);  // pacing
  }
  EXPECT_GE(answered, 8);
}

}  // namespace
}  // namespace echorelay::test
