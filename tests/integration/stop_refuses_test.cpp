// SIGTERM closes this process's listening sockets at the start of the drain: new TCP
// and Unix connections are refused and datagrams bounce (ECONNREFUSED) at once, while
// what was accepted is still served. When someone else holds a listening socket (the
// fd store of the service manager, a socket unit), it stays open there and connections
// made during the drain wait for the next instance instead. A connection accepted just
// before the drain whose first request is still on the way is served, not closed.
#include <signal.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "harness.hpp"
#include "lifecycle_support.hpp"
#include "os/spawn.hpp"

namespace echorelay::test {
namespace {

// Polls until connecting to `address` fails with ECONNREFUSED; returns how long that
// took, or nullopt if it was still accepted (or failed otherwise) at `timeout`.
std::optional<Millis> until_refused(const std::string& address, Millis timeout, std::string* last) {
  const auto t0 = Clock::now();
  const bool refused = wait_until(
      [&] {
        int err = 0;
        Fd fd = try_connect(address, &err, 500ms);
        *last = fd ? "connected" : std::strerror(err);
        return !fd && err == ECONNREFUSED;
      },
      timeout, 5ms);
  if (!refused) return std::nullopt;
  return std::chrono::duration_cast<Millis>(Clock::now() - t0);
}

std::optional<Millis> until_datagram_refused(const std::string& address, Millis timeout, std::string* last) {
  Fd fd = udp_connect(address);
  const auto t0 = Clock::now();
  while (fd && Clock::now() - t0 < timeout) {
    if (::send(fd.get(), "ping", 4, 0) < 0 && errno == ECONNREFUSED) {
      return std::chrono::duration_cast<Millis>(Clock::now() - t0);
    }
    char buf[16];
    pollfd p{fd.get(), POLLIN, 0};
    if (::poll(&p, 1, 50) > 0) {
      const ssize_t n = ::recv(fd.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (n < 0 && errno == ECONNREFUSED) return std::chrono::duration_cast<Millis>(Clock::now() - t0);
      *last = n >= 0 ? "answered" : std::strerror(errno);
    } else {
      *last = "no answer, no error";
    }
  }
  return std::nullopt;
}

TEST(StopRefuses, SigtermRefusesNewConnectionsAndDatagramsAtOnceWhileTheRequestInFlightIsAnswered) {
  TempDir scratch;
  const std::string unix_path = scratch.file("echo.sock");
  ServiceUnderTest svc(tcp_unix_udp_config(unix_path));
  ASSERT_TRUE(svc.start());
  const std::string tcp = svc.address("tcp");
  const std::string udp = svc.address("udp");

  Fd in_flight = connect_to(tcp);
  ASSERT_TRUE(in_flight);
  ASSERT_TRUE(echo_line(in_flight.get(), "warm up\n"));
  ASSERT_TRUE(send_all(in_flight.get(), "half "));
  {
    Fd probe = udp_connect(udp);
    ASSERT_TRUE(udp_send(probe.get(), "before"));
    EXPECT_EQ(udp_recv(probe.get(), 2000ms), std::optional<std::string>("before"));
  }
  // The fd store holds the listening sockets like systemd does; this test is about a
  // process nobody else holds sockets for, so drop the stored copies.
  svc.notify().release_fds();

  const std::size_t from = svc.notify().size();
  ASSERT_TRUE(svc.signal(SIGTERM));
  ASSERT_TRUE(svc.notify().wait_line("STOPPING=1", from, 3000ms)) << svc.notify().dump();

  std::string last;
  auto tcp_refused = until_refused(tcp, 3000ms, &last);
  ASSERT_TRUE(tcp_refused) << "a TCP connect during the drain: " << last;
  auto unix_refused = until_refused(unix_path, 3000ms, &last);
  ASSERT_TRUE(unix_refused) << "a Unix connect during the drain: " << last;
  auto udp_refused = until_datagram_refused(udp, 3000ms, &last);
  ASSERT_TRUE(udp_refused) << "a datagram during the drain: " << last;
  // Timings are noisy here; the point is "at once", not "at exit" (5 s away).
  EXPECT_LT(tcp_refused->count(), 1000) << "TCP refused only after " << tcp_refused->count() << "ms";
  std::cout << "refused after STOPPING=1: tcp " << tcp_refused->count() << "ms, unix " << unix_refused->count()
            << "ms, udp " << udp_refused->count() << "ms\n";

  // Still draining: the request in flight is finished and answered.
  EXPECT_NE(process_state(svc.main_pid()), 0);
  ASSERT_TRUE(send_all(in_flight.get(), "x\n"));
  EXPECT_EQ(recv_exact(in_flight.get(), 7, 3000ms), "half x\n");
  RecvAll end = recv_until_eof(in_flight.get(), 3000ms);
  EXPECT_TRUE(end.eof) << std::strerror(end.error);
  in_flight.reset();
  EXPECT_EQ(svc.wait_exit(8000ms), std::optional<int>(0)) << svc.log();
}

TEST(StopRefuses, AConnectionWhoseFirstRequestArrivesAfterTheDrainBeganIsAnswered) {
  TempDir scratch;
  ServiceUnderTest svc(tcp_unix_udp_config(scratch.file("echo.sock")));
  ASSERT_TRUE(svc.start());
  Fd early = connect_to(svc.address("tcp"));
  ASSERT_TRUE(early);
  // Accepted (counted active) before the drain, silent until after it began.
  ASSERT_TRUE(wait_metric(svc.admin(), "echorelay_connections_active", {{"listener", "tcp"}}, 1));

  const std::size_t from = svc.notify().size();
  ASSERT_TRUE(svc.signal(SIGTERM));
  ASSERT_TRUE(svc.notify().wait_line("STOPPING=1", from, 3000ms));
  // Well past the moment the drain walked this connection (and past the idle grace).
  std::this_thread::sleep_for(1500ms);
  ASSERT_TRUE(send_all(early.get(), "first request\n"));
  EXPECT_EQ(recv_exact(early.get(), 14, 3000ms), "first request\n") << svc.log();
  RecvAll end = recv_until_eof(early.get(), 3000ms);
  EXPECT_TRUE(end.eof) << "closed right behind its answer; errno " << end.error;
  EXPECT_EQ(svc.wait_exit(8000ms), std::optional<int>(0));
}

TEST(StopRefuses, AConnectionAcceptedBeforeAHandoverAndSilentUntilAfterItIsAnswered) {
  TempDir scratch;
  ServiceUnderTest svc(tcp_unix_udp_config(scratch.file("echo.sock")));
  ASSERT_TRUE(svc.start());
  Fd early = connect_to(svc.address("tcp"));
  ASSERT_TRUE(early);
  ASSERT_TRUE(wait_metric(svc.admin(), "echorelay_connections_active", {{"listener", "tcp"}}, 1));
  const pid_t old_pid = svc.main_pid();
  auto restart = svc.hot_restart();
  ASSERT_TRUE(restart.ok) << restart.status;
  // Well past the moment the old process's drain walked this connection.
  std::this_thread::sleep_for(1500ms);
  ASSERT_TRUE(send_all(early.get(), "first after handover\n"));
  EXPECT_EQ(recv_exact(early.get(), 21, 3000ms), "first after handover\n") << svc.log();
  RecvAll end = recv_until_eof(early.get(), 3000ms);
  EXPECT_TRUE(end.eof) << "errno " << end.error;
  EXPECT_TRUE(wait_gone(old_pid, 8000ms).gone);
}

TEST(StopRefuses, DatagramsQueuedWhenTheDrainBeginsAreAnsweredBeforeTheSocketCloses) {
  TempDir scratch;
  ServiceUnderTest svc(tcp_unix_udp_config(scratch.file("echo.sock")));
  ASSERT_TRUE(svc.start());
  svc.notify().release_fds();
  Fd client = udp_connect(svc.address("udp"));
  ASSERT_TRUE(client);
  // Frozen, the daemon reads nothing: the datagrams and the SIGTERM wait together, and
  // on SIGCONT the stop may be seen before the reader's next poll.
  ASSERT_TRUE(svc.signal(SIGSTOP));
  constexpr int kQueued = 50;
  for (int i = 0; i < kQueued; ++i) ASSERT_TRUE(udp_send(client.get(), "queued " + std::to_string(i)));
  ASSERT_TRUE(svc.signal(SIGTERM));
  ASSERT_TRUE(svc.signal(SIGCONT));
  int answered = 0;
  while (auto d = udp_recv(client.get(), 2000ms)) {
    if (d->starts_with("queued ")) ++answered;
  }
  EXPECT_EQ(answered, kQueued) << "datagrams queued before the stop were thrown away";
  EXPECT_EQ(svc.wait_exit(8000ms), std::optional<int>(0));
}

// What systemd does with a socket unit or the fd store: it keeps the listening socket
// while the service stops, and starts the next instance with it.
TEST(StopRefuses, WhenAnotherHolderKeepsTheSocketConnectionsDuringTheDrainWaitForTheNextInstance) {
  TempDir scratch;
  ServiceUnderTest svc(tcp_unix_udp_config(scratch.file("echo.sock")));
  ASSERT_TRUE(svc.start());
  const std::string tcp = svc.address("tcp");
  Fd in_flight = connect_to(tcp);
  ASSERT_TRUE(in_flight);
  ASSERT_TRUE(send_all(in_flight.get(), "half "));
  ASSERT_TRUE(wait_metric(svc.admin(), "echorelay_connections_active", {{"listener", "tcp"}}, 1));

  // The stored copy of the "tcp" listener stays with the test (the fd store).
  int stored_tcp = -1;
  for (const Notice& n : svc.notify().snapshot()) {
    if (n.value("FDNAME") == std::optional<std::string>("tcp") && !n.fds.empty()) stored_tcp = n.fds.front().get();
  }
  ASSERT_GE(stored_tcp, 0) << "the daemon stored no fd named tcp: " << svc.notify().dump();

  const std::size_t from = svc.notify().size();
  ASSERT_TRUE(svc.signal(SIGTERM));
  ASSERT_TRUE(svc.notify().wait_line("STOPPING=1", from, 3000ms));
  // The daemon let go of the listening socket (STOPPING=1 comes just before).
  ASSERT_TRUE(wait_until([&] { return !holds_socket(svc.main_pid(), stored_tcp); }));
  // Not refused: it waits in the backlog of the socket the holder keeps.
  int err = 0;
  Fd during = try_connect(tcp, &err, 2000ms);
  ASSERT_TRUE(during) << "refused although the fd store holds the socket: " << std::strerror(err);
  ASSERT_TRUE(send_all(during.get(), "made during the drain\n"));
  ASSERT_TRUE(send_all(in_flight.get(), "done\n"));
  EXPECT_EQ(recv_exact(in_flight.get(), 10, 3000ms), "half done\n");
  in_flight.reset();
  EXPECT_EQ(svc.wait_exit(8000ms), std::optional<int>(0)) << svc.log();

  // The next instance, started with the held socket as systemd would.
  NotifySocket notify(scratch.file("notify2"), /*keep_fds=*/true);
  TempDir dir;
  write_file(dir.file("next.toml"), R"(
[[listener]]
name = "tcp"
protocol = "tcp"
address = ")" + tcp + R"("
)");
  os::SpawnRequest request;
  request.path = ECHORELAYD_PATH;
  request.argv = {ECHORELAYD_PATH, "-c", dir.file("next.toml"), "--log-level", "info"};
  request.env = os::current_environment();
  request.env.push_back("NOTIFY_SOCKET=" + notify.path());
  request.fds = {{stored_tcp, "tcp"}};
  auto pid = os::spawn_with_fds(request);
  ASSERT_TRUE(pid) << pid.error();
  const bool ready = notify.wait_line("READY=1", 0, kReadyTimeout).has_value();
  EXPECT_TRUE(ready) << notify.dump();
  // The connection made while the first instance drained is served by the second.
  EXPECT_EQ(recv_exact(during.get(), 22, 3000ms), "made during the drain\n");
  ::kill(*pid, SIGTERM);
  EXPECT_TRUE(wait_gone(*pid, 8000ms).gone);
}

}  // namespace
}  // namespace echorelay::test
