// Helpers for the relay integration tests: scripted upstreams that run in threads of
// the test (stream: echo, silent, reset, bulk sender, send-then-half-close; datagram:
// echo + record), NetNs set-ups with an unanswered ("blackholed") route and with a
// slow link between two namespaces, a real
// dnsmasq on a loopback port with a tiny DNS client to know when it answers, and the
// daemon's RSS. Does not own the daemon runner (harness.hpp) and links no daemon code.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "harness.hpp"
#include "netns.hpp"

namespace echorelay::test {

// ---- network namespaces ----

// A NetNs with a route for the multicast range on lo and a veth pair v0/v1 with
// 198.18.0.2/24 and 2001:db8::2/64 on v0: packets to 198.18.0.1 / 2001:db8::1 go out of
// v0 to a MAC nobody owns (static neighbour entries) and vanish, so a SYN to them is
// never answered and a connect hangs (no fast "unreachable").
class RelayNetNs : public NetNs {
 public:
  static constexpr const char* kBlackhole4 = "198.18.0.1";
  static constexpr const char* kBlackhole6 = "2001:db8::1";

  RelayNetNs();
};

// Two NetNs, "daemon side" (mq0 = 198.18.0.1/24) and "peer side" (mq1 = 198.18.0.2/24),
// joined by the veth pair mq0–mq1: a link between the daemon and its clients or
// upstreams that shape() can slow down. Nothing touches the test's own namespace.
class VethNamespaces {
 public:
  static constexpr const char* kDaemonIp = "198.18.0.1";
  static constexpr const char* kPeerIp = "198.18.0.2";

  VethNamespaces();

  bool ok() const { return daemon_.ok() && peer_.ok(); }
  const std::string& error() const { return daemon_.ok() ? peer_.error() : daemon_.error(); }
  const std::string& daemon_side() const { return daemon_.name(); }
  const std::string& peer_side() const { return peer_.name(); }

  // A token bucket on the daemon side's way out (mq0 → peer side): a slow link.
  ::testing::AssertionResult shape(const std::string& rate, const std::string& limit) {
    return daemon_.shape("mq0", rate, limit);
  }

 private:
  NetNs peer_;
  NetNs daemon_;  // destroyed first: its end of the pair goes, and with it mq1
};

// ---- child processes other than the daemon ----

// fork/exec with stdout+stderr to `log_path`, inside `netns` when not empty, killed
// (SIGKILL to its own pid only) in stop()/the destructor; PDEATHSIG guards a crash.
class ChildProcess {
 public:
  ChildProcess() = default;
  ~ChildProcess() { stop(); }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  ::testing::AssertionResult start(const std::vector<std::string>& argv, const std::string& log_path,
                                   const std::string& netns = "");
  bool running();
  pid_t pid() const { return pid_; }
  ::testing::AssertionResult signal(int signo);
  void stop();

 private:
  pid_t pid_ = -1;
  Fd pidfd_;
  bool reaped_ = false;
};

// ---- scripted stream upstreams ----

enum class UpstreamMode {
  Echo,            // echo every byte; after the peer's FIN, flush then close
  Silent,          // read and discard, never answer; close after the peer's FIN
  Reset,           // accept, then close at once with an RST (SO_LINGER 0)
  Bulk,            // send `bulk_bytes` of pattern_byte() as fast as allowed, then FIN
  SendThenHalfClose  // send `greeting`, then FIN, then read until the peer's FIN
};

// The byte at offset i of the Bulk stream.
inline char pattern_byte(std::uint64_t i) { return static_cast<char>(i % 251); }

struct UpstreamOptions {
  UpstreamMode mode = UpstreamMode::Echo;
  std::uint64_t bulk_bytes = 0;
  std::string greeting;        // SendThenHalfClose
  bool record = true;          // keep the bytes received per connection
  std::string netns;           // listen inside this namespace
};

// One accepted connection as seen by the upstream.
struct UpstreamConnection {
  std::string peer;       // "127.0.0.5:41234", or "unix" for Unix peers
  std::string received;   // when recording
  std::uint64_t received_bytes = 0;
  bool eof = false;       // the peer's FIN arrived
  bool closed = false;    // we closed our end
};

// A stream listener on `address` ("127.0.0.1:0", "[::1]:0", "/path", "@name") served
// by one poll() thread. address() is in the daemon's upstream syntax.
class StreamUpstream {
 public:
  StreamUpstream(const std::string& address, UpstreamOptions options = {});
  ~StreamUpstream();
  StreamUpstream(const StreamUpstream&) = delete;
  StreamUpstream& operator=(const StreamUpstream&) = delete;

