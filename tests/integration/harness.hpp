// Test harness for the integration tests: the one runner of the real echorelayd (a
// private temp dir, its own NOTIFY_SOCKET read by one reader, the bound ports from
// --bound-addresses-file, hot restarts followed through MAINPID), process spawning, and
// client helpers (TCP/Unix/UDP/HTTP) where every I/O has a deadline.
// It does not link or call daemon code: the binary is a black box spoken to over sockets.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace echorelay::test {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;

inline constexpr Millis kIoTimeout = 5000ms;
inline constexpr Millis kReadyTimeout = 5000ms;
inline constexpr Millis kExitTimeout = 10000ms;

// A move-only owned file descriptor; closes on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// mkdtemp under /tmp; removed recursively at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string file(std::string_view name) const { return path_ + "/" + std::string(name); }

 private:
  std::string path_;
};

// A string unique in this machine for this run (pid + counter), for abstract socket
// names, netns names and multicast groups so parallel test processes do not collide.
std::string unique_name(std::string_view prefix);

// Polls `condition` every few milliseconds until it holds or `timeout` expires.
bool wait_until(const std::function<bool()>& condition, Millis timeout = kIoTimeout, Millis interval = Millis(10));

std::string read_file(const std::string& path);
// Entries of /proc/PID/fd: what a process holds open, seen from outside (0 if gone).
std::size_t open_fds(pid_t pid);
// utime + stime of every thread of `pid`, in clock ticks (/proc/PID/stat); -1 if gone.
long cpu_ticks(pid_t pid);
// True when `pid` holds an fd on the same socket as our `fd` (a shared listening socket:
// an fd store copy, an inherited one), from the socket inode in /proc/PID/fd.
bool holds_socket(pid_t pid, int fd);
// True when `pid` holds an fd on the socket with this inode.
bool holds_inode(pid_t pid, unsigned long inode);
// True when every thread of `pid` is stopped (SIGSTOP took effect): after that it writes
// nothing more, to its log or anywhere. False when there is no such process.
bool stopped(pid_t pid);
// The lines of `text` without their '\n'.
std::vector<std::string> split_lines(std::string_view text);
// The last `n` characters of `text`, marked "..." when cut (for failure messages).
std::string tail(const std::string& text, std::size_t n);
void write_file(const std::string& path, std::string_view content);

// Result of a finished child: exit code, or 128 + signal number when killed.
struct ProcessResult {
  std::optional<int> exit_code;  // nullopt = did not finish within the timeout (killed)
  std::string output;            // stdout and stderr, interleaved
};

// Runs argv (argv[0] is a path) to completion with a deadline; output captured.
ProcessResult run_process(const std::vector<std::string>& argv, Millis timeout = kIoTimeout * 2);
// /usr/sbin/ip with `args` (network namespaces and veth pairs the tests create).
ProcessResult ip_command(const std::vector<std::string>& args);

// ---- configs ----

// One [[listener]] table: `keys` are further lines ("handler = \"relay\"\n...").
struct ListenerToml {
  ListenerToml(std::string name_, std::string protocol_, std::string address_ = "127.0.0.1:0", std::string keys_ = "")
      : name(std::move(name_)), protocol(std::move(protocol_)), address(std::move(address_)), keys(std::move(keys_)) {}
  std::string name;
  std::string protocol;
  std::string address;
  std::string keys;
};
// The config most tests spell out: a [daemon] table with `daemon_keys` (none when
// empty), an [admin] endpoint on 127.0.0.1:0 when `admin`, then the listeners.
std::string config_toml(const std::string& daemon_keys, const std::vector<ListenerToml>& listeners,
                        bool admin = true);

// ---- processes ----

struct Spawned {
  pid_t pid = -1;
  Fd pidfd;       // pidfd_open of pid: pollable, readable once the child exited
  int error = 0;  // errno when pid < 0
};
// fork + exec of `argv` (argv[0] is a path) with stdin from /dev/null and stdout+stderr
// appended to `output_path`, inside /var/run/netns/NETNS when `netns` is set. The
// environment is ours plus `env` ("K=V" entries replace ours); our own NOTIFY_SOCKET,
// LISTEN_* and WATCHDOG_* never pass, so no child talks to the test runner's manager.
// PDEATHSIG kills the child if the test process dies.
Spawned spawn_process(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                      const std::string& output_path, const std::string& netns = "");
// Shell-style status of a reaped child: the exit code, or 128 + signal when killed.
int status_code(int wait_status);

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

// ---- the service manager's notify socket ----

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
// With `keep_fds` it keeps FDSTORE fds like systemd's fd store, honouring
// FDSTOREREMOVE=1 by name; without, passed fds are closed on arrival (a manager with
// no fd store). A thread reads it all the time, as systemd does: a datagram socket
// queues only net.unix.max_dgram_qlen messages (10 here), and a service whose
// sd_notify() finds the queue full blocks until somebody reads, which no real service
// manager makes it do. Notices are never removed, so references from at() stay valid.
class NotifySocket {
 public:
  NotifySocket(std::string path, bool keep_fds);
  ~NotifySocket();
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;
  const std::string& path() const { return path_; }
  bool valid() const { return fd_.valid(); }

