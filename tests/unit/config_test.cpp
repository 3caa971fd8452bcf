// Config parse and validate: TOML text in, exact diagnostics or exact field values out.
// Also checks that every shipped file under config/ passes the same validation.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "config/config.hpp"

namespace echorelay::config {
namespace {

using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

std::vector<std::string> diagnostics(std::string_view toml) {
  LoadResult r = parse_config(toml, "t.toml");
  EXPECT_FALSE(r.config.has_value()) << "a config with diagnostics must not be returned";
  std::vector<std::string> out;
  for (auto& d : r.diagnostics) out.push_back(d.text);
  return out;
}

Config valid(std::string_view toml) {
  LoadResult r = parse_config(toml, "t.toml");
  for (auto& d : r.diagnostics) ADD_FAILURE() << d.text;
  EXPECT_TRUE(r.config.has_value());
  return r.config.value_or(Config{});
}

using Lines = std::vector<std::string>;

TEST(Config, MinimalTcpListenerGetsDocumentedDefaults) {
  Config c = valid(R"(
[[listener]]
name = "echo"
protocol = "tcp"
address = "127.0.0.1:7007"
)");
  EXPECT_EQ(c.path, "t.toml");
  EXPECT_EQ(c.daemon.workers, 0U);
  EXPECT_EQ(c.daemon.drain_timeout, seconds(30));
  EXPECT_EQ(c.daemon.restart_timeout, seconds(10));
  EXPECT_EQ(c.daemon.max_connections, 100000U);
  EXPECT_EQ(c.log.level, LogLevel::Info);
  EXPECT_EQ(c.log.format, LogFormat::Auto);
  EXPECT_FALSE(c.admin.enabled);
  EXPECT_TRUE(c.resolver.servers.empty());
  ASSERT_EQ(c.listeners.size(), 1U);
  const Listener& l = c.listeners[0];
  EXPECT_EQ(l.name, "echo");
  EXPECT_EQ(l.protocol, Protocol::Tcp);
  EXPECT_EQ(l.address, "127.0.0.1:7007");
  EXPECT_EQ(l.endpoint.to_string(), "127.0.0.1:7007");
  EXPECT_EQ(l.handler, Handler::Echo);
  EXPECT_EQ(l.framing, Framing::Line);
  EXPECT_EQ(l.max_frame, 64U * 1024);
  EXPECT_EQ(l.read_timeout, seconds(60));
  EXPECT_EQ(l.write_timeout, seconds(10));
  EXPECT_EQ(l.request_timeout, Duration::zero());
  EXPECT_TRUE(l.nodelay);
  EXPECT_FALSE(l.v6only.has_value());
}

TEST(Config, ReadsEverySectionAndTcpKey) {
  Config c = valid(R"(
[daemon]
workers = 4
drain_timeout = "5s"
restart_timeout = "1m"
max_connections = 500
pid_file = "/run/echorelay.pid"

[log]
level = "debug"
format = "json"

[admin]
listen = "[::1]:9200"

[resolver]
servers = ["127.0.0.1:53", "[::1]:5353"]
timeout = "500ms"
attempts = 3

[[listener]]
name = "t"
protocol = "tcp"
address = "[::]:7007"
backlog = 128
reuse_port = true
keepalive = "0s"
nodelay = false
linger = 0
recv_buffer = "256KiB"
send_buffer = 65536
max_connections = 10
v6only = true
framing = "length-prefixed"
max_frame = "1MiB"
read_timeout = "2m"
write_timeout = "3s"
request_timeout = "250ms"
)");
  EXPECT_EQ(c.daemon.workers, 4U);
  EXPECT_EQ(c.daemon.drain_timeout, seconds(5));
  EXPECT_EQ(c.daemon.restart_timeout, minutes(1));
  EXPECT_EQ(c.daemon.max_connections, 500U);
  EXPECT_EQ(c.daemon.pid_file, "/run/echorelay.pid");
  EXPECT_EQ(c.log.level, LogLevel::Debug);
  EXPECT_EQ(c.log.format, LogFormat::Json);
  EXPECT_TRUE(c.admin.enabled);
  EXPECT_EQ(c.admin.listen.to_string(), "[::1]:9200");
  ASSERT_EQ(c.resolver.servers.size(), 2U);
  EXPECT_EQ(c.resolver.servers[1].to_string(), "[::1]:5353");
  EXPECT_EQ(c.resolver.timeout, milliseconds(500));
  EXPECT_EQ(c.resolver.attempts, 3U);
  const Listener& l = c.listeners.at(0);
  EXPECT_EQ(l.endpoint.host, "::");
  EXPECT_EQ(l.endpoint.port, 7007);
  EXPECT_EQ(l.backlog, 128);
  EXPECT_TRUE(l.reuse_port);
  EXPECT_EQ(l.keepalive, Duration::zero());
  EXPECT_FALSE(l.nodelay);
  EXPECT_EQ(l.linger, 0);
  EXPECT_EQ(l.recv_buffer, 256U * 1024);
  EXPECT_EQ(l.send_buffer, 65536U);
  EXPECT_EQ(l.max_connections, 10U);
  EXPECT_EQ(l.v6only, true);
  EXPECT_EQ(l.framing, Framing::LengthPrefixed);
  EXPECT_EQ(l.max_frame, 1024U * 1024);
  EXPECT_EQ(l.read_timeout, minutes(2));
  EXPECT_EQ(l.write_timeout, seconds(3));
  EXPECT_EQ(l.request_timeout, milliseconds(250));
}

TEST(Config, AdminTableWithoutListenUsesDefaultAddress) {
  Config c = valid(R"(
[admin]
[[listener]]
name = "e"
protocol = "tcp"
address = ":7"
)");
  EXPECT_TRUE(c.admin.enabled);
  EXPECT_EQ(c.admin.listen.to_string(), "127.0.0.1:9101");
}

TEST(Config, ReadsUnixKeys) {
  Config c = valid(R"(
[[listener]]
name = "u"
protocol = "unix"
address = "/tmp/u.sock"
backlog = 16
mode = "0660"
owner = "echo"
group = "1000"
allow_uids = [0, 1000]
allow_gids = [4294967294]
max_connections = 3
framing = "raw"
)");
  const Listener& l = c.listeners.at(0);
  EXPECT_EQ(l.endpoint.kind, net::Endpoint::Kind::UnixPath);
  EXPECT_EQ(l.endpoint.path, "/tmp/u.sock");
  EXPECT_EQ(l.backlog, 16);
  EXPECT_EQ(l.mode, mode_t{0660});
  EXPECT_EQ(l.owner, "echo");
  EXPECT_EQ(l.group, "1000");
  EXPECT_EQ(l.allow_uids, (std::vector<uid_t>{0, 1000}));
  EXPECT_EQ(l.allow_gids, (std::vector<gid_t>{4294967294U}));
  EXPECT_EQ(l.max_connections, 3U);
  EXPECT_EQ(l.framing, Framing::Raw);
}

TEST(Config, ReadsUdpAndMulticastKeys) {
  Config c = valid(R"(
[[listener]]
name = "u"
protocol = "udp"
address = "0.0.0.0:7"
workers = 2
queue = 100
sockets = 4
max_datagram = "1KiB"
recv_buffer = "4MiB"
send_buffer = "1MiB"
rate_limit = 50
deny_source_ports = []

[[listener]]
name = "m"
protocol = "multicast"
address = "[ff02::77]:7009"
interface = "lo"
ttl = 0
loopback = false
deny_source_ports = [19]
)");
  const Listener& u = c.listeners.at(0);
  EXPECT_EQ(u.workers, 2U);
  EXPECT_EQ(u.queue, 100U);
  EXPECT_EQ(u.sockets, 4U);
  EXPECT_EQ(u.max_datagram, 1024U);
  EXPECT_EQ(u.recv_buffer, 4U << 20);
  EXPECT_EQ(u.send_buffer, 1U << 20);
  EXPECT_EQ(u.rate_limit, 50U);
  EXPECT_TRUE(u.deny_source_ports.empty());
  const Listener& m = c.listeners.at(1);
  EXPECT_EQ(m.protocol, Protocol::Multicast);
  EXPECT_EQ(m.endpoint.host, "ff02::77");
  EXPECT_EQ(m.interface, "lo");
  EXPECT_EQ(m.ttl, 0);
  EXPECT_FALSE(m.loopback);
  EXPECT_EQ(m.deny_source_ports, (std::vector<std::uint16_t>{19}));
}

TEST(Config, UdpListenerKeepsDefaultDeniedSourcePorts) {
  Config c = valid(R"(
[[listener]]
name = "u"
protocol = "udp"
address = ":7"
)");
  EXPECT_EQ(c.listeners.at(0).deny_source_ports, (std::vector<std::uint16_t>{7, 13, 17, 19, 37}));
  EXPECT_EQ(c.listeners.at(0).max_datagram, 65507U);
}

TEST(Config, UnknownKeySuggestsTheClosestListenerKey) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "e"
protocol = "tcp"
address = ":7"
framng = "line"
)"),
            Lines{R"(t.toml:5:1: listener["e"].framng: unknown key (did you mean "framing"?))"});
}

