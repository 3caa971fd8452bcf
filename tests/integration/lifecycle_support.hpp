// Support for the lifecycle tests (hot restart, drain, supervisor, socket activation,
// binary upgrade): a daemon runner that follows the service across successors (MAINPID),
// a notify socket that keeps every message with its sender pid and passed fds, and load
// generators that classify every request outcome. Builds on harness.hpp; does not
// change it. The runner makes the test process a child subreaper while a daemon runs,
// so successors whose parent exited are reparented to (and reaped by) the test.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "harness.hpp"

namespace echorelay::test {

// One datagram received on the test's NOTIFY_SOCKET.
struct Notice {
  std::string text;           // as sent, trailing newlines removed
  pid_t sender = 0;           // from SCM_CREDENTIALS
  std::vector<Fd> fds;        // from SCM_RIGHTS (FDSTORE=1), owned by the test
  Clock::time_point at{};

  bool has(std::string_view line) const;                        // exact line present
  std::optional<std::string> value(std::string_view key) const;  // "KEY=value" -> value
};

// A test-owned AF_UNIX datagram socket with SO_PASSCRED: the service's NOTIFY_SOCKET.
// Keeps FDSTORE fds like systemd's fd store, honouring FDSTOREREMOVE=1 by name.
// A thread reads it all the time, as systemd does: a datagram socket queues only
// net.unix.max_dgram_qlen messages (10 here), and a service whose sd_notify() finds
// the queue full blocks until somebody reads, which no real service manager makes it do.
// Notices are never removed, so references from at() stay valid.
class NotifySocket {
 public:
  explicit NotifySocket(std::string path);
  ~NotifySocket();
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;
  const std::string& path() const { return path_; }
  bool valid() const { return fd_.valid(); }

  std::size_t size() const;
  const Notice& at(std::size_t i) const;
  // Every notice received so far.
  std::vector<std::reference_wrapper<const Notice>> snapshot() const;

  // Index of the first message at or after `from` matching `pred`, waiting up to `timeout`.
  std::optional<std::size_t> wait_for(const std::function<bool(const Notice&)>& pred, std::size_t from,
                                      Millis timeout);
  // Convenience: first message at or after `from` holding the exact line.
  std::optional<std::size_t> wait_line(std::string_view line, std::size_t from, Millis timeout);
  // Closes every fd received (as systemd flushes the fd store when the service stops).
  // Until then the test holds the stored listening sockets open, like systemd does.
  void release_fds();
  // Every message as "[pid] text", for failure output.
  std::string dump() const;

 private:
  void read_loop();
  void receive_queued();

  std::string path_;
  Fd fd_;
  Fd wake_;  // eventfd: ends read_loop
  mutable std::mutex mutex_;
  std::condition_variable arrived_;
  std::deque<Notice> messages_;
  std::thread reader_;
};

// Two workers, drain and restart timeouts of 5 s, an admin endpoint and three
// listeners: "tcp" and "udp" on 127.0.0.1, "unix" at `unix_path`.
std::string tcp_unix_udp_config(const std::string& unix_path);

// How a process we watched ended.
struct Gone {
  bool gone = false;              // no longer running (exited and reaped, or a zombie)
  std::optional<int> exit_code;   // known when the test reaped it (128 + signal if killed)
};

// Waits until `pid` has exited. Reaps it when it is our child (directly or by the
// subreaper rule); a zombie of someone else counts as exited.
Gone wait_gone(pid_t pid, Millis timeout);
// 'R', 'S', 'Z', ... from /proc/PID/stat, or 0 when there is no such process.
char process_state(pid_t pid);
pid_t parent_of(pid_t pid);
// Every process whose parent is `parent` (zombies included), from /proc.
std::vector<pid_t> children_of(pid_t parent);

// The real daemon followed across hot restarts. Writes its config into its own temp
// dir, owns the NOTIFY_SOCKET, knows the current main pid (from MAINPID= messages)
// and every pid that ever was main. The destructor SIGKILLs, by pid, every known
// process of this service that still runs, and reaps them.
class ServiceUnderTest {
 public:
  struct Options {
    std::string binary = ECHORELAYD_PATH;   // the path exec'ed (a copy for upgrade tests)
    std::vector<std::string> prefix;        // e.g. systemd-socket-activate and its flags
    std::vector<std::string> extra_args;    // after the daemon's own arguments
    std::vector<std::string> env;           // "K=V" added to the environment
    bool notify_in_env = true;              // false when `prefix` passes NOTIFY_SOCKET itself
    bool bound_addresses = true;            // pass --bound-addresses-file
    std::string log_level = "info";
    // --supervise: the first process stays the service's pid; outcomes are read from
    // the READY/STATUS it relays (it does not relay MAINPID).
    bool supervise = false;
    // Called once right after the spawn, before waiting for READY=1 (e.g. to make the
    // first connection that socket activation waits for).
    std::function<void()> after_spawn;
  };

