// Support for the lifecycle tests (hot restart, drain, supervisor, socket activation,
// binary upgrade): the runner's lifecycle defaults (ServiceUnderTest), a config with one
// listener of each kind, and load generators that classify every request outcome. The
// runner and the notify socket themselves are harness.hpp's.
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

// Two workers, drain and restart timeouts of 5 s, an admin endpoint and three
// listeners: "tcp" and "udp" on 127.0.0.1, "unix" at `unix_path`.
std::string tcp_unix_udp_config(const std::string& unix_path);

// The runner with the lifecycle tests' defaults: info logging (a restart storm at debug
// would mostly measure the log), and the fd store kept as systemd keeps it. Nothing else:
// the process handling is Daemon's.
struct ServiceOptions : Daemon::Options {
  ServiceOptions() {
    log_level = "info";
    keep_stored_fds = true;
  }
};

class ServiceUnderTest : public Daemon {
 public:
  using Options = ServiceOptions;
  explicit ServiceUnderTest(std::string toml) : Daemon(std::move(toml), Options{}) {}
  ServiceUnderTest(std::string toml, Options options) : Daemon(std::move(toml), std::move(options)) {}
};

// Options that run the service from a copy of echorelayd in `bin_dir`
// (options.binary), which a test may then replace on disk or make unexecutable.
ServiceOptions from_copied_binary(const TempDir& bin_dir);

// ---- load generators ----

// Outcome of one request/response exchange on a stream connection.
enum class Outcome {
  Ok,            // the exact bytes came back
  CleanClose,    // EOF after the request was sent, before any byte of the answer
  ClosedUnsent,  // EOF before any byte was sent: the server's FIN came first, nothing crossed
  NotSent,       // EPIPE before any byte was taken: the peer had shut its read side
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
  // Counted apart from eof_after_send: on a Unix connection that already had an answer,
  // a request taken by the kernel and then met by the server's FIN. AF_UNIX cannot send
  // an answer and a FIN as one (TCP corks them into one segment), so the echo shuts the
  // read side first: a request after that fails at send with EPIPE (a clean close). A
  // count here means that ordering broke; the tests expect zero.
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