TEST(Config, UnknownKeysInEveryTableAreReported) {
  EXPECT_EQ(diagnostics(R"([deamon]
[daemon]
worker = 1
[log]
levle = "info"
[admin]
listne = ":9"
[resolver]
server = []
colour = "blue"
[[listener]]
name = "e"
protocol = "tcp"
address = ":7"
)"),
            (Lines{
                R"(t.toml:1:2: deamon: unknown key (did you mean "daemon"?))",
                R"(t.toml:3:1: daemon.worker: unknown key (did you mean "workers"?))",
                R"(t.toml:5:1: log.levle: unknown key (did you mean "level"?))",
                R"(t.toml:7:1: admin.listne: unknown key (did you mean "listen"?))",
                R"(t.toml:9:1: resolver.server: unknown key (did you mean "servers"?))",
                R"(t.toml:10:1: resolver.colour: unknown key)",
            }));
}

TEST(Config, WrongTomlTypesNameTheExpectedType) {
  EXPECT_EQ(diagnostics(R"([daemon]
workers = "4"
[[listener]]
name = 5
protocol = "tcp"
address = ":7"
nodelay = "yes"
allow_uids = [1]
)"),
            (Lines{
                R"(t.toml:2:11: daemon.workers: expected an integer, got a string)",
                R"(t.toml:4:8: listener[0].name: expected a string, got an integer)",
                R"(t.toml:7:11: listener[0].nodelay: expected a boolean, got a string)",
                R"(t.toml:8:1: listener[0].allow_uids: allow_uids does not apply to protocol = "tcp")",
            }));
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "u"
protocol = "unix"
address = "/tmp/u"
allow_uids = 1000
allow_gids = [1, "wheel"]
)"),
            (Lines{
                R"(t.toml:5:14: listener["u"].allow_uids: expected an array of integers, got an integer)",
                R"(t.toml:6:18: listener["u"].allow_gids[1]: expected an integer, got a string)",
            }));
}

TEST(Config, BadDurationsAreReportedWithTheirText) {
  EXPECT_EQ(diagnostics(R"([daemon]
drain_timeout = 30
restart_timeout = "0s"
[resolver]
timeout = "2"
[[listener]]
name = "e"
protocol = "tcp"
address = ":7"
read_timeout = "1.5s"
keepalive = "15 min"
)"),
            (Lines{
                R"(t.toml:2:17: daemon.drain_timeout: expected a duration string like "30s", got an integer)",
                R"(t.toml:3:19: daemon.restart_timeout: must be longer than 0s)",
                R"(t.toml:5:11: resolver.timeout: "2": a duration needs a unit: ms, s, m or h (e.g. "2s"))",
                R"(t.toml:10:16: listener["e"].read_timeout: "1.5s": only whole numbers are allowed; use a smaller unit)",
                R"(t.toml:11:13: listener["e"].keepalive: "15 min": unknown unit " min" (use ms, s, m or h))",
            }));
}

TEST(Config, BadSizesAreReported) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "e"
protocol = "tcp"
address = ":7"
max_frame = "2GiB"
recv_buffer = -1
send_buffer = "64KB"
)"),
            (Lines{
                R"(t.toml:5:13: listener["e"].max_frame: must be between 1 and 1GiB (got 2GiB))",
                R"(t.toml:6:15: listener["e"].recv_buffer: a size must not be negative (got -1))",
                R"(t.toml:7:15: listener["e"].send_buffer: "64KB": "KB" is ambiguous; write "KiB" for multiples of 1024)",
            }));
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "e"
protocol = "udp"
address = ":7"
max_datagram = 65536
recv_buffer = true
)"),
            (Lines{
                R"(t.toml:5:16: listener["e"].max_datagram: must be between 1 and 65535 (got 65536))",
                R"(t.toml:6:15: listener["e"].recv_buffer: expected a size (an integer or a string like "64KiB"), got a boolean)",
            }));
}

TEST(Config, IntegersOutOfRangeAreReported) {
  EXPECT_EQ(diagnostics(R"([daemon]
workers = 1025
max_connections = 0
[resolver]
attempts = 0
[[listener]]
name = "t"
protocol = "tcp"
address = ":7"
backlog = 0
linger = -2
[[listener]]
name = "m"
protocol = "multicast"
address = "239.1.1.1:9"
ttl = 256
queue = 0
sockets = 65
deny_source_ports = [7, 70000]
)"),
            (Lines{
                R"(t.toml:2:11: daemon.workers: must be between 0 and 1024 (got 1025))",
                R"(t.toml:3:19: daemon.max_connections: must be at least 1 (got 0))",
                R"(t.toml:5:12: resolver.attempts: must be between 1 and 4294967295 (got 0))",
                R"(t.toml:10:11: listener["t"].backlog: must be between 1 and 65535 (got 0))",
                R"(t.toml:11:10: listener["t"].linger: must be between -1 and 2147483647 (got -2))",
                R"(t.toml:16:7: listener["m"].ttl: must be between 0 and 255 (got 256))",
                R"(t.toml:17:9: listener["m"].queue: must be between 1 and 4294967295 (got 0))",
                R"(t.toml:18:11: listener["m"].sockets: must be between 1 and 64 (got 65))",
                R"(t.toml:19:25: listener["m"].deny_source_ports[1]: must be between 0 and 65535 (got 70000))",
            }));
}