  explicit ServiceUnderTest(std::string toml);
  ServiceUnderTest(std::string toml, Options options);
  ~ServiceUnderTest();
  ServiceUnderTest(const ServiceUnderTest&) = delete;
  ServiceUnderTest& operator=(const ServiceUnderTest&) = delete;

  const TempDir& dir() const { return dir_; }
  const std::string& config_path() const { return config_path_; }
  const std::string& notify_path() const { return notify_.path(); }
  const std::string& bound_path() const { return bound_path_; }
  NotifySocket& notify() { return notify_; }
  Options& options() { return options_; }  // may be changed before start()

  // Spawns and waits for READY=1 with MAINPID (or exit). Reads the bound addresses.
  ::testing::AssertionResult start(Millis timeout = kReadyTimeout);
  // Rewrites the config file atomically (temp + rename), as an operator's deploy would.
  void write_config(const std::string& toml);

  pid_t first_pid() const { return first_pid_; }  // the process the test spawned
  pid_t main_pid() const { return main_pid_; }    // the current MAINPID
  const std::vector<pid_t>& main_pids() const { return main_pids_; }

  struct Restart {
    bool ok = false;           // a new MAINPID reported READY=1
    bool failed = false;       // the old process reported "reload failed"
    pid_t pid = 0;             // the main pid afterwards
    std::string status;        // STATUS= of the deciding message
    Millis took{0};
    std::size_t reloading_index = 0;  // index of RELOADING=1 (or size at SIGHUP)
  };
  // SIGHUP to `target` (default: the main pid), then waits for the outcome: a READY=1
  // that is not "reload failed" (with a new MAINPID unless supervised), or a failure.
  Restart hot_restart(Millis timeout = 15000ms, pid_t target = 0);

  ::testing::AssertionResult signal(int signo, pid_t target = 0);
  // Exit status of the first process (our direct child); nullopt on timeout.
  std::optional<int> wait_first_exit(Millis timeout = kExitTimeout);
  // Exit status of the current main process (which may not be our child until its
  // parent exited); nullopt if it did not exit or the status is unknown.
  Gone wait_main_exit(Millis timeout = kExitTimeout);

  bool reload_addresses(std::string* error = nullptr);
  std::string address(const std::string& name) const;
  bool has_address(const std::string& name) const { return addresses_.count(name) != 0; }
  std::string admin() const { return has_address("admin") ? address("admin") : std::string(); }

  std::string log() const;

