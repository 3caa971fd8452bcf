// What a hot restart carries over and what it must not, seen from outside: the
// successor holds exactly its listeners, its own fds and its current connections (no
// connection of its predecessor leaks into it through fork/exec, however many restarts
// come), and every counter goes on from the predecessor's totals, including what the
// predecessor counted while it drained.
#include <dirent.h>
#include <signal.h>

#include <cstdlib>
#include <map>
#include <sstream>
#include <thread>

#include "harness.hpp"
#include "lifecycle_support.hpp"

namespace echorelay::test {
namespace {

std::string fd_listing(pid_t pid) {
  auto r = run_process({"/bin/ls", "-l", "/proc/" + std::to_string(pid) + "/fd"});
  return tail(r.output, 3000);
}

TEST(RestartState, ConnectionsOpenAtEachRestartDoNotLeakIntoTheSuccessors) {
  TempDir scratch;
  const std::string base = tcp_unix_udp_config(scratch.file("echo.sock"));
  ServiceUnderTest svc(base);
  ASSERT_TRUE(svc.start());
  const std::string tcp = svc.address("tcp");
  // A relay to our own echo listener: each relayed connection is a client socket, an
  // upstream socket (and a splice pipe pair when bulk flows) in the relay, plus an
  // echo session; none of them may reach a successor either.
  svc.write_config(base + R"(
[[listener]]
name = "relay"
protocol = "tcp"
address = "127.0.0.1:0"
handler = "relay"
upstreams = [")" + tcp + R"("]
)");
  auto added = svc.hot_restart();
  ASSERT_TRUE(added.ok) << added.status << svc.log();
  ASSERT_TRUE(wait_gone(svc.main_pids().front(), 10000ms).gone);
  ASSERT_TRUE(svc.reload_addresses());
  const std::string relay = svc.address("relay");
  // The successors' own fds: listeners, event loops, admin, notify, resolver. Measured
  // on a process with no connection open.
  const int baseline = static_cast<int>(open_fds(svc.main_pid()));
  ASSERT_GT(baseline, 0);
  constexpr int kClients = 300;
  constexpr int kRelayed = 50;
  constexpr int kExpected = kClients + 3 * kRelayed;  // relayed: client + upstream + echo session

  std::vector<Fd> clients;
  auto connect_all = [&] {
    clients.clear();
    for (int i = 0; i < kClients + kRelayed; ++i) {
      Fd fd = connect_to(i < kClients ? tcp : relay);
      if (!fd || !echo_line(fd.get(), "client " + std::to_string(i) + "\n")) return false;
      clients.push_back(std::move(fd));
    }
    return true;
  };
  ASSERT_TRUE(connect_all());

  for (int restart = 1; restart <= 3; ++restart) {
    const pid_t old_pid = svc.main_pid();
    auto r = svc.hot_restart();
    ASSERT_TRUE(r.ok) << r.status << svc.log();
    // The old process closes every idle echo connection at once and the relayed ones
    // at its drain deadline; the clients come back to the new one.
    for (auto& fd : clients) EXPECT_TRUE(expect_closed(fd.get(), 10000ms));
    ASSERT_TRUE(wait_gone(old_pid, 10000ms).gone);
    ASSERT_TRUE(connect_all());
    const int held = static_cast<int>(open_fds(svc.main_pid()));
    EXPECT_LE(held, baseline + kExpected + 4)
        << "after restart " << restart << " the main process holds " << held << " fds for " << kClients
        << " echo and " << kRelayed << " relayed connections (baseline " << baseline << ")\n"
        << fd_listing(svc.main_pid());
    EXPECT_GE(held, baseline + kExpected - 4) << "after restart " << restart;
  }
  clients.clear();
  ASSERT_TRUE(wait_metric(svc.admin(), "echorelay_connections_active", {{"listener", "tcp"}}, 0));
  ASSERT_TRUE(wait_metric(svc.admin(), "echorelay_connections_active", {{"listener", "relay"}}, 0));
  const pid_t main_pid = svc.main_pid();
  EXPECT_TRUE(wait_until([&] { return static_cast<int>(open_fds(main_pid)) <= baseline + 2; }, 5000ms))
      << "with every client gone the main process still holds " << open_fds(main_pid) << " fds (baseline "
      << baseline << ")\n"
      << fd_listing(main_pid);
}

// Every counter series of a Prometheus exposition: "name{labels}" -> value.
std::map<std::string, double> counters_of(const std::string& exposition) {
  std::map<std::string, double> out;
  std::istringstream in(exposition);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const auto space = line.rfind(' ');
    const std::string series = line.substr(0, space);
    const std::string name = series.substr(0, series.find('{'));
    const bool counter = name.ends_with("_total") || name.ends_with("_bucket") || name.ends_with("_count") ||
                         name.ends_with("_sum");
    if (counter) out[series] = std::strtod(line.c_str() + space + 1, nullptr);
  }
  return out;
}

TEST(RestartState, CountersGoOnFromThePredecessorsTotalsAndIncludeWhatItCountedWhileDraining) {
  TempDir scratch;
  const std::string unix_path = scratch.file("echo.sock");
  ServiceUnderTest::Options options;
  options.log_level = "debug";
  ServiceUnderTest svc(tcp_unix_udp_config(unix_path), options);
  ASSERT_TRUE(svc.start());
  // Relays to the echo listeners need their ports: add them now and restart once.
  const std::string tcp = svc.address("tcp");
  const std::string udp = svc.address("udp");
  svc.write_config(tcp_unix_udp_config(unix_path) + R"(
[[listener]]
name = "tcp-relay"
protocol = "tcp"
address = "127.0.0.1:0"
handler = "relay"
upstreams = [")" + tcp + R"("]

[[listener]]
name = "udp-relay"
protocol = "udp"
address = "127.0.0.1:0"
handler = "relay"
upstreams = [")" + udp + R"("]
)");
  auto first = svc.hot_restart();
  ASSERT_TRUE(first.ok) << first.status << svc.log();
  // Until the old process learns that its successor serves it still accepts, and a
  // connection it takes is closed right behind its first answer (answer and EOF
  // together); these loops send without reading for EOF, so they talk to the successor.
  ASSERT_TRUE(wait_gone(svc.main_pids().front(), 10000ms).gone);
  ASSERT_TRUE(svc.reload_addresses());

  // Traffic on every listener kind, and some refusals.
  for (const std::string& name : {std::string("tcp"), std::string("tcp-relay"), unix_path}) {
    Fd fd = connect_to(name.starts_with("/") ? name : svc.address(name));
    ASSERT_TRUE(fd);
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(echo_line(fd.get(), "counted " + std::to_string(i) + "\n")) << name;
  }
  for (const std::string name : {"udp", "udp-relay"}) {
    Fd fd = udp_connect(svc.address(name));
    for (int i = 0; i < 5; ++i) {
      ASSERT_TRUE(udp_send(fd.get(), "datagram"));
      ASSERT_EQ(udp_recv(fd.get(), 3000ms), std::optional<std::string>("datagram")) << name;
    }
  }
  // A request the old process will answer while it drains, after the handover.
  Fd in_flight = connect_to(tcp);
  ASSERT_TRUE(in_flight);
  ASSERT_TRUE(echo_line(in_flight.get(), "before\n"));
  ASSERT_TRUE(send_all(in_flight.get(), "across "));

  auto before_page = http_get(svc.admin(), "/metrics");
  ASSERT_TRUE(before_page && before_page->status == 200);
  const auto before = counters_of(before_page->body);
  ASSERT_GT(before.at("echorelay_requests_total{listener=\"tcp\"}"), 0);
  ASSERT_EQ(before.at("echorelay_restarts_total"), 1);

  const pid_t old_pid = svc.main_pid();
  auto second = svc.hot_restart();
  ASSERT_TRUE(second.ok) << second.status;
  ASSERT_TRUE(svc.reload_addresses());
  // The old process may answer a scrape on the shared admin socket for a moment after
  // the successor's READY=1: wait for the successor's page (a new start time).
  const auto started_before = metric_value(before_page->body, "process_start_time_seconds", {});
  ASSERT_TRUE(started_before);
  std::optional<HttpResponse> after_page;
  EXPECT_TRUE(wait_until([&] {
    after_page = http_get(svc.admin(), "/metrics");
    return after_page && after_page->status == 200 &&
           metric_value(after_page->body, "process_start_time_seconds", {}) > started_before;
  })) << "process_start_time_seconds did not change: a restart must stay visible";
  ASSERT_TRUE(after_page && after_page->status == 200);
  const auto after = counters_of(after_page->body);
  int compared = 0;
  for (const auto& [series, value] : before) {
    auto it = after.find(series);
    ASSERT_NE(it, after.end()) << series << " is gone after the restart";
    EXPECT_GE(it->second, value) << series << " went back from " << value << " to " << it->second;
    ++compared;
  }
  EXPECT_GT(compared, 50);
  EXPECT_EQ(after.at("echorelay_restarts_total"), 2);

  // The old process answers the request in flight while it drains; once it has
  // exited, that request is in the successor's total.
  const double tcp_requests = after.at("echorelay_requests_total{listener=\"tcp\"}");
  ASSERT_TRUE(send_all(in_flight.get(), "the handover\n"));
  EXPECT_EQ(recv_exact(in_flight.get(), 20, 3000ms), "across the handover\n");
  in_flight.reset();
  ASSERT_TRUE(wait_gone(old_pid, 10000ms).gone);
  EXPECT_TRUE(wait_metric(svc.admin(), "echorelay_requests_total", {{"listener", "tcp"}}, tcp_requests + 1))
      << "what the old process counted while draining did not reach the successor";
}

}  // namespace
}  // namespace echorelay::test