TEST(Config, EnumValuesSuggestTheClosestChoice) {
  EXPECT_EQ(diagnostics(R"([log]
level = "warning"
format = "yaml"
[[listener]]
name = "e"
protocol = "tpc"
address = ":7"
)"),
            (Lines{
                R"(t.toml:2:9: log.level: "warning" is not one of trace, debug, info, warn or error)",
                R"(t.toml:3:10: log.format: "yaml" is not one of auto, text, json or journal)",
                R"(t.toml:6:12: listener["e"].protocol: "tpc" is not one of tcp, udp, unix or multicast (did you mean "tcp"?))",
            }));
}

TEST(Config, UnixModeMustBeAnOctalString) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "u"
protocol = "unix"
address = "/tmp/u"
mode = 0o660
[[listener]]
name = "v"
protocol = "unix"
address = "/tmp/v"
mode = "0689"
[[listener]]
name = "w"
protocol = "unix"
address = "/tmp/w"
mode = "17777"
)"),
            (Lines{
                R"(t.toml:5:8: listener["u"].mode: expected a string, got an integer)",
                R"(t.toml:10:8: listener["v"].mode: "0689": expected an octal mode like "0660")",
                R"(t.toml:15:8: listener["w"].mode: "17777": must be at most "07777")",
            }));
}

TEST(Config, DuplicateListenerNamesAreRefused) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "echo"
protocol = "tcp"
address = ":7"
[[listener]]
name = "echo"
protocol = "udp"
address = ":7"
)"),
            Lines{R"(t.toml:6:8: listener[1].name: "echo" is already the name of listener[0])"});
}

TEST(Config, ListenerNamesMustBeSafeForListenFdNames) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "a:b"
protocol = "tcp"
address = ":7"
[[listener]]
name = ""
protocol = "tcp"
address = ":8"
)"),
            (Lines{
                R"(t.toml:2:8: listener[0].name: "a:b": only letters, digits, '_', '.' and '-' are allowed)",
                R"(t.toml:6:8: listener[1].name: must not be empty)",
            }));
}

TEST(Config, DuplicateAddressesNameTheOtherListener) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "a"
protocol = "tcp"
address = "[::]:7"
[[listener]]
name = "b"
protocol = "tcp"
address = ":7"
[[listener]]
name = "c"
protocol = "unix"
address = "@x"
[[listener]]
name = "d"
protocol = "unix"
address = "@x"
)"),
            (Lines{
                R"(t.toml:8:11: listener["b"].address: tcp [::]:7 is already used by listener["a"])",
                R"(t.toml:16:11: listener["d"].address: unix @x is already used by listener["c"])",
            }));
}

TEST(Config, SameAddressOnDifferentProtocolsAndPortZeroAreAllowed) {
  Config c = valid(R"([[listener]]
name = "t"
protocol = "tcp"
address = "[::]:7007"
[[listener]]
name = "u"
protocol = "udp"
address = "[::]:7007"
[[listener]]
name = "t0"
protocol = "tcp"
address = "127.0.0.1:0"
[[listener]]
name = "t1"
protocol = "tcp"
address = "127.0.0.1:0"
)");
  EXPECT_EQ(c.listeners.size(), 4U);
}

TEST(Config, AdminAddressMustNotCollideWithATcpListener) {
  EXPECT_EQ(diagnostics(R"([admin]
listen = "127.0.0.1:9101"
[[listener]]
name = "t"
protocol = "tcp"
address = "127.0.0.1:9101"
)"),
            Lines{R"(t.toml:2:10: admin.listen: tcp 127.0.0.1:9101 is already used by listener["t"])"});
}

TEST(Config, KeysThatDoNotFitTheProtocolAreRefused) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "u"
protocol = "udp"
address = ":7"
backlog = 10
framing = "line"
interface = "lo"
[[listener]]
name = "t"
protocol = "tcp"
address = ":8"
sockets = 2
mode = "0600"
)"),
            (Lines{
                R"(t.toml:5:1: listener["u"].backlog: backlog does not apply to protocol = "udp")",
                R"(t.toml:6:1: listener["u"].framing: framing does not apply to protocol = "udp")",
                R"(t.toml:7:1: listener["u"].interface: interface does not apply to protocol = "udp")",
                R"(t.toml:12:1: listener["t"].sockets: sockets does not apply to protocol = "tcp")",
                R"(t.toml:13:1: listener["t"].mode: mode does not apply to protocol = "tcp")",
            }));
}

TEST(Config, KeysThatDoNotFitTheHandlerAreRefused) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "e"
protocol = "tcp"
address = ":7"
upstreams = ["127.0.0.1:8"]
balance = "random"
[[listener]]
name = "r"
protocol = "tcp"
address = ":9"
handler = "relay"
upstreams = ["127.0.0.1:8"]
framing = "raw"
session_timeout = "10s"
)"),
            (Lines{
                R"(t.toml:5:1: listener["e"].upstreams: upstreams does not apply to handler = "echo")",
                R"(t.toml:6:1: listener["e"].balance: balance does not apply to handler = "echo")",
                R"(t.toml:13:1: listener["r"].framing: framing does not apply to handler = "relay")",
                R"(t.toml:14:1: listener["r"].session_timeout: session_timeout does not apply to protocol = "tcp")",
            }));
}

TEST(Config, RelayKeysAreChecked) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "r"
protocol = "udp"
address = ":53"
handler = "relay"
upstreams = ["resolver.example:53", "/tmp/x.sock", "bad host:1", "10.0.0.1:0"]
balance = "least-connection"
connect_timeout = "3s"
source_address = "10.0.0.1"
proxy_protocol = "v3"
session_timeout = "30s"
max_sessions = -1
)"),
            (Lines{
                R"(t.toml:6:37: listener["r"].upstreams[1]: "/tmp/x.sock": a udp relay needs "host:port" upstreams)",
                R"(t.toml:6:52: listener["r"].upstreams[2]: "bad host:1": invalid host)",
                R"(t.toml:6:66: listener["r"].upstreams[3]: "10.0.0.1:0": an upstream needs a port other than 0)",
                R"(t.toml:7:11: listener["r"].balance: "least-connection" is not one of round-robin, least-connections or random (did you mean "least-connections"?))",
                R"(t.toml:8:1: listener["r"].connect_timeout: connect_timeout does not apply to protocol = "udp")",
                R"(t.toml:10:18: listener["r"].proxy_protocol: "v3" is not one of off, v1 or v2 (did you mean "v1"?))",
                R"(t.toml:12:16: listener["r"].max_sessions: must be at least 0 (got -1))",
            }));
}