 private:
  TempDir dir_;
  Options options_;
  std::string config_path_;
  std::string log_path_;
  std::string bound_path_;
  NotifySocket notify_;
  Fd pidfd_;
  pid_t first_pid_ = -1;
  pid_t main_pid_ = -1;
  std::optional<int> first_exit_;
  std::vector<pid_t> main_pids_;
  std::map<std::string, std::string> addresses_;
  bool was_subreaper_ = false;
};

// ---- load generators ----

// Outcome of one request/response exchange on a stream connection.
enum class Outcome {
  Ok,            // the exact bytes came back
  CleanClose,    // EOF before any byte of the answer: the server closed at a boundary
  Reset,         // ECONNRESET / EPIPE
  Partial,       // EOF after part of the answer
  Wrong,         // bytes differ from the request
  Timeout,
  Error,         // another errno
};
const char* to_string(Outcome o);
// Sends `request` and reads exactly request.size() bytes back.
Outcome round_trip(int fd, std::string_view request, Millis timeout, int* err = nullptr);

struct LoadCounters {
  std::atomic<std::uint64_t> requests_ok{0};
  std::atomic<std::uint64_t> connects{0};
  std::atomic<std::uint64_t> failed_connects{0};
  std::atomic<std::uint64_t> resets{0};
  std::atomic<std::uint64_t> partial{0};
  std::atomic<std::uint64_t> wrong{0};
  std::atomic<std::uint64_t> timeouts{0};
  std::atomic<std::uint64_t> errors{0};
  // Allowed: the server closed at a request boundary, seen before the next request was
  // sent (the client reconnects and sends it there).
  std::atomic<std::uint64_t> clean_closes{0};
  // A failure: a request was sent and the answer was a clean EOF (the request is lost
  // to a client that cannot tell whether it was processed).
  std::atomic<std::uint64_t> eof_after_send{0};
  // Counted apart, and bounded by the tests rather than zero: on a Unix connection that
  // already had an answer, a request sent in the microseconds between the server's last
  // answer and its FIN, which the client cannot see coming. TCP has no such window (the
  // answer and the FIN leave in one corked segment); AF_UNIX cannot send them as one, so
  // closing a busy Unix connection at a request boundary can always meet this. Only
  // handing the live connection to the successor would close it.
  std::atomic<std::uint64_t> unix_close_crossed{0};
  std::atomic<std::uint64_t> udp_sent{0};
  std::atomic<std::uint64_t> udp_answered{0};
  std::atomic<std::uint64_t> udp_lost{0};
  std::atomic<std::uint64_t> udp_wrong{0};

  std::uint64_t failures() const;  // everything that must be zero (UDP loss aside)
};

// Client threads hammering a service until stop(). Every failure is counted and the
// first few are described, with a timestamp relative to the start.
class Load {
 public:
  Load();
  ~Load();
  Load(const Load&) = delete;
  Load& operator=(const Load&) = delete;

  // connect, one line, verify, close; `pause` between connections.
  void churn(const std::string& address, int clients, Millis pause = 10ms);
  // one connection each, ping-pong lines; a close seen before sending means reconnect.
  void persistent(const std::string& address, int clients, Millis pause = 2ms);
  // one UDP socket, one datagram in flight, `wait` per datagram, no retries.
  void udp(const std::string& address, Millis pause = 2ms, Millis wait = 1000ms);

  void stop();
  const LoadCounters& counters() const { return counters_; }
  std::string summary() const;
  std::vector<std::string> failure_notes() const;

 private:
  void note(std::string text);
  void run_churn(std::string address, int id, Millis pause);
  void run_persistent(std::string address, int id, Millis pause);
  void run_udp(std::string address, Millis pause, Millis wait);

  LoadCounters counters_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
  mutable std::mutex mu_;
  std::vector<std::string> notes_;
  Clock::time_point started_;
};

// A payload of `n` printable bytes (no '\n') that varies with `seed`.
std::string payload(std::uint64_t seed, std::size_t n);

// Copies a file (mode preserved) to `to` via a temp file and rename, so the target
// path always names a whole file: how an operator swaps a binary under a running daemon.
::testing::AssertionResult replace_file(const std::string& from, const std::string& to);
// Writes an executable script and renames it over `to`.
::testing::AssertionResult replace_with_script(const std::string& to, const std::string& script);

// A free TCP port on 127.0.0.1 (bound to 0, read, closed); may race with others.
std::uint16_t pick_free_port();

// getsockname of `fd` formatted like the bound-addresses file: "127.0.0.1:N", "[::1]:N",
// "/path" or "@name".
std::string socket_address(int fd);

}  // namespace echorelay::test
