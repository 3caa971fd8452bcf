// Socket activation through the real /usr/bin/systemd-socket-activate (a TCP socket and
// a Unix socket on a path, named by --fdname), and the systemd notify protocol as a
// service manager sees it on its NOTIFY_SOCKET: MAINPID, READY, STATUS, FDSTORE with
// the listening fds, WATCHDOG, RELOADING with MONOTONIC_USEC, STOPPING.
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <thread>

#include "harness.hpp"
#include "lifecycle_support.hpp"

namespace echorelay::test {
namespace {

constexpr const char* kSocketActivate = "/usr/bin/systemd-socket-activate";

std::string activation_config(std::uint16_t port, const std::string& unix_path) {
  return config_toml("drain_timeout = \"2s\"\nrestart_timeout = \"5s\"",
                     {{"act-tcp", "tcp", "127.0.0.1:" + std::to_string(port)},
                      {"act-unix", "unix", unix_path},
                      {"own-udp", "udp"}});
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

std::uint64_t monotonic_usec() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000u + static_cast<std::uint64_t>(ts.tv_nsec) / 1000u;
}

// FDSTORE=1 messages from `sender` since `from`: FDNAME -> addresses of the fds passed.
std::map<std::string, std::vector<std::string>> stored_fds(NotifySocket& notify, pid_t sender, std::size_t from) {
  std::map<std::string, std::vector<std::string>> out;
  for (std::size_t i = from; i < notify.size(); ++i) {
    const Notice& n = notify.at(i);
    if (n.sender != sender || !n.has("FDSTORE=1")) continue;
    auto& list = out[n.value("FDNAME").value_or("")];
    for (const auto& fd : n.fds) list.push_back(socket_address(fd.get()));
  }
  return out;
}

void expect_fd_store(NotifySocket& notify, ServiceUnderTest& svc, pid_t sender, std::size_t from) {
  auto stored = stored_fds(notify, sender, from);
  for (const std::string name : {"act-tcp", "act-unix", "own-udp"}) {
    ASSERT_EQ(stored[name].size(), 1u) << "FDSTORE for " << name << "\n" << notify.dump();
    EXPECT_EQ(stored[name][0], svc.address(name)) << "stored fd of " << name << " is another socket";
  }
  ASSERT_EQ(stored["+admin"].size(), 1u) << notify.dump();
  EXPECT_EQ(stored["+admin"][0], svc.admin());
}

TEST(SocketActivation, AdoptsSocketsFromSystemdSocketActivateAndSpeaksTheNotifyProtocol) {
  TempDir sockets;
  const std::string unix_path = sockets.file("activated.sock");
  std::unique_ptr<ServiceUnderTest> svc;
  std::uint16_t port = 0;
  Fd first;
  // The activator needs a fixed port: pick a free one and retry if someone takes it.
  for (int attempt = 0; attempt < 5 && !svc; ++attempt) {
    ::unlink(unix_path.c_str());
    port = pick_free_port();
    ASSERT_NE(port, 0);
    auto candidate = std::make_unique<ServiceUnderTest>(activation_config(port, unix_path));
    auto& o = candidate->options();
    o.notify_in_env = false;
    o.prefix = {kSocketActivate,
                "-l", "127.0.0.1:" + std::to_string(port), "--fdname=act-tcp",
                "-l", unix_path, "--fdname=act-unix",
                "-E", "NOTIFY_SOCKET=" + candidate->notify_path(),
                "-E", "WATCHDOG_USEC=300000"};
    // The activator starts the service on the first connection: that connection waits
    // in the accept queue of a socket the daemon has not adopted yet.
    o.after_spawn = [&first, port] {
      wait_until(
          [&] {
            int err = 0;
            first = try_connect("127.0.0.1:" + std::to_string(port), &err, 1000ms);
            return first.valid();
          },
          3000ms);
      if (first) {
        EXPECT_TRUE(send_all(first.get(), "first connection\n"));
      }
    };
    auto started = candidate->start();
    if (started) {
      svc = std::move(candidate);
    } else if (attempt == 4 || std::string(started.message()).find("in use") == std::string::npos) {
      // Only a port taken between picking and binding is worth another try.
      FAIL() << started.message();
    }
  }
  auto& notify = svc->notify();
  const pid_t pid = svc->main_pid();
  // systemd-socket-activate execs the service: the pid it was given is the service's.
  EXPECT_EQ(pid, svc->first_pid());
  EXPECT_EQ(svc->address("act-tcp"), "127.0.0.1:" + std::to_string(port));
  EXPECT_EQ(svc->address("act-unix"), unix_path);

  // READY=1 carries MAINPID and a STATUS line, and comes from the service itself.
  auto ready = notify.wait_line("READY=1", 0, 0ms);
  ASSERT_TRUE(ready);
  EXPECT_EQ(notify.at(*ready).value("MAINPID"), std::optional<std::string>(std::to_string(pid)));
  EXPECT_EQ(notify.at(*ready).sender, pid);
  EXPECT_EQ(notify.at(*ready).value("STATUS").value_or("").rfind("serving 3 listeners", 0), 0u)
      << notify.at(*ready).text;
  // Every listening socket (and the admin one) is in the fd store, before READY=1.
  expect_fd_store(notify, *svc, pid, 0);
  for (std::size_t i = *ready; i < notify.size(); ++i)
    EXPECT_FALSE(notify.at(i).has("FDSTORE=1")) << "FDSTORE after READY=1";

  // The connection that triggered the activation is served, and the adopted sockets serve.
  ASSERT_TRUE(first);
  EXPECT_EQ(recv_exact(first.get(), 17), "first connection\n");
  first.reset();
  Fd tcp = connect_to(svc->address("act-tcp"));
  ASSERT_TRUE(tcp);
  EXPECT_TRUE(echo_line(tcp.get(), "activated tcp\n"));
  Fd unix_client = connect_to(unix_path);
  ASSERT_TRUE(unix_client);
  EXPECT_TRUE(echo_line(unix_client.get(), "activated unix\n"));
  Fd udp = udp_connect(svc->address("own-udp"));
  ASSERT_TRUE(udp_send(udp.get(), "own udp"));
  EXPECT_EQ(udp_recv(udp.get()), std::optional<std::string>("own udp"));

  // WATCHDOG_USEC=300000: WATCHDOG=1 about every 100 ms, from the service.
  const std::size_t watch_from = notify.size();
  std::this_thread::sleep_for(1000ms);  // the window the pets are counted in
  int pets = 0;
  for (std::size_t i = watch_from; i < notify.size(); ++i)
    if (notify.at(i).has("WATCHDOG=1") && notify.at(i).sender == pid) ++pets;
  EXPECT_GE(pets, 5) << "WATCHDOG=1 every WATCHDOG_USEC/3 expected";
  EXPECT_LE(pets, 15);

  // SIGHUP: RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, now), then the successor
  // reports its MAINPID, READY and its own fd store; the sockets stay the same.
  const std::uint64_t before_usec = monotonic_usec();
  const std::size_t hup_from = notify.size();
  auto r = svc->hot_restart(10000ms);
  ASSERT_TRUE(r.ok) << r.status;
  const pid_t successor = r.pid;
  EXPECT_NE(successor, pid);
  auto reloading = notify.wait_line("RELOADING=1", hup_from, 0ms);
  ASSERT_TRUE(reloading) << notify.dump();
  EXPECT_EQ(notify.at(*reloading).sender, pid);
  auto usec = notify.at(*reloading).value("MONOTONIC_USEC");
  ASSERT_TRUE(usec);
  const std::uint64_t reload_usec = std::strtoull(usec->c_str(), nullptr, 10);
  EXPECT_GE(reload_usec, before_usec);
  EXPECT_LE(reload_usec, monotonic_usec());
  auto successor_ready = notify.wait_for(
      [successor](const Notice& n) { return n.has("READY=1") && n.sender == successor; }, hup_from, 0ms);
  ASSERT_TRUE(successor_ready);
  EXPECT_EQ(notify.at(*successor_ready).value("MAINPID"), std::optional<std::string>(std::to_string(successor)));
  EXPECT_GT(*successor_ready, *reloading);
  expect_fd_store(notify, *svc, successor, hup_from);
  EXPECT_EQ(svc->address("act-tcp"), "127.0.0.1:" + std::to_string(port));

  // The old process drains (idle connections closed) and exits 0, silently.
  EXPECT_TRUE(expect_closed(tcp.get()));
  EXPECT_TRUE(expect_closed(unix_client.get()));
  // A client closes on EOF; the old process then need not linger for our FIN.
  tcp.reset();
  unix_client.reset();
  EXPECT_EQ(svc->wait_exit(10000ms), std::optional<int>(0));
  // A watchdog tick already due when the successor's ready line arrived may still pet
  // once; after the old process took in the handover it says nothing more.
  int late_pets = 0;
  for (std::size_t i = *successor_ready; i < notify.size(); ++i) {
    const Notice& n = notify.at(i);
    if (n.sender != pid) continue;
    if (n.text == "WATCHDOG=1" && ++late_pets == 1) continue;
    ADD_FAILURE() << "old process spoke after handover: " << n.text;
  }
  // The successor pets the watchdog too (WATCHDOG_PID must not pin it to the old pid).
  EXPECT_TRUE(notify.wait_for([successor](const Notice& n) { return n.has("WATCHDOG=1") && n.sender == successor; },
                              *successor_ready, 1000ms));

  Fd tcp2 = connect_to(svc->address("act-tcp"));
  ASSERT_TRUE(tcp2);
  EXPECT_TRUE(echo_line(tcp2.get(), "successor tcp\n"));
  Fd unix2 = connect_to(unix_path);
  ASSERT_TRUE(unix2);
  EXPECT_TRUE(echo_line(unix2.get(), "successor unix\n"));
  tcp2.reset();
  unix2.reset();

  // SIGTERM: STOPPING=1 from the current main process, exit 0.
  const std::size_t term_from = notify.size();
  ASSERT_TRUE(svc->signal(SIGTERM));
  auto stopping = notify.wait_line("STOPPING=1", term_from, 3000ms);
  ASSERT_TRUE(stopping) << notify.dump();
  EXPECT_EQ(notify.at(*stopping).sender, successor);
  Gone g = svc->wait_main_exit(5000ms);
  EXPECT_TRUE(g.gone);
  EXPECT_EQ(g.exit_code, std::optional<int>(0));
  // The Unix socket file belongs to the socket unit (here: the activator), not to us.
  EXPECT_TRUE(exists(unix_path)) << "daemon removed a socket file it did not create";
}

}  // namespace
}  // namespace echorelay::test