// Keys the handler would ignore on this kind of listener are refused, not accepted and
// dropped: dialing keys on a UDP relay, sessions, a pool and a hand-off queue on a
// multicast relay (it fans out from the worker that read), extra sockets on a group,
// splice without TCP, and a keepalive the kernel would truncate to whole seconds.
TEST(Config, KeysAHandlerWouldIgnoreAreRefused) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "u"
protocol = "udp"
address = ":53"
handler = "relay"
upstreams = ["10.0.0.1:53"]
idle_timeout = "1m"
upstream_keepalive = "30s"
fallback_delay = "100ms"
[[listener]]
name = "m"
protocol = "multicast"
address = "239.1.1.1:9"
handler = "relay"
upstreams = ["10.0.0.1:9"]
balance = "random"
session_timeout = "10s"
max_sessions = 10
queue = 64
sockets = 2
[[listener]]
name = "x"
protocol = "unix"
address = "/run/x.sock"
handler = "relay"
upstreams = ["10.0.0.1:7"]
splice = true
[[listener]]
name = "t"
protocol = "tcp"
address = ":7"
keepalive = "500ms"
[[listener]]
name = "r"
protocol = "tcp"
address = ":8"
handler = "relay"
upstreams = ["10.0.0.1:7"]
upstream_keepalive = "1500ms"
connect_timeout = "0s"
)"),
            (Lines{
                R"(t.toml:7:1: listener["u"].idle_timeout: idle_timeout does not apply to protocol = "udp")",
                R"(t.toml:8:1: listener["u"].upstream_keepalive: upstream_keepalive does not apply to protocol = "udp")",
                R"(t.toml:9:1: listener["u"].fallback_delay: fallback_delay does not apply to protocol = "udp")",
                R"(t.toml:16:1: listener["m"].balance: balance does not apply to protocol = "multicast")",
                R"(t.toml:17:1: listener["m"].session_timeout: session_timeout does not apply to protocol = "multicast")",
                R"(t.toml:18:1: listener["m"].max_sessions: max_sessions does not apply to protocol = "multicast")",
                R"(t.toml:19:9: listener["m"].queue: queue does not apply to a multicast relay: the worker that reads a datagram sends it to every upstream itself)",
                R"(t.toml:20:11: listener["m"].sockets: a multicast listener has one socket: each of 2 sockets would receive (and answer) every datagram)",
                R"(t.toml:27:1: listener["x"].splice: splice does not apply to protocol = "unix")",
                R"(t.toml:32:13: listener["t"].keepalive: keepalive is set in whole seconds ("0s" is off))",
                R"(t.toml:39:22: listener["r"].upstream_keepalive: keepalive is set in whole seconds ("0s" is off))",
                R"(t.toml:40:19: listener["r"].connect_timeout: must be longer than 0s)",
            }));
}

// A multicast relay's `workers` is how many of the daemon's workers read its socket,
// each fanning out what it read, as for a udp relay, an echo or a mirror.
TEST(Config, MulticastRelayTakesWorkers) {
  Config c = valid(R"([[listener]]
name = "m"
protocol = "multicast"
address = "239.1.1.1:9"
handler = "relay"
upstreams = ["10.0.0.1:9"]
workers = 2
)");
  ASSERT_EQ(c.listeners.size(), 1U);
  EXPECT_EQ(c.listeners[0].handler, Handler::Relay);
  EXPECT_EQ(c.listeners[0].workers, 2U);
}

TEST(Config, RelayKeysAreReadIntoTheListener) {
  LoadResult r = parse_config(R"([[listener]]
name = "r"
protocol = "tcp"
address = ":7"
handler = "relay"
upstreams = ["echo.internal:7", "[::1]:7007", "/tmp/u.sock", "@up"]
balance = "least-connections"
connect_timeout = "1s"
idle_timeout = "0s"
upstream_keepalive = "1m"
source_address = "::1"
fallback_delay = "100ms"
proxy_protocol = "v2"
)", "t.toml");
  ASSERT_TRUE(r.diagnostics.empty()) << r.diagnostics[0].text;
  ASSERT_TRUE(r.config);
  const Listener& l = r.config->listeners.at(0);
  EXPECT_EQ(l.handler, Handler::Relay);
  ASSERT_EQ(l.upstreams.size(), 4U);
  EXPECT_EQ(l.upstreams[0].host, "echo.internal");
  EXPECT_EQ(l.upstreams[0].port, 7);
  EXPECT_EQ(l.upstreams[1].host, "::1");
  EXPECT_EQ(l.upstreams[2].kind, net::Endpoint::Kind::UnixPath);
  EXPECT_EQ(l.upstreams[3].kind, net::Endpoint::Kind::UnixAbstract);
  EXPECT_EQ(l.balance, Balance::LeastConnections);
  EXPECT_EQ(l.connect_timeout, std::chrono::seconds(1));
  EXPECT_EQ(l.idle_timeout, Duration::zero());
  EXPECT_EQ(l.upstream_keepalive, std::chrono::minutes(1));
  ASSERT_TRUE(l.source_address);
  EXPECT_EQ(l.source_address->host, "::1");
  EXPECT_EQ(l.fallback_delay, std::chrono::milliseconds(100));
  EXPECT_EQ(l.proxy_protocol, ProxyProtocol::V2);
}

TEST(Config, RelayWithoutUpstreamsIsReported) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "r"
protocol = "tcp"
address = ":7"
handler = "relay"
)"),
            (Lines{
                R"(t.toml:1:1: listener["r"].upstreams: a relay needs at least one upstream)",
            }));
}

TEST(Config, MissingRequiredKeysPointAtTheListenerTable) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "a"
protocol = "tcp"

  [[listener]]
  address = ":8"
)"),
            (Lines{
                R"(t.toml:1:1: listener["a"].address: required key is missing)",
                R"(t.toml:5:3: listener[1].name: required key is missing)",
                R"(t.toml:5:3: listener[1].protocol: required key is missing)",
            }));
}

TEST(Config, AddressMustFitTheProtocol) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "a"
protocol = "tcp"
address = "/tmp/a.sock"
[[listener]]
name = "b"
protocol = "unix"
address = "127.0.0.1:7"
[[listener]]
name = "c"
protocol = "multicast"
address = "10.0.0.1:7009"
[[listener]]
name = "d"
protocol = "udp"
address = "localhost:7"
)"),
            (Lines{
                R"(t.toml:4:11: listener["a"].address: "/tmp/a.sock": protocol = "tcp" needs "host:port")",
                R"(t.toml:8:11: listener["b"].address: "127.0.0.1:7": protocol = "unix" needs "/path" or "@name")",
                R"(t.toml:12:11: listener["c"].address: "10.0.0.1:7009": 10.0.0.1 is not a multicast group (224.0.0.0/4 or ff00::/8))",
                R"(t.toml:16:11: listener["d"].address: "localhost:7": host must be an IP address)",
            }));
}

TEST(Config, UnixPathLongerThan107BytesIsRefused) {
  const std::string path = "/tmp/" + std::string(103, 'p');  // 108 bytes
  const std::string toml = "[[listener]]\nname = \"u\"\nprotocol = \"unix\"\naddress = \"" + path + "\"\n";
  EXPECT_EQ(diagnostics(toml),
            Lines{"t.toml:4:11: listener[\"u\"].address: \"" + path + "\": Unix socket path is 108 bytes, the limit is 107"});
}

