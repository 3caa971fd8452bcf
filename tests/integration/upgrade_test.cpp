// Binary upgrade: the daemon runs from a copy of its binary; the copy is replaced on
// disk (new file + rename, as a package manager does) by a build reporting another
// version, and SIGHUP makes the new binary serve, with clients running throughout.
#include <limits.h>
#include <signal.h>
#include <unistd.h>

#include <string>

#include "harness.hpp"
#include "lifecycle_support.hpp"

namespace echorelay::test {
namespace {

std::string exe_of(pid_t pid) {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink(("/proc/" + std::to_string(pid) + "/exe").c_str(), buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

std::string version_of(const std::string& path) {
  auto result = run_process({path, "--version"});
  if (result.exit_code != 0) return "(exit " + std::to_string(result.exit_code.value_or(-1)) + ")";
  std::string out = result.output;
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

TEST(BinaryUpgrade, ReplacingTheBinaryAndSighupServesTheNewVersionWithoutAFailedRequest) {
  TempDir bin_dir;
  const ServiceUnderTest::Options options = from_copied_binary(bin_dir);
  const std::string binary = options.binary;
  ASSERT_EQ(version_of(binary), std::string("echorelayd ") + ECHORELAY_VERSION);
  ASSERT_EQ(version_of(ECHORELAYD_NEXT_PATH), std::string("echorelayd ") + ECHORELAY_VERSION + "-next");

  ServiceUnderTest svc(config_toml("drain_timeout = \"5s\"", {{"tcp", "tcp"}, {"udp", "udp"}}), options);
  ASSERT_TRUE(svc.start());
  const pid_t old = svc.main_pid();
  EXPECT_EQ(exe_of(old), binary);

  Load load;
  load.persistent(svc.address("tcp"), 2);
  load.churn(svc.address("tcp"), 2);
  load.udp(svc.address("udp"));
  ASSERT_TRUE(wait_until([&] { return load.counters().requests_ok > 100; }, 5000ms)) << load.summary();

  ASSERT_TRUE(replace_file(ECHORELAYD_NEXT_PATH, binary));
  EXPECT_EQ(version_of(binary), std::string("echorelayd ") + ECHORELAY_VERSION + "-next");
  // The running process still runs the old file, which is now unlinked.
  EXPECT_EQ(exe_of(old), binary + " (deleted)");

  auto r = svc.hot_restart(10000ms);
  ASSERT_TRUE(r.ok) << r.status;
  const pid_t upgraded = r.pid;
  EXPECT_NE(upgraded, old);
  // The new main process runs the file now at the path: the next version.
  EXPECT_EQ(exe_of(upgraded), binary);
  EXPECT_EQ(version_of("/proc/" + std::to_string(upgraded) + "/exe"),
            std::string("echorelayd ") + ECHORELAY_VERSION + "-next");

  const auto ok_before = load.counters().requests_ok.load();
  EXPECT_TRUE(wait_until([&] { return load.counters().requests_ok > ok_before + 200; }, 5000ms));
  load.stop();
  std::cerr << "upgrade: " << load.summary() << "\n";
  EXPECT_EQ(load.counters().failures(), 0u) << load.summary();
  EXPECT_LE(load.counters().udp_lost * 1000, load.counters().udp_sent) << load.summary();

  Gone g = wait_gone(old, 7000ms);
  EXPECT_TRUE(g.gone) << "old version still running";
  EXPECT_EQ(g.exit_code, std::optional<int>(0));
  EXPECT_EQ(fetch_metric(svc.admin(), "echorelay_restarts_total", {}), std::optional<double>(1));

  ASSERT_TRUE(svc.signal(SIGTERM));
  Gone last = svc.wait_main_exit(7000ms);
  EXPECT_TRUE(last.gone);
  EXPECT_EQ(last.exit_code, std::optional<int>(0));
}

}  // namespace
}  // namespace echorelay::test
