// Unix stream listeners: echo over a path and an abstract name, the socket file's mode
// and numeric owner/group, replacing a stale socket file, refusing a path a live process
// listens on, and removing the file at SIGTERM. The tests run as root, so chown works.
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "harness.hpp"

namespace echorelay::test {
namespace {

std::string unix_config(const std::string& name, const std::string& address, const std::string& extra = "") {
  return "[daemon]\ndrain_timeout = \"2s\"\n\n[[listener]]\nname = \"" + name +
         "\"\nprotocol = \"unix\"\naddress = \"" + address + "\"\nhandler = \"echo\"\n" + extra;
}

// Binds (and optionally listens on) a Unix socket at `path`; returns the socket.
Fd bind_unix(const std::string& path, bool listen) {
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::strncpy(sun.sun_path, path.c_str(), sizeof sun.sun_path - 1);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sun), sizeof sun) != 0) {
    ADD_FAILURE() << "bind " << path << ": " << std::strerror(errno);
    return {};
  }
  if (listen && ::listen(fd.get(), 16) != 0) ADD_FAILURE() << "listen: " << std::strerror(errno);
  return fd;
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

TEST(Unix, EchoesOverPathSocket) {
  TempDir dir;
  std::string path = dir.file("echo.sock");
  Daemon daemon(unix_config("u", path));
  ASSERT_TRUE(daemon.start());
  EXPECT_EQ(daemon.address("u"), path);
  EXPECT_EQ(daemon.protocol("u"), "unix");
  Fd c = connect_to(path);
  ASSERT_TRUE(c);
  EXPECT_TRUE(echo_line(c.get(), "over a path\n"));
}

TEST(Unix, EchoesOverAbstractSocket) {
  std::string name = "@" + unique_name("echorelay-it");
  Daemon daemon(unix_config("abs", name));
  ASSERT_TRUE(daemon.start());
  EXPECT_EQ(daemon.address("abs"), name);
  Fd c = connect_to(name);
  ASSERT_TRUE(c);
  EXPECT_TRUE(echo_line(c.get(), "abstract\n"));
}

TEST(Unix, AppliesModeToSocketFile) {
  TempDir dir;
  std::string path = dir.file("mode.sock");
  Daemon daemon(unix_config("u", path, "mode = \"0600\"\n"));
  ASSERT_TRUE(daemon.start());
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0) << std::strerror(errno);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u) << std::oct << (st.st_mode & 07777);

  Daemon daemon2(unix_config("u", dir.file("mode2.sock"), "mode = \"0660\"\n"));
  ASSERT_TRUE(daemon2.start());
  ASSERT_EQ(::stat(dir.file("mode2.sock").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0660u) << std::oct << (st.st_mode & 07777);
}

TEST(Unix, AppliesNumericOwnerAndGroup) {
  TempDir dir;
  std::string path = dir.file("owned.sock");
  Daemon daemon(unix_config("u", path, "owner = \"4321\"\ngroup = \"5432\"\n"));
  ASSERT_TRUE(daemon.start());
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0) << std::strerror(errno);
  EXPECT_EQ(st.st_uid, 4321u);
  EXPECT_EQ(st.st_gid, 5432u);
  Fd c = connect_to(path);  // root may still connect
  ASSERT_TRUE(c);
  EXPECT_TRUE(echo_line(c.get(), "owned\n"));
}

TEST(Unix, ReplacesStaleSocketFile) {
  TempDir dir;
  std::string path = dir.file("stale.sock");
  {
    // Bound and closed: the file stays behind with nobody listening.
    Fd stale = bind_unix(path, false);
    ASSERT_TRUE(stale);
  }
  ASSERT_TRUE(exists(path));
  Daemon daemon(unix_config("u", path));
  ASSERT_TRUE(daemon.start());
  Fd c = connect_to(path);
  ASSERT_TRUE(c);
  EXPECT_TRUE(echo_line(c.get(), "replaced\n"));
}