TEST(Config, V6onlyNeedsAnIpv6Address) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "t"
protocol = "tcp"
address = "0.0.0.0:7"
v6only = true
)"),
            Lines{R"(t.toml:5:10: listener["t"].v6only: applies only to an IPv6 address (address = "0.0.0.0:7"))"});
}

TEST(Config, FileOwnershipKeysDoNotApplyToAbstractSockets) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "a"
protocol = "unix"
address = "@echo"
mode = "0600"
allow_uids = [0]
)"),
            Lines{R"(t.toml:5:8: listener["a"].mode: mode does not apply to an abstract socket ("@echo" has no file))"});
}

TEST(Config, OtherSectionValueChecks) {
  EXPECT_EQ(diagnostics(R"([daemon]
pid_file = "run/echorelay.pid"
[admin]
listen = "/tmp/admin.sock"
[resolver]
servers = ["8.8.8.8", "127.0.0.1:0"]
[[listener]]
name = "m"
protocol = "multicast"
address = "239.1.1.1:7"
interface = "a-very-long-interface-name"
)"),
            (Lines{
                R"(t.toml:2:12: daemon.pid_file: "run/echorelay.pid": must be an absolute path)",
                R"(t.toml:4:10: admin.listen: "/tmp/admin.sock": admin.listen needs an IP address and port, e.g. "127.0.0.1:9101")",
                R"(t.toml:6:12: resolver.servers[0]: "8.8.8.8": missing port (expected host:port))",
                R"(t.toml:6:23: resolver.servers[1]: "127.0.0.1:0": a server needs a port other than 0)",
                R"(t.toml:11:13: listener["m"].interface: "a-very-long-interface-name": interface names are at most 15 bytes)",
            }));
}

TEST(Config, SectionsOfTheWrongShapeAreRefused) {
  EXPECT_EQ(diagnostics(R"(daemon = 1
[listener]
name = "x"
)"),
            (Lines{
                R"(t.toml:1:1: listener: no [[listener]] defined)",
                R"(t.toml:1:10: daemon: expected a table ([daemon]), got an integer)",
                R"(t.toml:2:1: listener: expected [[listener]] (an array of tables), got a table)",
            }));
}

TEST(Config, NoListenerIsAnError) {
  EXPECT_EQ(diagnostics(""), Lines{"t.toml:1:1: listener: no [[listener]] defined"});
}

TEST(Config, TomlSyntaxErrorCarriesItsPosition) {
  auto lines = diagnostics("[daemon]\nworkers = = 1\n");
  ASSERT_EQ(lines.size(), 1U);
  EXPECT_EQ(lines[0].rfind("t.toml:2:", 0), 0U) << lines[0];
}

TEST(Config, SeveralErrorsAreReportedAtOnceInFileOrder) {
  EXPECT_EQ(diagnostics(R"([daemon]
workers = -1
[[listener]]
name = "a"
protocol = "udp"
address = ":7"
ttl = 3
[[listener]]
name = "a"
protocol = "tcp"
address = "[::]:7"
read_timeout = "forever"
)"),
            (Lines{
                R"(t.toml:2:11: daemon.workers: must be between 0 and 1024 (got -1))",
                R"(t.toml:7:1: listener["a"].ttl: ttl does not apply to protocol = "udp")",
                R"(t.toml:9:8: listener[1].name: "a" is already the name of listener[0])",
                R"(t.toml:12:16: listener["a"].read_timeout: "forever": expected a duration like "30s")",
            }));
}

TEST(Config, LoadConfigReportsUnreadableFile) {
  LoadResult r = load_config("/nonexistent/echorelay.toml");
  EXPECT_FALSE(r.config.has_value());
  ASSERT_EQ(r.diagnostics.size(), 1U);
  EXPECT_EQ(r.diagnostics[0].text, "/nonexistent/echorelay.toml: cannot read: No such file or directory");
  LoadResult dir = load_config("/");
  ASSERT_EQ(dir.diagnostics.size(), 1U);
  EXPECT_EQ(dir.diagnostics[0].text, "/: cannot read: Is a directory");
}

TEST(Config, LoadConfigUsesThePathInDiagnostics) {
  auto path = std::filesystem::temp_directory_path() / ("echorelay-config-test-" + std::to_string(::getpid()) + ".toml");
  {
    std::ofstream out(path);
    out << "[log]\nlevel = \"loud\"\n";
  }
  LoadResult r = load_config(path.string());
  std::filesystem::remove(path);
  EXPECT_EQ(r.diagnostics.size(), 2U);
  ASSERT_FALSE(r.diagnostics.empty());
  EXPECT_EQ(r.diagnostics[0].text, path.string() + ":1:1: listener: no [[listener]] defined");
}

TEST(Config, EveryShippedConfigFileIsValid) {
  std::size_t checked = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(ECHORELAY_SOURCE_DIR "/config")) {
    if (!entry.is_regular_file() || entry.path().extension() != ".toml") continue;
    LoadResult r = load_config(entry.path().string());
    for (const auto& d : r.diagnostics) ADD_FAILURE() << d.text;
    EXPECT_TRUE(r.config.has_value()) << entry.path();
    ++checked;
  }
  EXPECT_GE(checked, 1U);
}

TEST(Config, ShippedExampleDeclaresTheDocumentedListeners) {
  LoadResult r = load_config(ECHORELAY_SOURCE_DIR "/config/echorelay.toml");
  ASSERT_TRUE(r.config.has_value());
  const Config& c = *r.config;
  EXPECT_TRUE(c.admin.enabled);
  EXPECT_EQ(c.admin.listen.to_string(), "127.0.0.1:9101");
  std::vector<std::string> summary;
  for (const auto& l : c.listeners) {
    summary.push_back(l.name + " " + std::string(to_string(l.protocol)) + " " + l.endpoint.to_string() + " " +
                      std::string(to_string(l.framing)));
  }
  EXPECT_EQ(summary, (Lines{
                         "echo-tcp tcp [::]:7007 line",
                         "echo-lp tcp 127.0.0.1:7008 length-prefixed",
                         "echo-unix unix /tmp/echorelay-echo.sock line",
                         "echo-abstract unix @echorelay-echo line",
                         "echo-udp udp [::]:7007 line",
                         "echo-mcast multicast 239.255.77.77:7009 line",
                "relay-tcp tcp 127.0.0.1:7100 line",
                "relay-udp udp 127.0.0.1:7101 line",
                     }));
  EXPECT_EQ(c.listeners.at(5).interface, "lo");
}

}  // namespace
}  // namespace echorelay::config

namespace echorelay::config {
namespace {

TEST(Config, ProxyProtocolV1IsRefusedOnDatagramRelays) {
  LoadResult r = parse_config(R"([[listener]]
name = "u"
protocol = "udp"
address = "127.0.0.1:0"
handler = "relay"
upstreams = ["127.0.0.1:9"]
proxy_protocol = "v1"
)", "t.toml");
  ASSERT_EQ(r.diagnostics.size(), 1U);
  EXPECT_EQ(r.diagnostics[0].text,
            R"(t.toml:7:18: listener["u"].proxy_protocol: "v1" cannot describe datagrams; use "v2" on a udp relay)");
}

}  // namespace
}  // namespace echorelay::config

