// --supervise: a stable-PID parent. Its pid never changes across hot restarts of its
// worker (SIGHUP to the supervisor), under load and without a failed request; it reaps
// every child (no zombies); it relays the worker's READY/STATUS/STOPPING; it exits
// with the worker's status.
#include <signal.h>

#include <string>
#include <thread>

#include "harness.hpp"
#include "lifecycle_support.hpp"

namespace echorelay::test {
namespace {

struct Child {
  pid_t pid;
  char state;
};

std::vector<Child> child_states(pid_t parent) {
  std::vector<Child> out;
  for (pid_t pid : children_of(parent)) out.push_back({pid, process_state(pid)});
  return out;
}

std::vector<pid_t> living_children(pid_t parent) {
  std::vector<pid_t> out;
  for (const auto& c : child_states(parent))
    if (c.state != 'Z' && c.state != 0) out.push_back(c.pid);
  return out;
}

std::vector<pid_t> zombie_children(pid_t parent) {
  std::vector<pid_t> out;
  for (const auto& c : child_states(parent))
    if (c.state == 'Z') out.push_back(c.pid);
  return out;
}

// The one worker of the supervisor, once the previous one (if any) has gone.
pid_t single_worker(pid_t supervisor, pid_t not_this = 0) {
  pid_t worker = 0;
  wait_until(
      [&] {
        auto kids = living_children(supervisor);
        if (kids.size() != 1 || kids[0] == not_this) return false;
        worker = kids[0];
        return true;
      },
      10000ms);
  return worker;
}

TEST(Supervise, PidStaysTheSameAcrossTenHotRestartsUnderLoadAndChildrenAreReaped) {
  TempDir sockets;
  const std::string unix_path = sockets.file("supervised.sock");
  ServiceUnderTest::Options options;
  options.supervise = true;
  ServiceUnderTest svc(tcp_unix_udp_config(unix_path), options);
  ASSERT_TRUE(svc.start());
  const pid_t supervisor = svc.first_pid();
  EXPECT_EQ(svc.main_pid(), supervisor);
  // The supervisor speaks for the service: it relays READY and STATUS but keeps MAINPID.
  for (const Notice& n : svc.notify().snapshot()) {
    EXPECT_EQ(n.sender, supervisor) << n.text;
    EXPECT_FALSE(n.value("MAINPID")) << "MAINPID relayed: " << n.text;
  }
  pid_t worker = single_worker(supervisor);
  ASSERT_NE(worker, 0);

  Load load;
  load.churn(svc.address("tcp"), 2);
  load.churn(unix_path, 2);
  load.persistent(svc.address("tcp"), 2);
  load.persistent(unix_path, 2);
  load.udp(svc.address("udp"));
  ASSERT_TRUE(wait_until([&] { return load.counters().requests_ok > 100; }, 5000ms)) << load.summary();

  std::vector<pid_t> workers = {worker};
  for (int i = 0; i < 10; ++i) {
    const auto round_start = Clock::now();
    auto r = svc.hot_restart(10000ms, supervisor);
    ASSERT_TRUE(r.ok) << "restart " << i + 1 << ": " << r.status << "\n" << load.summary();
    EXPECT_EQ(r.pid, supervisor);
    ASSERT_EQ(::kill(supervisor, 0), 0) << "supervisor gone";
    // The old worker drains and exits; its successor is now the supervisor's child.
    worker = single_worker(supervisor, worker);
    ASSERT_NE(worker, 0) << "restart " << i + 1 << ": no single new worker under the supervisor";
    workers.push_back(worker);
    std::this_thread::sleep_until(round_start + 500ms);
  }
  const auto ok_before = load.counters().requests_ok.load();
  EXPECT_TRUE(wait_until([&] { return load.counters().requests_ok > ok_before + 100; }, 5000ms));
  load.stop();

  const auto& c = load.counters();
  std::cerr << "supervised storm: " << load.summary() << "\n";
  EXPECT_EQ(c.failures(), 0u) << load.summary();
  EXPECT_GT(c.requests_ok, 500u);
  EXPECT_LE(c.udp_lost * 1000, c.udp_sent) << load.summary();
  EXPECT_EQ(fetch_metric(svc.admin(), "echorelay_restarts_total", {}), std::optional<double>(10));

  // Every old worker is gone and reaped: no zombie under the supervisor.
  for (std::size_t i = 0; i + 1 < workers.size(); ++i)
    EXPECT_TRUE(wait_gone(workers[i], 5000ms).gone) << "old worker " << workers[i] << " still runs";
  EXPECT_TRUE(wait_until([&] { return zombie_children(supervisor).empty(); }, 3000ms))
      << zombie_children(supervisor).size() << " zombie children of the supervisor";
  EXPECT_EQ(living_children(supervisor), std::vector<pid_t>{workers.back()});
  // Nobody but the supervisor spoke on the service's notify socket.
  for (const Notice& n : svc.notify().snapshot()) EXPECT_EQ(n.sender, supervisor) << n.text;

  // SIGTERM to the supervisor reaches the worker: STOPPING relayed, worker exits 0,
  // supervisor exits 0 after it.
  const std::size_t from = svc.notify().size();
  ASSERT_TRUE(svc.signal(SIGTERM, supervisor));
  EXPECT_TRUE(svc.notify().wait_line("STOPPING=1", from, 3000ms)) << svc.notify().dump();
  EXPECT_EQ(svc.wait_exit(10000ms), std::optional<int>(0));
  EXPECT_TRUE(wait_gone(workers.back(), 2000ms).gone);
}

TEST(Supervise, ExitsWithTheWorkersStatus) {
  TempDir sockets;
  ServiceUnderTest::Options options;
  options.supervise = true;
  ServiceUnderTest svc(tcp_unix_udp_config(sockets.file("status.sock")), options);
  ASSERT_TRUE(svc.start());
  const pid_t supervisor = svc.first_pid();
  const pid_t worker = single_worker(supervisor);
  ASSERT_NE(worker, 0);
  // A worker killed from outside: the supervisor has nothing left to supervise and
  // reports how the worker ended (128 + SIGKILL), as a shell would.
  ASSERT_EQ(::kill(worker, SIGKILL), 0);
  EXPECT_EQ(svc.wait_exit(5000ms), std::optional<int>(128 + SIGKILL));
}

}  // namespace
}  // namespace echorelay::test
