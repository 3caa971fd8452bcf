// Test harness for the integration tests: runs the real echorelayd in a private temp
// dir with its own NOTIFY_SOCKET, learns the bound ports from --bound-addresses-file,
// and offers client helpers (TCP/Unix/UDP/HTTP) where every I/O has a deadline.
// It does not link or call daemon code: the binary is a black box spoken to over sockets.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
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

// The real daemon. Construct with the TOML text, then start(). Owns the temp dir
// holding the config, the log (stdout+stderr), the bound-addresses file and the
// notify socket. The destructor SIGKILLs the daemon (its own pid only) if it still runs.
class Daemon {
 public:
  struct Options {
    std::vector<std::string> extra_args;  // appended to the command line
    std::string netns;                    // run inside /var/run/netns/NAME when set
    std::vector<std::string> extra_env;   // NAME=VALUE, beside NOTIFY_SOCKET
    std::string log_level = "debug";
    std::string log_format = "text";  // empty: the config's [log] format decides
  };

  explicit Daemon(std::string toml);
  Daemon(std::string toml, Options options);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Spawns the daemon and waits for READY=1 (kReadyTimeout), failing early if it exits.
  // On success the bound addresses have been read.
  ::testing::AssertionResult start();
  // Spawns without waiting for readiness (for start-up failures).
  ::testing::AssertionResult spawn();

  const TempDir& dir() const { return dir_; }
  const std::string& config_path() const { return config_path_; }
  pid_t pid() const { return pid_; }
  bool running();

  // name -> address as written in the bound-addresses file ("admin" for the admin line).
  std::string address(const std::string& name) const;
  std::string protocol(const std::string& name) const;
  std::uint16_t port(const std::string& name) const;
  const std::map<std::string, std::string>& addresses() const { return addresses_; }
  std::string admin() const { return address("admin"); }

  // Notify messages received so far (each datagram as sent, lines joined by '\n').
  const std::vector<std::string>& notifications();
  // True once some notify datagram contains the exact line `line` (e.g. "STOPPING=1").
  bool wait_notify(std::string_view line, Millis timeout = kIoTimeout);
  bool saw_notify(std::string_view line);

  ::testing::AssertionResult signal(int signo);
  // Exit code (128 + signal when killed by one), or nullopt if still running at the deadline.
  std::optional<int> wait_exit(Millis timeout = kExitTimeout);

  std::string log() const;

 private:
  void drain_notify(Millis timeout);
  bool read_bound_addresses(std::string* error);

  TempDir dir_;
  std::string toml_;
  Options options_;
  std::string config_path_;
  std::string log_path_;
  std::string bound_path_;
  std::string notify_path_;
  Fd notify_;
  Fd pidfd_;
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
  std::vector<std::string> messages_;
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
