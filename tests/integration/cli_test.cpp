// The command line as operators and scripts use it: --check exit codes and the exact
// `FILE:LINE:COL: KEY: message` diagnostics, exit 78 when started with a bad config, and
// --version. Diagnostic text is the one place tests read output: users read it.
#include <signal.h>

#include <sstream>

#include "harness.hpp"

namespace echorelay::test {
namespace {

const char* kGood = R"([daemon]
workers = 1

[[listener]]
name = "echo"
protocol = "tcp"
address = "127.0.0.1:0"
handler = "echo"
framing = "length-prefixed"
)";

// Line 6 column 11 is the value of `framing`; line 12 column 13 the value of max_frame.
const char* kBad = R"([[listener]]
name = "echo"
protocol = "tcp"
address = "127.0.0.1:0"
handler = "echo"
framing = "lines"

[[listener]]
name = "echo2"
protocol = "tcp"
address = "127.0.0.2:0"
max_frame = "lots"
)";

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// True when some output line starts with `prefix` and has a message after it.
bool has_diagnostic(const std::string& output, const std::string& prefix) {
  for (const auto& line : lines_of(output))
    if (line.rfind(prefix, 0) == 0 && line.size() > prefix.size()) return true;
  return false;
}

TEST(Cli, CheckAcceptsShippedConfig) {
  auto r = run_process({ECHORELAYD_PATH, "--check", "-c", ECHORELAY_SOURCE_DIR "/config/echorelay.toml"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST(Cli, CheckAcceptsValidFile) {
  TempDir dir;
  std::string path = dir.file("good.toml");
  write_file(path, kGood);
  auto r = run_process({ECHORELAYD_PATH, "--check", "-c", path});
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST(Cli, CheckRejectsInvalidFileWithEveryDiagnostic) {
  TempDir dir;
  std::string path = dir.file("bad.toml");
  write_file(path, kBad);
  auto r = run_process({ECHORELAYD_PATH, "--check", "-c", path});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  // Both problems in one run: the validator collects before reporting.
  EXPECT_TRUE(has_diagnostic(r.output, path + ":6:11: listener[\"echo\"].framing: ")) << r.output;
  EXPECT_TRUE(has_diagnostic(r.output, path + ":12:13: listener[\"echo2\"].max_frame: ")) << r.output;
}

TEST(Cli, CheckNamesAnUnknownKey) {
  TempDir dir;
  std::string path = dir.file("unknown.toml");
  write_file(path, std::string(kGood) + "bogus_key = 1\n");
  auto r = run_process({ECHORELAYD_PATH, "--check", "-c", path});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  bool found = false;
  for (const auto& line : lines_of(r.output))
    if (line.rfind(path + ":10:", 0) == 0 && line.find("bogus_key") != std::string::npos) found = true;
  EXPECT_TRUE(found) << r.output;
}

TEST(Cli, StartingWithBadConfigExits78WithDiagnostics) {
  Daemon daemon(kBad);
  ASSERT_TRUE(daemon.spawn());
  auto code = daemon.wait_exit(kReadyTimeout);
  ASSERT_TRUE(code.has_value()) << "daemon kept running with a bad config";
  EXPECT_EQ(*code, 78);
  EXPECT_FALSE(daemon.saw_notify("READY=1"));
  EXPECT_TRUE(has_diagnostic(daemon.log(), daemon.config_path() + ":6:11: listener[\"echo\"].framing: ")) << daemon.log();
}

TEST(Cli, StartingWithMissingConfigFails) {
  TempDir dir;
  auto r = run_process({ECHORELAYD_PATH, "-c", dir.file("does-not-exist.toml")});
  ASSERT_TRUE(r.exit_code.has_value());
  EXPECT_NE(*r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("does-not-exist.toml"), std::string::npos) << r.output;
}

TEST(Cli, VersionPrintsVersionAndExitsZero) {
  auto r = run_process({ECHORELAYD_PATH, "--version"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(r.output.empty());
#ifdef ECHORELAY_VERSION
  EXPECT_NE(r.output.find(ECHORELAY_VERSION), std::string::npos) << r.output;
#endif
}

// [log] format = "json": one JSON object per line with time, level, pid and msg, and a
// message holding quotes and backslashes (here a socket path) escaped, so a log
// shipper can parse every line.
TEST(Cli, JsonLogsAreOneEscapedObjectPerLine) {
  TempDir sockets;
  const std::string path = sockets.file("q\"uote\\d.sock");
  std::string toml_path = path;
  for (std::size_t i = 0; i < toml_path.size(); ++i) {
    if (toml_path[i] == '"' || toml_path[i] == '\\') toml_path.insert(i++, 1, '\\');
  }
  Daemon::Options options;
  options.log_level = "";
  options.log_format = "";
  Daemon daemon(R"(
[log]
level = "info"
format = "json"

[[listener]]
name = "u"
protocol = "unix"
address = ")" + toml_path + R"("
)",
                options);
  ASSERT_TRUE(daemon.start());
  ASSERT_TRUE(daemon.signal(SIGTERM));
  EXPECT_EQ(daemon.wait_exit(), std::optional<int>(0));
  const std::string pid = std::to_string(daemon.pid());
  std::istringstream lines(daemon.log());
  std::string line;
  int objects = 0;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    ++objects;
    EXPECT_EQ(line.rfind(R"({"time":")", 0), 0u) << line;
    EXPECT_NE(line.find(R"(Z","level":")"), std::string::npos) << line;
    EXPECT_NE(line.find(R"(","pid":)" + pid + R"(,"msg":")"), std::string::npos) << line;
    EXPECT_EQ(line.substr(line.size() - 2), "\"}") << line;
  }
  EXPECT_GE(objects, 3);
  const std::string log = daemon.log();
  EXPECT_NE(log.find(R"("level":"info","pid":)" + pid + R"(,"msg":"echorelayd )"), std::string::npos) << log;
  EXPECT_NE(log.find(R"(q\"uote\\d.sock as u")"), std::string::npos) << "path not escaped: " << log;
}

}  // namespace
}  // namespace echorelay::test
