// Drain on SIGTERM: a request in flight is completed and answered, an idle connection
// is closed with FIN (never RST), the rest is closed at drain_timeout, the exit is 0,
// and once the process is gone its port refuses connections. A second SIGTERM ends the
// drain at once.
#include <signal.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "harness.hpp"
#include "lifecycle_support.hpp"

namespace echorelay::test {
namespace {

std::string drain_config(const std::string& drain_timeout) {
  return R"(
[daemon]
drain_timeout = ")" + drain_timeout + R"("

[[listener]]
name = "tcp"
protocol = "tcp"
address = "127.0.0.1:0"
read_timeout = "60s"
)";
}

TEST(Drain, SigtermAnswersTheRequestInFlightClosesIdleWithFinAndTheRestAtTheDeadline) {
  ServiceUnderTest svc(drain_config("3s"));
  ASSERT_TRUE(svc.start());
  const std::string tcp = svc.address("tcp");

  Fd idle = connect_to(tcp);
  Fd half = connect_to(tcp);
  Fd stuck = connect_to(tcp);
  ASSERT_TRUE(idle && half && stuck);
  ASSERT_TRUE(echo_line(idle.get(), "idle warm up\n"));
  ASSERT_TRUE(echo_line(half.get(), "half warm up\n"));
  ASSERT_TRUE(echo_line(stuck.get(), "stuck warm up\n"));
  // `half` has sent part of a request and will finish it after SIGTERM; `stuck` has
  // sent part of one and never finishes it.
  ASSERT_TRUE(send_all(half.get(), "half a "));
  ASSERT_TRUE(send_all(stuck.get(), "never finished"));
  // Both partial requests must have reached the daemon before the signal.
  ASSERT_TRUE(wait_until([&] { return read_by_peer(half.get()) && read_by_peer(stuck.get()); }));

  const std::size_t from = svc.notify().size();
  const auto t0 = Clock::now();
  ASSERT_TRUE(svc.signal(SIGTERM));
  auto stopping = svc.notify().wait_line("STOPPING=1", from, 3000ms);
  ASSERT_TRUE(stopping) << svc.notify().dump();
  EXPECT_EQ(svc.notify().at(*stopping).value("STATUS"), std::optional<std::string>("draining"));

  // The idle connection: FIN at once, not RST.
  RecvAll idle_end = recv_until_eof(idle.get(), 2000ms);
  EXPECT_TRUE(idle_end.eof) << "idle connection not closed cleanly; errno " << idle_end.error << " ("
                            << std::strerror(idle_end.error) << ")";
  EXPECT_EQ(idle_end.error, 0) << std::strerror(idle_end.error);
  EXPECT_EQ(idle_end.data, "");
  idle.reset();

  // The request in flight is completed and answered, then the connection ends cleanly.
  ASSERT_TRUE(send_all(half.get(), "request\n"));
  EXPECT_EQ(recv_exact(half.get(), 15, 2000ms), "half a request\n");
  RecvAll half_end = recv_until_eof(half.get(), 2000ms);
  EXPECT_TRUE(half_end.eof) << "errno " << half_end.error;
  EXPECT_EQ(half_end.data, "");
  half.reset();

  // The unfinished request keeps its connection until drain_timeout, then it is closed.
  EXPECT_TRUE(is_open_and_quiet(stuck.get())) << "closed before drain_timeout";
  EXPECT_TRUE(expect_closed(stuck.get(), 6000ms));
  const auto closed_after = Clock::now() - t0;
  EXPECT_GE(closed_after, 2500ms) << "closed before drain_timeout";
  EXPECT_LE(closed_after, 5000ms) << "not closed at drain_timeout";
  // Under a service manager, a drain longer than a second asks for more stop time.
  EXPECT_TRUE(svc.notify().wait_for([](const Notice& n) { return n.value("EXTEND_TIMEOUT_USEC").has_value(); },
                                    from, 0ms))
      << svc.notify().dump();

  EXPECT_EQ(svc.wait_exit(5000ms), std::optional<int>(0));
  // Gone, and the fd store (kept by this test) flushed: nothing holds the socket now.
  svc.notify().release_fds();
  int err = 0;
  Fd late = try_connect(tcp, &err, 1000ms);
  EXPECT_FALSE(late) << "port still accepting after exit";
  EXPECT_EQ(err, ECONNREFUSED) << std::strerror(err);
  for (std::size_t i = *stopping + 1; i < svc.notify().size(); ++i)
    EXPECT_FALSE(svc.notify().at(i).has("READY=1")) << "READY=1 after STOPPING=1";
}

TEST(Drain, SecondSigtermEndsTheDrainAtOnce) {
  ServiceUnderTest svc(drain_config("30s"));
  ASSERT_TRUE(svc.start());
  Fd stuck = connect_to(svc.address("tcp"));
  ASSERT_TRUE(stuck);
  ASSERT_TRUE(echo_line(stuck.get(), "warm up\n"));
  ASSERT_TRUE(send_all(stuck.get(), "never finished"));
  ASSERT_TRUE(wait_until([&] { return read_by_peer(stuck.get()); }));

  ASSERT_TRUE(svc.signal(SIGTERM));
  ASSERT_TRUE(svc.notify().wait_line("STOPPING=1", 0, 3000ms));
  // The drain waits for the unfinished request (watched for 300 ms)...
  std::this_thread::sleep_for(300ms);
  EXPECT_TRUE(is_open_and_quiet(stuck.get()));
  // ...until the operator insists.
  const auto t0 = Clock::now();
  ASSERT_TRUE(svc.signal(SIGTERM));
  EXPECT_EQ(svc.wait_exit(3000ms), std::optional<int>(0));
  EXPECT_LE(Clock::now() - t0, 2000ms);
  EXPECT_TRUE(expect_closed(stuck.get(), 1000ms));
}

}  // namespace
}  // namespace echorelay::test