// ---- issue 10: configs that can never start, relays into themselves, control bytes

namespace echorelay::config {
namespace {

TEST(ConfigAttack, WildcardAndSpecificBindOfOnePortAreRefusedWithBothLocations) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "any"
protocol = "tcp"
address = "0.0.0.0:7007"
[[listener]]
name = "lo"
protocol = "tcp"
address = "127.0.0.1:7007"
[[listener]]
name = "any6"
protocol = "udp"
address = "[::]:7008"
[[listener]]
name = "any4"
protocol = "udp"
address = "0.0.0.0:7008"
)"),
            (Lines{
                R"(t.toml:8:11: listener["lo"].address: tcp 127.0.0.1:7007 cannot be bound together with listener["any"] (0.0.0.0:7007 at t.toml:4:11): the wildcard address takes the port on every address (unless both set reuse_port = true))",
                R"(t.toml:16:11: listener["any4"].address: udp 0.0.0.0:7008 cannot be bound together with listener["any6"] ([::]:7008 at t.toml:12:11): the wildcard address takes the port on every address)",
            }));
}

TEST(ConfigAttack, BindsThatDoStartTogetherAreAccepted) {
  valid(R"([[listener]]
name = "a"
protocol = "tcp"
address = "0.0.0.0:7007"
reuse_port = true
[[listener]]
name = "b"
protocol = "tcp"
address = "127.0.0.1:7007"
reuse_port = true
[[listener]]
name = "c"
protocol = "udp"
address = "0.0.0.0:7007"
[[listener]]
name = "d"
protocol = "tcp"
address = "[::]:7009"
v6only = true
[[listener]]
name = "e"
protocol = "tcp"
address = "0.0.0.0:7009"
[[listener]]
name = "f"
protocol = "udp"
address = "127.0.0.1:7010"
sockets = 2
[[listener]]
name = "g"
protocol = "udp"
address = "0.0.0.0:7010"
sockets = 4
[[listener]]
name = "h"
protocol = "tcp"
address = "127.0.0.1:7011"
[[listener]]
name = "i"
protocol = "tcp"
address = "127.0.0.2:7011"
)");
}

TEST(ConfigAttack, RelayWhoseUpstreamIsItselfIsRefused) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "loop"
protocol = "tcp"
address = "0.0.0.0:7100"
handler = "relay"
upstreams = ["127.0.0.1:7100"]
[[listener]]
name = "uloop"
protocol = "udp"
address = "[::]:7101"
handler = "relay"
upstreams = ["127.0.0.1:7101"]
[[listener]]
name = "ping"
protocol = "unix"
address = "@ping"
handler = "relay"
upstreams = ["localhost:7102"]
[[listener]]
name = "pong"
protocol = "tcp"
address = "127.0.0.1:7102"
handler = "relay"
upstreams = ["@ping"]
)"),
            (Lines{
                R"(t.toml:6:14: listener["loop"].upstreams[0]: "127.0.0.1:7100" is this daemon's own relay listener["loop"] (0.0.0.0:7100 at t.toml:4:11): the relay would connect to itself)",
                R"(t.toml:12:14: listener["uloop"].upstreams[0]: "127.0.0.1:7101" is this daemon's own relay listener["uloop"] ([::]:7101 at t.toml:10:11): the relay would connect to itself)",
                R"(t.toml:18:14: listener["ping"].upstreams[0]: "localhost:7102" is this daemon's own relay listener["pong"] (127.0.0.1:7102 at t.toml:22:11): the relay would connect to itself)",
                R"(t.toml:24:14: listener["pong"].upstreams[0]: "@ping" is this daemon's own relay listener["ping"] (@ping at t.toml:16:11): the relay would connect to itself)",
            }));
}

TEST(ConfigAttack, RelayToOwnEchoListenerOrOtherProtocolIsFine) {
  valid(R"([[listener]]
name = "echo"
protocol = "tcp"
address = "0.0.0.0:7007"
[[listener]]
name = "relay"
protocol = "tcp"
address = "127.0.0.1:7100"
handler = "relay"
upstreams = ["127.0.0.1:7007", "127.0.0.1:7101"]
[[listener]]
name = "urelay"
protocol = "udp"
address = "127.0.0.1:7101"
handler = "relay"
upstreams = ["127.0.0.1:7100", "[::1]:7007"]
[[listener]]
name = "v6only"
protocol = "tcp"
address = "[::]:7102"
v6only = true
handler = "relay"
upstreams = ["127.0.0.1:7102"]
)");
}

TEST(ConfigAttack, ControlBytesInNamesArePrintedEscapedAndRefused) {
  EXPECT_EQ(diagnostics("[daemon]\npid_file = \"/run/x\\u0001.pid\"\n"
                        "[[listener]]\nname = \"a\"\nprotocol = \"unix\"\naddress = \"@odd\\nname\"\n"
                        "[[listener]]\nname = \"b\"\nprotocol = \"unix\"\naddress = \"/tmp/x\\u0000y\"\n"
                        "[[listener]]\nname = \"c\\nd\"\nprotocol = \"unix\"\naddress = \"@c\"\n"
                        "[[listener]]\nname = \"r\"\nprotocol = \"tcp\"\naddress = \"127.0.0.1:0\"\nhandler = \"relay\"\n"
                        "upstreams = [\"@up\\u007f\"]\n"),
            (Lines{
                R"(t.toml:2:12: daemon.pid_file: "/run/x\x01.pid": control characters are not allowed (found \x01))",
                R"(t.toml:6:11: listener["a"].address: "@odd\nname": control characters are not allowed (found \n))",
                R"(t.toml:10:11: listener["b"].address: "/tmp/x\x00y": control characters are not allowed (found \x00))",
                R"(t.toml:12:8: listener[2].name: "c\nd": only letters, digits, '_', '.' and '-' are allowed)",
                R"(t.toml:20:14: listener["r"].upstreams[0]: "@up\x7f": control characters are not allowed (found \x7f))",
            }));
}

TEST(ConfigAttack, UdpLoopDefaults) {
  Config c = valid(R"([admin]
[[listener]]
name = "u"
protocol = "udp"
address = "127.0.0.1:7"
[[listener]]
name = "v"
protocol = "udp"
address = "127.0.0.1:8"
deny_source_ports = [19]
rate_limit = 0
)");
  EXPECT_EQ(c.admin.max_connections, 64U);
  EXPECT_EQ(c.listeners[0].rate_limit, 10000U);
  EXPECT_TRUE(c.listeners[0].deny_own_ports);
  EXPECT_EQ(c.listeners[0].deny_source_ports, (std::vector<std::uint16_t>{7, 13, 17, 19, 37}));
  EXPECT_EQ(c.listeners[1].rate_limit, 0U);
  EXPECT_FALSE(c.listeners[1].deny_own_ports);
  EXPECT_EQ(c.listeners[1].deny_source_ports, (std::vector<std::uint16_t>{19}));
}

}  // namespace
}  // namespace echorelay::config

// ---- the UDP mirror: every datagram copied to every upstream, one-way; allow_sources

