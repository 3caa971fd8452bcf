// The typed, validated configuration: what CONFIG.md promises, one field per TOML key
// (a key and its field share a name). Pure: no sockets, no logging. Produced by
// load_config()/parse_config() in two passes that collect every diagnostic.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "net/cidr.hpp"
#include "net/endpoint.hpp"

namespace echorelay::config {

using Duration = std::chrono::milliseconds;

enum class Protocol { Tcp, Udp, Unix, Multicast };
// Mirror: udp and multicast only; every datagram to every upstream, one-way.
enum class Handler { Echo, Relay, Mirror };
enum class Framing { Line, LengthPrefixed, Raw };
enum class Balance { RoundRobin, LeastConnections, Random };
enum class ProxyProtocol { Off, V1, V2 };
enum class LogLevel { Trace, Debug, Info, Warn, Error };
enum class LogFormat { Auto, Text, Json, Journal };

std::string_view to_string(Protocol);
std::string_view to_string(Handler);
std::string_view to_string(Framing);
std::string_view to_string(LogLevel);
std::string_view to_string(LogFormat);

struct Daemon {
  unsigned workers = 0;  // 0 = one per CPU
  Duration drain_timeout = std::chrono::seconds(30);
  Duration restart_timeout = std::chrono::seconds(10);
  std::uint64_t max_connections = 100000;
  std::string pid_file;  // empty = none
};

struct Log {
  LogLevel level = LogLevel::Info;
  LogFormat format = LogFormat::Auto;
};

struct Admin {
  bool enabled = false;  // the [admin] table is present
  net::Endpoint listen;  // default 127.0.0.1:9101
  std::uint64_t max_connections = 64;  // admin connections served at once
};

struct Resolver {
  std::vector<net::Endpoint> servers;  // empty = the system resolver
  Duration timeout = std::chrono::seconds(2);
  unsigned attempts = 2;
};

inline constexpr std::uint32_t kDefaultRateLimit = 10000;

struct Listener {
  std::string name;
  Protocol protocol = Protocol::Tcp;
  std::string address;     // as written
  net::Endpoint endpoint;  // parsed address; multicast: group:port
  Handler handler = Handler::Echo;

  // tcp / unix
  int backlog = 4096;
  bool reuse_port = false;
  Duration keepalive = std::chrono::seconds(15);  // 0 = off
  bool nodelay = true;
  int linger = -1;  // -1 kernel default, 0 RST on close, n>0 wait n seconds
  std::uint32_t recv_buffer = 0;  // 0 = kernel default
  std::uint32_t send_buffer = 0;
  std::uint64_t max_connections = 0;  // 0 = only the daemon-wide limit
  std::optional<bool> v6only;         // unset = kernel default (dual stack)

  // unix
  std::optional<mode_t> mode;
  std::string owner;  // user name or numeric uid; empty = unchanged
  std::string group;
  std::vector<uid_t> allow_uids;  // empty = everyone
  std::vector<gid_t> allow_gids;

  // udp / multicast
  unsigned workers = 0;  // UDP pool size, 0 = one per CPU
  std::uint32_t queue = 4096;
  unsigned sockets = 1;
  std::uint32_t max_datagram = 65507;
  // Datagrams/s per source address, 0 = off. On by default: it ends any echo loop the
  // address checks cannot see (two daemons bouncing answers off each other).
  std::uint32_t rate_limit = kDefaultRateLimit;
  std::vector<std::uint16_t> deny_source_ports = {7, 13, 17, 19, 37};
  // Unless deny_source_ports is written: every UDP port this daemon listens on is
  // denied too. (A source that is one of our own listening addresses never is answered.)
  bool deny_own_ports = true;
  std::vector<net::Cidr> allow_sources;  // any handler; empty = every source

  // multicast
  std::string interface;  // empty = all multicast-capable interfaces
  int ttl = 1;
  bool loopback = true;

  // echo on tcp / unix
  Framing framing = Framing::Line;
  std::uint32_t max_frame = 64 * 1024;
  Duration read_timeout = std::chrono::seconds(60);
  Duration write_timeout = std::chrono::seconds(10);
  Duration request_timeout = Duration::zero();  // 0 = off

  // relay
  std::vector<net::Endpoint> upstreams;
  Balance balance = Balance::RoundRobin;
  Duration connect_timeout = std::chrono::seconds(3);
  Duration idle_timeout = std::chrono::minutes(5);
  Duration upstream_keepalive = std::chrono::seconds(30);
  std::optional<net::Endpoint> source_address;
  Duration fallback_delay = std::chrono::milliseconds(300);
  ProxyProtocol proxy_protocol = ProxyProtocol::Off;
  bool splice = true;  // bulk TCP<->TCP relay through splice(2); false = copy via user space
  Duration session_timeout = std::chrono::seconds(30);
  std::uint64_t max_sessions = 0;  // 0 = unlimited

  // mirror (upstreams as above; an entry may be an inline table { address, sample })
  std::vector<std::uint32_t> upstream_samples;  // parallel to upstreams; N = 1 datagram in N
  bool preserve_source = false;  // copies leave from the sender's address and port (CAP_NET_RAW)

  bool is_stream() const { return protocol == Protocol::Tcp || protocol == Protocol::Unix; }
  bool is_datagram() const { return !is_stream(); }
};

struct Config {
  std::string path;  // the file it came from, for messages
  Daemon daemon;
  Log log;
  Admin admin;
  Resolver resolver;
  std::vector<Listener> listeners;
};

// One problem found in the file, already formatted as "FILE:LINE:COL: key: message".
struct Diagnostic {
  std::string text;
};

struct LoadResult {
  std::optional<Config> config;  // set only when `diagnostics` is empty
  std::vector<Diagnostic> diagnostics;
};

// `source_name` is what diagnostics print as FILE.
LoadResult parse_config(std::string_view toml_text, std::string_view source_name);
LoadResult load_config(const std::string& path);

// Units, shared with the command line (`probe --timeout`).
Result<Duration> parse_duration(std::string_view text);  // "250ms", "30s", "5m", "1h", "0s"
Result<std::uint64_t> parse_size(std::string_view text);  // "512", "64KiB", "1MiB", "1GiB"

// Closest known word within edit distance 2, for "did you mean".
std::optional<std::string> suggest(std::string_view word, const std::vector<std::string_view>& known);

}  // namespace echorelay::config