  bool ok() const { return listen_.valid(); }
  const std::string& address() const { return address_; }
  std::uint16_t port() const { return port_of(address_); }
  std::size_t accepted() const;
  std::size_t open_connections() const;
  std::vector<UpstreamConnection> connections() const;

 private:
  void loop();
  std::string address_;
  UpstreamOptions options_;
  Fd listen_;
  Fd wake_read_, wake_write_;
  mutable std::mutex mutex_;
  std::vector<UpstreamConnection> conns_;
  std::thread thread_;
};

// ---- scripted datagram upstream ----

struct ReceivedDatagram {
  std::string from;  // "127.0.0.1:40000"
  std::string data;
};

// A UDP socket on `address` (e.g. "127.0.0.1:0") that records every datagram and, when
// `echo`, sends it back to its source.
class DatagramUpstream {
 public:
  DatagramUpstream(const std::string& address, bool echo = true, const std::string& netns = "");
  ~DatagramUpstream();
  DatagramUpstream(const DatagramUpstream&) = delete;
  DatagramUpstream& operator=(const DatagramUpstream&) = delete;

  bool ok() const { return fd_.valid(); }
  const std::string& address() const { return address_; }
  std::vector<ReceivedDatagram> datagrams() const;
  // Polls until at least n datagrams arrived.
  bool wait_for(std::size_t n, Millis timeout = kIoTimeout) const;

 private:
  void loop();
  std::string address_;
  bool echo_;
  Fd fd_;
  Fd wake_read_, wake_write_;
  mutable std::mutex mutex_;
  std::vector<ReceivedDatagram> received_;
  std::thread thread_;
};

// ---- DNS ----

// Sends one query (type 1 = A, 28 = AAAA) to `server` ("127.0.0.1:5353") over UDP from
// the calling thread's namespace; the addresses of the answer, or nullopt on timeout.
std::optional<std::vector<std::string>> dns_query(const std::string& server, const std::string& name, int type,
                                                  Millis timeout = 1000ms);

// A real dnsmasq answering from a hosts file on 127.0.0.1:<free port> with TTL 1 s.
class Dnsmasq {
 public:
  explicit Dnsmasq(const std::string& hosts, const std::string& netns = "");
  ~Dnsmasq() = default;

  // Starts it and waits until it answers `probe_name` (A or AAAA).
  ::testing::AssertionResult start(const std::string& probe_name);
  const std::string& server() const { return server_; }
  // Rewrites the hosts file and sends SIGHUP (dnsmasq re-reads --addn-hosts on it).
  ::testing::AssertionResult set_hosts(const std::string& hosts);
  std::optional<std::vector<std::string>> query(const std::string& name, int type);
  std::string log() const { return read_file(log_path_); }

 private:
  TempDir dir_;
  std::string netns_;
  std::string hosts_path_;
  std::string log_path_;
  std::string server_;
  ChildProcess process_;
};

// ---- misc ----

// "host:port" of a TCP port with nothing listening (bound once, then closed).
std::string unused_tcp_address(const std::string& host = "127.0.0.1");
// VmRSS of `pid` in KiB (0 if unreadable).
std::uint64_t vm_rss_kib(pid_t pid);
// `["a", "b"]`
std::string toml_list(const std::vector<std::string>& items);
std::string be32(std::uint32_t n);
// Deterministic incompressible bytes.
std::string random_bytes(std::size_t n, std::uint32_t seed = 2463534242u);
std::string peer_of(int fd);  // getpeername as "ip:port"

// Opens `count` connections to `address` at once, sends one distinct line on each and
// reads it back, all multiplexed with poll; returns how many echoed intact within
// `timeout` and the first problem seen in `error`.
std::size_t concurrent_line_echo(const std::string& address, std::size_t count, Millis timeout, std::string* error);

}  // namespace echorelay::test