namespace echorelay::config {
namespace {

TEST(ConfigMirror, ReadsStringAndTableUpstreamsPreserveSourceAndAllowSources) {
  Config c = valid(R"([[listener]]
name = "netflow"
protocol = "udp"
address = "[::]:2055"
handler = "mirror"
upstreams = ["127.0.0.1:2056", { address = "127.0.0.1:2057", sample = 10 }, { address = "collector.example:2055" }]
preserve_source = true
allow_sources = ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7", "::1"]
workers = 2
recv_buffer = "8MiB"
[[listener]]
name = "group"
protocol = "multicast"
address = "239.255.1.1:2055"
handler = "mirror"
upstreams = ["[::1]:2056"]
workers = 1
)");
  ASSERT_EQ(c.listeners.size(), 2U);
  const Listener& l = c.listeners[0];
  EXPECT_EQ(l.handler, Handler::Mirror);
  ASSERT_EQ(l.upstreams.size(), 3U);
  EXPECT_EQ(l.upstreams[0].to_string(), "127.0.0.1:2056");
  EXPECT_EQ(l.upstreams[1].to_string(), "127.0.0.1:2057");
  EXPECT_EQ(l.upstreams[2].host, "collector.example");
  EXPECT_EQ(l.upstreams[2].port, 2055);
  EXPECT_EQ(l.upstream_samples, (std::vector<std::uint32_t>{1, 10, 1}));
  EXPECT_TRUE(l.preserve_source);
  std::vector<std::string> ranges;
  for (const auto& r : l.allow_sources) ranges.push_back(r.to_string());
  EXPECT_EQ(ranges, (Lines{"192.0.2.0/24", "2001:db8::/32", "198.51.100.7/32", "::1/128"}));
  EXPECT_EQ(l.workers, 2U);
  EXPECT_EQ(l.recv_buffer, 8U << 20);
  const Listener& m = c.listeners[1];
  EXPECT_EQ(m.handler, Handler::Mirror);
  EXPECT_EQ(m.upstream_samples, (std::vector<std::uint32_t>{1}));
  EXPECT_FALSE(m.preserve_source);
  EXPECT_TRUE(m.allow_sources.empty());
}

TEST(ConfigMirror, RelayUpstreamsGetSampleOneEach) {
  Config c = valid(R"([[listener]]
name = "r"
protocol = "udp"
address = "127.0.0.1:53"
handler = "relay"
upstreams = ["10.0.0.1:53", "10.0.0.2:53"]
)");
  EXPECT_EQ(c.listeners[0].upstream_samples, (std::vector<std::uint32_t>{1, 1}));
}

TEST(ConfigMirror, OnlyDatagramListenersMirror) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "t"
protocol = "tcp"
address = ":2055"
handler = "mirror"
upstreams = ["127.0.0.1:2056"]
preserve_source = true
[[listener]]
name = "x"
protocol = "unix"
address = "@x"
handler = "mirror"
upstreams = ["127.0.0.1:2056"]
)"),
            (Lines{
                R"(t.toml:5:11: listener["t"].handler: handler "mirror" applies to udp and multicast listeners)",
                R"(t.toml:7:1: listener["t"].preserve_source: preserve_source does not apply to protocol = "tcp")",
                R"(t.toml:12:11: listener["x"].handler: handler "mirror" applies to udp and multicast listeners)",
            }));
}

TEST(ConfigMirror, UpstreamEntriesAreChecked) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "m"
protocol = "udp"
address = ":2055"
handler = "mirror"
upstreams = [{ adress = "10.0.0.1:2055" }, { address = "10.0.0.1:2056", sample = 0 }, { sample = 2 }, "/run/c.sock", "@c", 7, { address = "10.0.0.1:0" }]
[[listener]]
name = "empty"
protocol = "udp"
address = ":2056"
handler = "mirror"
upstreams = []
[[listener]]
name = "none"
protocol = "multicast"
address = "239.1.1.1:2055"
handler = "mirror"
[[listener]]
name = "r"
protocol = "udp"
address = ":53"
handler = "relay"
upstreams = ["10.0.0.1:53", { address = "10.0.0.2:53", sample = 2 }]
)"),
            (Lines{
                R"(t.toml:6:14: listener["m"].upstreams[0].address: required key is missing)",
                R"(t.toml:6:16: listener["m"].upstreams[0].adress: unknown key (did you mean "address"?))",
                R"(t.toml:6:82: listener["m"].upstreams[1].sample: must be between 1 and 4294967295 (got 0))",
                R"(t.toml:6:87: listener["m"].upstreams[2].address: required key is missing)",
                R"(t.toml:6:103: listener["m"].upstreams[3]: "/run/c.sock": a udp mirror needs "host:port" upstreams)",
                R"(t.toml:6:118: listener["m"].upstreams[4]: "@c": a udp mirror needs "host:port" upstreams)",
                R"(t.toml:6:124: listener["m"].upstreams[5]: expected a string or a table { address, sample }, got an integer)",
                R"(t.toml:6:139: listener["m"].upstreams[6].address: "10.0.0.1:0": an upstream needs a port other than 0)",
                R"(t.toml:12:13: listener["empty"].upstreams: a mirror needs at least one upstream)",
                R"(t.toml:13:1: listener["none"].upstreams: a mirror needs at least one upstream)",
                R"(t.toml:23:29: listener["r"].upstreams[1]: an upstream table (sample) applies to handler = "mirror")",
            }));
}

// What a mirror would ignore is refused: it balances nothing (every upstream gets every
// datagram), keeps no sessions, dials no TCP, sends no PROXY header, and reads its
// socket from the daemon's workers with no queue of its own.
TEST(ConfigMirror, KeysThatDoNotFitAMirrorAreRefused) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "m"
protocol = "udp"
address = ":2055"
handler = "mirror"
upstreams = ["10.0.0.1:2055"]
balance = "random"
session_timeout = "10s"
max_sessions = 10
connect_timeout = "1s"
idle_timeout = "1m"
upstream_keepalive = "30s"
fallback_delay = "100ms"
proxy_protocol = "v2"
splice = false
source_address = "10.0.0.2"
queue = 64
framing = "raw"
)"),
            (Lines{
                R"(t.toml:7:1: listener["m"].balance: balance does not apply to handler = "mirror")",
                R"(t.toml:8:1: listener["m"].session_timeout: session_timeout does not apply to handler = "mirror")",
                R"(t.toml:9:1: listener["m"].max_sessions: max_sessions does not apply to handler = "mirror")",
                R"(t.toml:10:1: listener["m"].connect_timeout: connect_timeout does not apply to handler = "mirror")",
                R"(t.toml:11:1: listener["m"].idle_timeout: idle_timeout does not apply to handler = "mirror")",
                R"(t.toml:12:1: listener["m"].upstream_keepalive: upstream_keepalive does not apply to handler = "mirror")",
                R"(t.toml:13:1: listener["m"].fallback_delay: fallback_delay does not apply to handler = "mirror")",
                R"(t.toml:14:1: listener["m"].proxy_protocol: proxy_protocol does not apply to handler = "mirror")",
                R"(t.toml:15:1: listener["m"].splice: splice does not apply to handler = "mirror")",
                R"(t.toml:16:1: listener["m"].source_address: source_address does not apply to handler = "mirror")",
                R"(t.toml:17:1: listener["m"].queue: queue does not apply to handler = "mirror": a mirror has no queue, datagrams wait in the socket's receive buffer (recv_buffer))",
                R"(t.toml:18:1: listener["m"].framing: framing does not apply to protocol = "udp")",
            }));
}