TEST(Unix, RefusesPathALiveProcessListensOn) {
  TempDir dir;
  std::string path = dir.file("live.sock");
  Fd live = bind_unix(path, true);
  ASSERT_TRUE(live);
  Daemon daemon(unix_config("u", path));
  ASSERT_TRUE(daemon.spawn());
  auto code = daemon.wait_exit(kReadyTimeout);
  ASSERT_TRUE(code.has_value()) << "daemon kept running on a path someone else serves";
  EXPECT_NE(*code, 0);
  EXPECT_FALSE(daemon.saw_notify("READY=1"));
  EXPECT_NE(daemon.log().find(path), std::string::npos) << "the message must name the path:\n" << daemon.log();
  // The other process's socket is intact: its file still exists and accepts.
  EXPECT_TRUE(exists(path));
  Fd c = connect_to(path);
  EXPECT_TRUE(c);
}

TEST(Unix, RemovesSocketFileOnSigterm) {
  TempDir dir;
  std::string path = dir.file("gone.sock");
  Daemon daemon(unix_config("u", path));
  ASSERT_TRUE(daemon.start());
  ASSERT_TRUE(exists(path));
  ASSERT_TRUE(daemon.signal(SIGTERM));
  EXPECT_EQ(daemon.wait_exit(), 0);
  EXPECT_FALSE(exists(path));
}

// Under a manager with an fd store ($FDSTORE > 0, as systemd sets it), the stored
// socket outlives the process and a `systemctl restart` hands it back: its file must
// stay, or the restarted service listens on a socket nobody can find.
TEST(Unix, KeepsSocketFileOnSigtermWhenTheFdStoreKeepsTheSocket) {
  TempDir dir;
  std::string path = dir.file("kept.sock");
  Daemon::Options options;
  options.env = {"FDSTORE=64"};
  Daemon daemon(unix_config("u", path), options);
  ASSERT_TRUE(daemon.start());
  ASSERT_TRUE(daemon.signal(SIGTERM));
  EXPECT_EQ(daemon.wait_exit(), 0);
  EXPECT_TRUE(exists(path));
  EXPECT_NE(daemon.log().find("u: the socket file stays at exit"), std::string::npos) << daemon.log();
  // A later start clears the stale file and binds again.
  Daemon next(unix_config("u", path));
  ASSERT_TRUE(next.start());
  EXPECT_NE(next.log().find("removing stale socket file " + path), std::string::npos) << next.log();
}

}  // namespace
}  // namespace echorelay::test

namespace echorelay::test {
namespace {

// SO_PEERCRED allow lists: the only guard an abstract socket can have. The tests run
// as root (uid 0, gid 0).
TEST(Unix, PeerCredentialsOutsideTheAllowListsAreRefusedAndCounted) {
  const std::string name = "@" + unique_name("echorelay-it");
  Daemon daemon(R"(
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "guarded"
protocol = "unix"
address = ")" + name + R"("
allow_uids = [4242]
allow_gids = [4343]

[[listener]]
name = "open-to-root"
protocol = "unix"
address = ")" + name + R"(-root"
allow_uids = [0]
)");
  ASSERT_TRUE(daemon.start());

  Fd refused = connect_to(name);
  ASSERT_TRUE(refused);
  (void)send_all(refused.get(), "let me in\n");
  std::string received;
  EXPECT_TRUE(expect_closed(refused.get(), kIoTimeout, &received));
  EXPECT_EQ(received, "");
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_refused_total",
                          {{"listener", "guarded"}, {"reason", "peer_not_allowed"}}, 1));

  Fd allowed = connect_to(daemon.address("open-to-root"));
  ASSERT_TRUE(allowed);
  EXPECT_TRUE(echo_line(allowed.get(), "uid 0 is on the list\n"));
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_refused_total",
                          {{"listener", "open-to-root"}, {"reason", "peer_not_allowed"}}, 0));
}

}  // namespace
}  // namespace echorelay::test