  std::size_t size() const;
  const Notice& at(std::size_t i) const;
  // Every notice received so far.
  std::vector<std::reference_wrapper<const Notice>> snapshot() const;
  // Receives, on the calling thread, what is queued on the socket now: after a sender
  // exited, everything it sent is then in snapshot() (the reader thread may lag).
  void flush();

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
  bool keep_fds_;
  Fd fd_;
  Fd wake_;  // eventfd: ends read_loop
  std::mutex receive_mutex_;  // one receiver at a time, so messages keep their order
  mutable std::mutex mutex_;
  std::condition_variable arrived_;
  std::deque<Notice> messages_;
  std::thread reader_;
};

// ---- the daemon ----

// The real echorelayd, the one runner of every integration test. Construct with the
// TOML text, then start(). Owns a temp dir holding the config, the log (stdout+stderr),
// the bound-addresses file and the NOTIFY_SOCKET; knows the current main pid (from
// MAINPID= messages, so it follows hot restarts) and every pid that ever was main.
// While one runs, the test process is a child subreaper, so successors whose parent
// exited are reparented to (and reaped by) the test. The destructor SIGKILLs, by pid,
// every process of this service that still runs (spawned, main, a sender on its notify
// socket, or a descendant of one), and reaps them.
class Daemon {
 public:
  struct Options {
    std::string binary = ECHORELAYD_PATH;   // the path exec'ed (a copy for upgrade tests)
    std::vector<std::string> prefix;        // e.g. systemd-socket-activate and its flags
    std::vector<std::string> extra_args;    // after the daemon's own arguments
    std::vector<std::string> env;           // "K=V" added to the environment
    std::string netns;                      // run inside /var/run/netns/NAME when set
    bool notify_in_env = true;              // false when `prefix` passes NOTIFY_SOCKET itself
    bool bound_addresses = true;            // pass --bound-addresses-file
    std::string log_level = "debug";        // empty: the config's [log] level decides
    std::string log_format = "text";        // empty: the config's [log] format decides
    // --supervise: the first process stays the service's pid; outcomes are read from
    // the READY/STATUS it relays (it does not relay MAINPID). Otherwise --no-supervise.
    bool supervise = false;
    // Keep FDSTORE fds as systemd's fd store does (see NotifySocket).
    bool keep_stored_fds = false;
    // Called once right after the spawn, before waiting for READY=1 (e.g. to make the
    // first connection that socket activation waits for).
    std::function<void()> after_spawn;
  };

  explicit Daemon(std::string toml);
  Daemon(std::string toml, Options options);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Spawns the daemon and waits for READY=1 (with MAINPID unless supervised), failing
  // early if it exits. On success the bound addresses have been read.
  ::testing::AssertionResult start(Millis timeout = kReadyTimeout);
  // Spawns without waiting for readiness (for start-up failures).
  ::testing::AssertionResult spawn();
  // Rewrites the config file atomically (temp + rename), as an operator's deploy would.
  void write_config(const std::string& toml);

  const TempDir& dir() const { return dir_; }
  const std::string& config_path() const { return config_path_; }
  const std::string& notify_path() const { return notify_.path(); }
  const std::string& bound_path() const { return bound_path_; }
  NotifySocket& notify() { return notify_; }
  Options& options() { return options_; }  // may be changed before start()

  pid_t first_pid() const { return first_pid_; }  // the process the test spawned
  pid_t main_pid() const { return main_pid_; }    // the current MAINPID
  pid_t pid() const { return main_pid_; }         // the same, for tests that never restart
  const std::vector<pid_t>& main_pids() const { return main_pids_; }
  // The first process has not exited.
  bool running();

  // name -> address as written in the bound-addresses file ("admin" for the admin line).
  bool reload_addresses(std::string* error = nullptr);
  std::string address(const std::string& name) const;
  bool has_address(const std::string& name) const { return addresses_.count(name) != 0; }
  std::string protocol(const std::string& name) const;
  std::uint16_t port(const std::string& name) const;
  const std::map<std::string, std::string>& addresses() const { return addresses_; }
  std::string admin() const { return has_address("admin") ? address("admin") : std::string(); }

  // The text of every notify message so far (each datagram as sent, lines joined by '\n').
  std::vector<std::string> notifications();
  // True once some notify datagram contains the exact line `line` (e.g. "STOPPING=1").
  bool wait_notify(std::string_view line, Millis timeout = kIoTimeout);
  bool saw_notify(std::string_view line);

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

  // To `target`, default the main pid.
  ::testing::AssertionResult signal(int signo, pid_t target = 0);
  // Exit status of the first process (our direct child; 128 + signal when killed by
  // one), or nullopt if still running at the deadline.
  std::optional<int> wait_exit(Millis timeout = kExitTimeout);
  // Exit status of the current main process (which may not be our child until its
  // parent exited); nullopt if it did not exit or the status is unknown.
  Gone wait_main_exit(Millis timeout = kExitTimeout);

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
  std::map<std::string, std::string> protocols_;
};