TEST(ConfigMirror, PreserveSourceIsAMirrorKeyAndAllowSourcesADatagramKey) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "e"
protocol = "udp"
address = ":7"
preserve_source = true
[[listener]]
name = "r"
protocol = "tcp"
address = ":8"
handler = "relay"
upstreams = ["10.0.0.1:8"]
preserve_source = false
allow_sources = ["10.0.0.0/8"]
[[listener]]
name = "u"
protocol = "unix"
address = "@u"
allow_sources = []
)"),
            (Lines{
                R"(t.toml:5:1: listener["e"].preserve_source: preserve_source does not apply to handler = "echo")",
                R"(t.toml:12:1: listener["r"].preserve_source: preserve_source does not apply to handler = "relay")",
                R"(t.toml:13:1: listener["r"].allow_sources: allow_sources does not apply to protocol = "tcp")",
                R"(t.toml:18:1: listener["u"].allow_sources: allow_sources does not apply to protocol = "unix")",
            }));
}

TEST(ConfigMirror, AllowSourcesOnEveryDatagramHandler) {
  Config c = valid(R"([[listener]]
name = "e"
protocol = "udp"
address = ":7"
allow_sources = ["10.0.0.0/8", "fd00::/8"]
[[listener]]
name = "r"
protocol = "udp"
address = ":53"
handler = "relay"
upstreams = ["10.0.0.1:53"]
allow_sources = ["0.0.0.0/0"]
[[listener]]
name = "g"
protocol = "multicast"
address = "239.1.1.1:9"
allow_sources = ["192.0.2.1"]
)");
  ASSERT_EQ(c.listeners.size(), 3U);
  ASSERT_EQ(c.listeners[0].allow_sources.size(), 2U);
  EXPECT_EQ(c.listeners[0].allow_sources[1].to_string(), "fd00::/8");
  ASSERT_EQ(c.listeners[1].allow_sources.size(), 1U);
  EXPECT_EQ(c.listeners[1].allow_sources[0].prefix, 0U);
  ASSERT_EQ(c.listeners[2].allow_sources.size(), 1U);
  EXPECT_EQ(c.listeners[2].allow_sources[0].to_string(), "192.0.2.1/32");
}

TEST(ConfigMirror, BadAddressRangesAreReportedWithTheParsersMessage) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "e"
protocol = "udp"
address = ":7"
allow_sources = ["10.0.0.1/24", "10.0.0.0/33", "2001:db8::/129", "foo", "10.0.0.0/", 10, "a\u0001b"]
)"),
            (Lines{
                R"(t.toml:5:18: listener["e"].allow_sources[0]: "10.0.0.1/24" has bits set after the /24 prefix: the range is written with its network address)",
                R"(t.toml:5:33: listener["e"].allow_sources[1]: "10.0.0.0/33": the prefix length must be 0..32)",
                R"(t.toml:5:48: listener["e"].allow_sources[2]: "2001:db8::/129": the prefix length must be 0..128)",
                R"(t.toml:5:66: listener["e"].allow_sources[3]: "foo" is not an address range ("192.0.2.0/24", "2001:db8::/32"))",
                R"(t.toml:5:73: listener["e"].allow_sources[4]: "10.0.0.0/": the prefix length must be 0..32)",
                R"(t.toml:5:86: listener["e"].allow_sources[5]: expected a string, got an integer)",
                R"(t.toml:5:90: listener["e"].allow_sources[6]: "a\x01b": control characters are not allowed (found \x01))",
            }));
}

// A mirror whose collector is one of this daemon's datagram listeners sends its copies
// back in (into itself: every datagram multiplied without end), whatever that
// listener's handler. TCP listeners on the port and other ports are fine.
TEST(ConfigMirror, MirrorIntoOwnDatagramListenerIsRefused) {
  EXPECT_EQ(diagnostics(R"([[listener]]
name = "self"
protocol = "udp"
address = "0.0.0.0:2055"
handler = "mirror"
upstreams = ["127.0.0.1:2055"]
[[listener]]
name = "echo"
protocol = "udp"
address = "[::]:7007"
[[listener]]
name = "group"
protocol = "multicast"
address = "239.255.1.1:2056"
[[listener]]
name = "m"
protocol = "udp"
address = "127.0.0.1:2057"
handler = "mirror"
upstreams = ["10.0.0.1:2055", "localhost:7007", { address = "239.255.1.1:2056", sample = 2 }, "[::1]:2055"]
)"),
            (Lines{
                R"(t.toml:6:14: listener["self"].upstreams[0]: "127.0.0.1:2055" is this daemon's own udp listener["self"] (0.0.0.0:2055 at t.toml:4:11): the mirror would send its copies back into this daemon)",
                R"(t.toml:20:31: listener["m"].upstreams[1]: "localhost:7007" is this daemon's own udp listener["echo"] ([::]:7007 at t.toml:10:11): the mirror would send its copies back into this daemon)",
                R"(t.toml:20:61: listener["m"].upstreams[2].address: "239.255.1.1:2056" is this daemon's own multicast listener["group"] (239.255.1.1:2056 at t.toml:14:11): the mirror would send its copies back into this daemon)",
            }));
  valid(R"([[listener]]
name = "m"
protocol = "udp"
address = "127.0.0.1:2055"
handler = "mirror"
upstreams = ["127.0.0.1:7007", "127.0.0.2:2055", "[::1]:2055"]
[[listener]]
name = "t"
protocol = "tcp"
address = "127.0.0.1:7007"
)");
}

// The shipped file's commented-out NetFlow mirror is valid once its "# " is removed.
TEST(ConfigMirror, ShippedNetflowExampleIsValidUncommented) {
  std::ifstream in(ECHORELAY_SOURCE_DIR "/config/echorelay.toml");
  ASSERT_TRUE(in);
  std::string text = "[admin]\n";
  bool inside = false;
  for (std::string line; std::getline(in, line);) {
    if (line == "# [[listener]]") inside = true;
    if (!inside) continue;
    if (line.rfind("# ", 0) != 0) break;
    text += line.substr(2) + "\n";
  }
  Config c = valid(text);
  ASSERT_EQ(c.listeners.size(), 1U);
  const Listener& l = c.listeners[0];
  EXPECT_EQ(l.name, "netflow");
  EXPECT_EQ(l.handler, Handler::Mirror);
  EXPECT_EQ(l.endpoint.to_string(), "[::]:2055");
  ASSERT_EQ(l.upstreams.size(), 2U);
  EXPECT_EQ(l.upstreams[1].to_string(), "127.0.0.1:2057");
  EXPECT_EQ(l.upstream_samples, (std::vector<std::uint32_t>{1, 10}));
}

}  // namespace
}  // namespace echorelay::config