// ---- addresses ----

// "127.0.0.1:40123" or "[::1]:40124" -> sockaddr. Aborts the test (ADD_FAILURE) on junk.
sockaddr_storage parse_inet(const std::string& address, socklen_t* len);
// A non-blocking TCP connection to `address` that is connected or in progress (invalid
// if connect failed at once).
Fd start_connect(const std::string& address);
bool writable(int fd, Millis timeout);
// True when the peer has closed `fd` (EOF or reset) by now; bytes read are appended.
bool peer_closed(int fd, std::string* received = nullptr);
std::uint16_t port_of(const std::string& address);
std::string format_inet(const sockaddr_storage& addr);
std::uint16_t local_port(int fd);

// ---- stream clients ----

// "host:port" / "[v6]:port" -> TCP; "/path" -> Unix; "@name" -> abstract Unix.
// Returns an invalid Fd (and records a test failure) when the connection fails.
Fd connect_to(const std::string& address, Millis timeout = kIoTimeout);
// Same, without recording a failure; `err` gets errno.
Fd try_connect(const std::string& address, int* err, Millis timeout = kIoTimeout,
               const std::function<void(int)>& before_connect = {});

::testing::AssertionResult send_all(int fd, std::string_view data, Millis timeout = kIoTimeout);
// Up to n bytes; shorter only on EOF, error or timeout.
std::string recv_exact(int fd, std::size_t n, Millis timeout = kIoTimeout);

struct RecvAll {
  std::string data;
  bool eof = false;  // clean EOF seen (false: timeout, reset or error)
  int error = 0;     // errno when the connection ended in an error
};
RecvAll recv_until_eof(int fd, Millis timeout = kIoTimeout);

// Sends `data` while reading, optionally shuts down writing after the last byte, and
// reads until EOF (or until `expect` bytes arrived when shut_wr is false).
RecvAll exchange(int fd, std::string_view data, bool shut_wr, std::size_t expect,
                 Millis timeout = kIoTimeout);

// Succeeds when the peer closes (EOF or ECONNRESET/EPIPE) within `timeout`. Bytes read
// before the close are stored in `received` when given.
::testing::AssertionResult expect_closed(int fd, Millis timeout = kIoTimeout,
                                         std::string* received = nullptr);

// True when the connection is still open and nothing is readable right now.
bool is_open_and_quiet(int fd);

// True when everything written on the TCP connection `fd` has been read by the peer
// process: nothing waits in our send queue (SIOCOUTQ) nor in the peer socket's receive
// queue (/proc/net/tcp{,6} of the calling thread's namespace). For "the daemon has the
// bytes" before a signal; a peer in another namespace is not found (false).
bool read_by_peer(int fd);
// True when process `pid` holds the other end of our TCP connection `fd`: it has
// accepted it (the same namespace rule as read_by_peer).
bool accepted_by(pid_t pid, int fd);

// A round trip of one line: sends `line` (which must end in '\n') and reads it back.
::testing::AssertionResult echo_line(int fd, std::string_view line, Millis timeout = kIoTimeout);

// ---- datagrams ----

// A UDP socket bound to `local` (default: an ephemeral port on the loopback of the
// address family of `peer`) and connected to `peer` (so it only hears the daemon).
Fd udp_connect(const std::string& peer, const std::string& local = "");
// Unconnected UDP socket bound to `local` ("127.0.0.1:0" etc.).
Fd udp_bind(const std::string& local);
::testing::AssertionResult udp_send(int fd, std::string_view data);
::testing::AssertionResult udp_send_to(int fd, const std::string& peer, std::string_view data);
// One datagram (possibly empty) or nullopt on timeout.
std::optional<std::string> udp_recv(int fd, Millis timeout = kIoTimeout,
                                    sockaddr_storage* from = nullptr);

// ---- admin endpoint ----

struct HttpResponse {
  int status = 0;
  std::string body;
};
std::optional<HttpResponse> http_get(const std::string& address, const std::string& path,
                                     Millis timeout = kIoTimeout);

using Labels = std::map<std::string, std::string>;
// The value of metric `name` whose label set is exactly `labels`, from Prometheus text.
std::optional<double> metric_value(std::string_view exposition, std::string_view name,
                                   const Labels& labels);
// Fetches /metrics from `admin` and returns the metric (nullopt if absent or unreachable).
std::optional<double> fetch_metric(const std::string& admin, std::string_view name,
                                   const Labels& labels);
// fetch_metric, or `fallback` when the metric is absent or the endpoint unreachable.
double metric_or(const std::string& admin, std::string_view name, const Labels& labels, double fallback = -1);
// Polls /metrics until the metric equals `expected`; on timeout the failure message
// reports the last value seen.
::testing::AssertionResult wait_metric(const std::string& admin, std::string_view name,
                                       const Labels& labels, double expected,
                                       Millis timeout = kIoTimeout);

}  // namespace echorelay::test
