// TOML text → Config in two passes that collect every diagnostic before deciding:
// (1) walk the tables, type-check and convert each key; (2) cross-field rules
// (unique names and addresses, keys that need an IPv6 or a filesystem address).
// toml++ exceptions stop here; nothing in this file opens a socket or logs.
#include <arpa/inet.h>
#include <toml++/toml.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <memory>

#include "config/config.hpp"

namespace echorelay::config {
namespace {

using net::Endpoint;
using net::HostRule;
using Position = toml::source_position;

constexpr std::int64_t kInt64Max = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t kUint32Max = std::numeric_limits<std::uint32_t>::max();
constexpr std::uint64_t kGiB = 1ULL << 30;
// sd_notify FDNAME= and LISTEN_FDNAMES entries are limited to 255 bytes.
constexpr std::size_t kMaxListenerName = 255;
// IFNAMSIZ counts the terminating NUL.
constexpr std::size_t kMaxInterfaceName = 15;

const std::vector<std::string_view> kTopLevelKeys = {"daemon", "log", "admin", "resolver", "listener"};
const std::vector<std::string_view> kDaemonKeys = {"workers", "drain_timeout", "restart_timeout", "max_connections",
                                                   "pid_file"};
const std::vector<std::string_view> kLogKeys = {"level", "format"};
const std::vector<std::string_view> kAdminKeys = {"listen", "max_connections"};
const std::vector<std::string_view> kResolverKeys = {"servers", "timeout", "attempts"};
// An entry of a mirror's upstreams written as an inline table.
const std::vector<std::string_view> kUpstreamTableKeys = {"address", "sample"};

// Control bytes are written escaped: a diagnostic is one line, whatever the file holds.
std::string escaped(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string quoted(std::string_view s) {
  std::string out = "\"";
  out += escaped(s);
  out += '"';
  return out;
}

// NUL, newlines and the other C0 bytes and DEL: never part of a name or path an
// operator means, and they would split log lines and the bound-addresses file.
std::optional<unsigned char> control_byte(std::string_view s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) return c;
  }
  return std::nullopt;
}

std::string control_message(std::string_view s, unsigned char c) {
  const char byte = static_cast<char>(c);
  return quoted(s) + ": control characters are not allowed (found " + escaped(std::string_view(&byte, 1)) + ")";
}

std::string_view type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    case toml::node_type::none: break;
  }
  return "nothing";
}

// 1073741824 → "1GiB": limits read better in the unit the operator writes.
std::string format_size(std::uint64_t bytes) {
  static constexpr std::pair<int, std::string_view> kUnits[] = {{40, "TiB"}, {30, "GiB"}, {20, "MiB"}, {10, "KiB"}};
  for (auto [shift, unit] : kUnits) {
    std::uint64_t one = 1ULL << shift;
    if (bytes >= one && bytes % one == 0) return std::to_string(bytes / one) + std::string(unit);
  }
  return std::to_string(bytes);
}

std::string join(const std::vector<std::string_view>& words) {
  std::string out;
  for (std::size_t i = 0; i < words.size(); ++i) {
    if (i > 0) out += (i + 1 == words.size()) ? " or " : ", ";
    out.append(words[i]);
  }
  return out;
}

template <class E>
using EnumNames = std::vector<std::pair<std::string_view, E>>;

const EnumNames<Protocol> kProtocols = {
    {"tcp", Protocol::Tcp}, {"udp", Protocol::Udp}, {"unix", Protocol::Unix}, {"multicast", Protocol::Multicast}};
const EnumNames<Handler> kHandlers = {
    {"echo", Handler::Echo}, {"relay", Handler::Relay}, {"mirror", Handler::Mirror}};
const EnumNames<Framing> kFramings = {
    {"line", Framing::Line}, {"length-prefixed", Framing::LengthPrefixed}, {"raw", Framing::Raw}};
const EnumNames<Balance> kBalances = {{"round-robin", Balance::RoundRobin},
                                      {"least-connections", Balance::LeastConnections},
                                      {"random", Balance::Random}};
const EnumNames<ProxyProtocol> kProxyProtocols = {
    {"off", ProxyProtocol::Off}, {"v1", ProxyProtocol::V1}, {"v2", ProxyProtocol::V2}};
const EnumNames<LogLevel> kLogLevels = {{"trace", LogLevel::Trace},
                                        {"debug", LogLevel::Debug},
                                        {"info", LogLevel::Info},
                                        {"warn", LogLevel::Warn},
                                        {"error", LogLevel::Error}};
const EnumNames<LogFormat> kLogFormats = {
    {"auto", LogFormat::Auto}, {"text", LogFormat::Text}, {"json", LogFormat::Json}, {"journal", LogFormat::Journal}};

unsigned protocol_bit(Protocol p) { return 1U << static_cast<unsigned>(p); }
constexpr unsigned kTcp = 1U << static_cast<unsigned>(Protocol::Tcp);
constexpr unsigned kUdp = 1U << static_cast<unsigned>(Protocol::Udp);
constexpr unsigned kUnix = 1U << static_cast<unsigned>(Protocol::Unix);
constexpr unsigned kMcast = 1U << static_cast<unsigned>(Protocol::Multicast);
constexpr unsigned kAnyProtocol = kTcp | kUdp | kUnix | kMcast;

// Which handlers a listener key belongs to, a bit mask like the protocols.
unsigned handler_bit(Handler h) { return 1U << static_cast<unsigned>(h); }
constexpr unsigned kEcho = 1U << static_cast<unsigned>(Handler::Echo);
constexpr unsigned kRelay = 1U << static_cast<unsigned>(Handler::Relay);
constexpr unsigned kMirror = 1U << static_cast<unsigned>(Handler::Mirror);
constexpr unsigned kAnyHandler = kEcho | kRelay | kMirror;

// ---- address identity, for binds that collide and relays that reach themselves

struct Ip {
  int family = 0;  // AF_INET or AF_INET6 (IPv4-mapped IPv6 is AF_INET)
  std::array<unsigned char, 16> bytes{};
  bool wildcard() const {
    return std::all_of(bytes.begin(), bytes.begin() + (family == AF_INET ? 4 : 16), [](unsigned char b) { return b == 0; });
  }
  bool loopback() const {
    if (family == AF_INET) return bytes[0] == 127;
    return std::all_of(bytes.begin(), bytes.begin() + 15, [](unsigned char b) { return b == 0; }) && bytes[15] == 1;
  }
  bool operator==(const Ip&) const = default;
};

std::optional<Ip> ip_of(const std::string& host) {
  Ip ip;
  if (inet_pton(AF_INET, host.c_str(), ip.bytes.data()) == 1) {
    ip.family = AF_INET;
    return ip;
  }
  if (inet_pton(AF_INET6, host.c_str(), ip.bytes.data()) != 1) return std::nullopt;
  ip.family = AF_INET6;
  static constexpr unsigned char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::equal(std::begin(kMapped), std::end(kMapped), ip.bytes.begin())) {
    std::copy(ip.bytes.begin() + 12, ip.bytes.end(), ip.bytes.begin());
    std::fill(ip.bytes.begin() + 4, ip.bytes.end(), 0);
    ip.family = AF_INET;
  }
  return ip;
}

// The kernel's dual-stack default (net.ipv6.bindv6only = 0) unless v6only says otherwise.
bool dual_stack(const Listener& l) { return !l.v6only.value_or(false); }

bool shares_port(const Listener& l) { return l.reuse_port || (l.is_datagram() && l.sockets > 1); }

// Two listeners of one protocol that the kernel refuses to bind together (exact
// duplicates are reported separately): a wildcard against an address it covers.
bool binds_collide(const Listener& a, const Listener& b) {
  if (a.protocol != b.protocol || (a.protocol != Protocol::Tcp && a.protocol != Protocol::Udp)) return false;
  if (a.endpoint.is_unix() || b.endpoint.is_unix() || a.endpoint.port == 0 || a.endpoint.port != b.endpoint.port) {
    return false;
  }
  if (a.endpoint == b.endpoint) return false;  // the duplicate-address diagnostic
  if (shares_port(a) && shares_port(b)) return false;  // SO_REUSEPORT on both: legitimate
  auto ia = ip_of(a.endpoint.host);
  auto ib = ip_of(b.endpoint.host);
  if (!ia || !ib) return false;
  auto covers = [](const Listener& wl, const Ip& w, const Ip& other) {
    if (!w.wildcard()) return false;
    if (w.family == other.family) return true;
    return w.family == AF_INET6 && dual_stack(wl);  // [::] without v6only takes IPv4 as well
  };
  return covers(a, *ia, *ib) || covers(b, *ib, *ia);
}

// Whether a datagram or connection to `upstream` (same port already checked) lands on
// `target`'s address, as far as the file alone can tell: literal addresses and
// "localhost". Names resolved at run time are checked when they resolve.
bool reaches_address(const Endpoint& upstream, const Listener& target) {
  auto t = ip_of(target.endpoint.host);
  if (!t) return false;
  std::vector<Ip> dialed;
  if (upstream.host == "localhost") {
    dialed.push_back(*ip_of("127.0.0.1"));
    dialed.push_back(*ip_of("::1"));
  } else if (auto u = ip_of(upstream.host)) {
    // connect() to a wildcard address reaches the loopback address of its family.
    if (u->wildcard()) u = ip_of(u->family == AF_INET ? "127.0.0.1" : "::1");
    dialed.push_back(*u);
  }
  for (const Ip& d : dialed) {
    if (d == *t) return true;
    if (!t->wildcard()) continue;
    // A wildcard listener answers on every local address; loopback is the one known here.
    if (d.loopback() && (d.family == t->family || (t->family == AF_INET6 && dual_stack(target)))) return true;
  }
  return false;
}

// Whether a relay listener `relay` dialing `upstream` lands on `target` (names are
// checked when they resolve: net/own_listeners.hpp).
bool dial_reaches(const Listener& relay, const Endpoint& upstream, const Listener& target) {
  if (upstream.is_unix() || target.endpoint.is_unix()) {
    return upstream.is_unix() && target.endpoint.is_unix() && upstream.kind == target.endpoint.kind &&
           upstream.path == target.endpoint.path && relay.is_stream() && target.protocol == Protocol::Unix;
  }
  const bool stream = relay.is_stream();
  if (stream ? target.protocol != Protocol::Tcp : target.protocol != Protocol::Udp) return false;
  if (relay.protocol == Protocol::Multicast) return false;
  if (upstream.port != target.endpoint.port || target.endpoint.port == 0) return false;
  return reaches_address(upstream, target);
}

// A mirror's copy to `upstream` arrives at `target`: one of this daemon's udp
// listeners, or a multicast listener whose group it is sent to.
bool copy_reaches(const Endpoint& upstream, const Listener& target) {
  if (upstream.is_unix() || target.endpoint.is_unix()) return false;
  if (target.protocol != Protocol::Udp && target.protocol != Protocol::Multicast) return false;
  if (upstream.port != target.endpoint.port || target.endpoint.port == 0) return false;
  return reaches_address(upstream, target);
}

// What pass 1 learned about one [[listener]] that pass 2 needs: where things
// were written, and which of the core keys came out valid.
struct ListenerMeta {
  Position table;
  std::map<std::string, Position, std::less<>> keys;  // key → its value's position
  // Of the upstreams that parsed, parallel to Listener::upstreams: where each address
  // was written and its full key (listener["r"].upstreams[2], or ….upstreams[2].address
  // in a table), which is not upstreams[u] once an earlier entry was refused.
  std::vector<Position> upstream_positions;
  std::vector<std::string> upstream_keys;
  std::size_t upstreams_written = 0;
  bool name_ok = false;
  bool address_ok = false;
  bool protocol_ok = false;
  bool handler_ok = false;
};

struct Pending {
  Position at;
  std::string text;
};

// Holds the diagnostics of one parse. A plain struct: it lives only inside parse_config.
struct Parser {
  explicit Parser(std::string_view file) : file_(file) {}

  LoadResult run(std::string_view text);

  void error(Position at, std::string_view key, std::string_view message) {
    std::string text = file_ + ":" + std::to_string(at.line) + ":" + std::to_string(at.column) + ": ";
    if (!key.empty()) {
      text.append(key);
      text += ": ";
    }
    text.append(message);
    pending_.push_back({at, std::move(text)});
  }

  void unknown_key(const toml::key& k, const std::string& path, const std::vector<std::string_view>& known) {
    std::string message = "unknown key";
    if (auto s = suggest(k.str(), known)) message += " (did you mean " + quoted(*s) + "?)";
    error(k.source().begin, path, message);
  }

  void wrong_type(const toml::node& n, const std::string& key, std::string_view expected) {
    error(n.source().begin, key, "expected " + std::string(expected) + ", got " + std::string(type_name(n)));
  }

  // ---- typed readers: each reports its own diagnostic and returns nullopt on error

  std::optional<std::string> string_of(const toml::node& n, const std::string& key) {
    if (auto* s = n.as_string()) return s->get();
    wrong_type(n, key, "a string");
    return std::nullopt;
  }

  // A string that names something (a path, a user, an interface): no control bytes.
  std::optional<std::string> name_of(const toml::node& n, const std::string& key) {
    auto s = string_of(n, key);
    if (!s) return std::nullopt;
    if (auto c = control_byte(*s)) {
      error(n.source().begin, key, control_message(*s, *c));
      return std::nullopt;
    }
    return s;
  }

  std::optional<bool> bool_of(const toml::node& n, const std::string& key) {
    if (auto* b = n.as_boolean()) return b->get();
    wrong_type(n, key, "a boolean");
    return std::nullopt;
  }

  std::optional<std::int64_t> int_of(const toml::node& n, const std::string& key, std::int64_t min,
                                     std::int64_t max) {
    auto* i = n.as_integer();
    if (i == nullptr) {
      wrong_type(n, key, "an integer");
      return std::nullopt;
    }
    std::int64_t v = i->get();
    if (v < min || v > max) {
      error(n.source().begin, key, range_message(max, std::to_string(v), std::to_string(min), std::to_string(max)));
      return std::nullopt;
    }
    return v;
  }

  static std::string range_message(std::int64_t max, const std::string& got,
                                   const std::string& min_text, const std::string& max_text) {
    if (max == kInt64Max) return "must be at least " + min_text + " (got " + got + ")";
    return "must be between " + min_text + " and " + max_text + " (got " + got + ")";
  }

  // TCP keepalive counts whole seconds: "500ms" would silently become 0, i.e. off.
  std::optional<Duration> keepalive_of(const toml::node& n, const std::string& key) {
    auto d = duration_of(n, key);
    if (d && d->count() % 1000 != 0) {
      error(n.source().begin, key, "keepalive is set in whole seconds (\"0s\" is off)");
      return std::nullopt;
    }
    return d;
  }

  std::optional<Duration> duration_of(const toml::node& n, const std::string& key, bool positive = false) {
    auto* s = n.as_string();
    if (s == nullptr) {
      wrong_type(n, key, "a duration string like \"30s\"");
      return std::nullopt;
    }
    auto d = parse_duration(s->get());
    if (!d) {
      error(n.source().begin, key, d.error());
      return std::nullopt;
    }
    if (positive && d->count() == 0) {
      error(n.source().begin, key, "must be longer than 0s");
      return std::nullopt;
    }
    return *d;
  }

  // Sizes may be written as integers (bytes) or as strings with a unit.
  std::optional<std::uint64_t> size_of(const toml::node& n, const std::string& key, std::uint64_t min,
                                       std::uint64_t max) {
    std::uint64_t bytes = 0;
    std::string got;
    if (auto* i = n.as_integer()) {
      if (i->get() < 0) {
        error(n.source().begin, key, "a size must not be negative (got " + std::to_string(i->get()) + ")");
        return std::nullopt;
      }
      bytes = static_cast<std::uint64_t>(i->get());
      got = std::to_string(bytes);
    } else if (auto* s = n.as_string()) {
      auto parsed = parse_size(s->get());
      if (!parsed) {
        error(n.source().begin, key, parsed.error());
        return std::nullopt;
      }
      bytes = *parsed;
      got = s->get();
    } else {
      wrong_type(n, key, "a size (an integer or a string like \"64KiB\")");
      return std::nullopt;
    }
    if (bytes < min || bytes > max) {
      error(n.source().begin, key, "must be between " + format_size(min) + " and " + format_size(max) + " (got " +
                                       got + ")");
      return std::nullopt;
    }
    return bytes;
  }

  template <class E>
  std::optional<E> enum_of(const toml::node& n, const std::string& key, const EnumNames<E>& names) {
    auto s = string_of(n, key);
    if (!s) return std::nullopt;
    std::vector<std::string_view> words;
    for (auto& [word, value] : names) {
      if (word == *s) return value;
      words.push_back(word);
    }
    std::string message = quoted(*s) + " is not one of " + join(words);
    if (auto guess = suggest(*s, words)) message += " (did you mean " + quoted(*guess) + "?)";
    error(n.source().begin, key, message);
    return std::nullopt;
  }

  // A list whose elements are each checked by `element`; the array itself must be an array.
  template <class F>
  void each_element(const toml::node& n, const std::string& key, std::string_view expected, F&& element) {
    auto* array = n.as_array();
    if (array == nullptr) {
      wrong_type(n, key, expected);
      return;
    }
    for (std::size_t i = 0; i < array->size(); ++i) {
      element((*array)[i], key + "[" + std::to_string(i) + "]");
    }
  }

  std::optional<Endpoint> inet_endpoint_of(const toml::node& n, const std::string& key, std::string_view what) {
    auto s = string_of(n, key);
    if (!s) return std::nullopt;
    auto ep = net::parse_endpoint(*s, HostRule::IpOnly);
    if (!ep) {
      error(n.source().begin, key, ep.error());
      return std::nullopt;
    }
    if (ep->is_unix()) {
      error(n.source().begin, key, quoted(*s) + ": " + std::string(what) + " needs an IP address and port, e.g. \"127.0.0.1:9101\"");
      return std::nullopt;
    }
    return *ep;
  }

  template <class T, class V>
  static void set(T& field, const std::optional<V>& value) {
    if (value) field = static_cast<T>(*value);
  }

  void read_daemon(const toml::table& t, Daemon& d);
  void read_log(const toml::table& t, Log& l);
  void read_admin(const toml::table& t, Admin& a);
  void read_resolver(const toml::table& t, Resolver& r);
  void read_listener(const toml::table& t, const std::string& prefix, Listener& l, ListenerMeta& meta);
  std::optional<Endpoint> upstream_of(const toml::node& n, const std::string& key);
  void read_upstream(const toml::node& n, const std::string& key, bool tables, Listener& l);
  std::optional<Endpoint> listener_address(const toml::node& n, const std::string& key, Protocol protocol);
  void validate(Config& config);

  std::string file_;
  std::vector<Pending> pending_;
  std::vector<ListenerMeta> metas_;
  Position root_{1, 1};
  Position admin_listen_at_{1, 1};
};

void Parser::read_daemon(const toml::table& t, Daemon& d) {
  for (auto&& [k, v] : t) {
    std::string key = "daemon." + std::string(k.str());
    if (k == "workers") {
      set(d.workers, int_of(v, key, 0, 1024));
    } else if (k == "drain_timeout") {
      set(d.drain_timeout, duration_of(v, key));
    } else if (k == "restart_timeout") {
      // 0s would kill every successor before it could report ready.
      set(d.restart_timeout, duration_of(v, key, true));
    } else if (k == "max_connections") {
      set(d.max_connections, int_of(v, key, 1, kInt64Max));
    } else if (k == "pid_file") {
      auto s = name_of(v, key);
      if (s && !s->empty() && s->front() != '/') {
        error(v.source().begin, key, quoted(*s) + ": must be an absolute path");
      } else {
        set(d.pid_file, s);
      }
    } else {
      unknown_key(k, key, kDaemonKeys);
    }
  }
}

void Parser::read_log(const toml::table& t, Log& l) {
  for (auto&& [k, v] : t) {
    std::string key = "log." + std::string(k.str());
    if (k == "level") {
      set(l.level, enum_of(v, key, kLogLevels));
    } else if (k == "format") {
      set(l.format, enum_of(v, key, kLogFormats));
    } else {
      unknown_key(k, key, kLogKeys);
    }
  }
}

void Parser::read_admin(const toml::table& t, Admin& a) {
  a.enabled = true;
  for (auto&& [k, v] : t) {
    std::string key = "admin." + std::string(k.str());
    if (k == "listen") {
      admin_listen_at_ = v.source().begin;
      set(a.listen, inet_endpoint_of(v, key, "admin.listen"));
    } else if (k == "max_connections") {
      set(a.max_connections, int_of(v, key, 1, 65535));
    } else {
      unknown_key(k, key, kAdminKeys);
    }
  }
}

void Parser::read_resolver(const toml::table& t, Resolver& r) {
  for (auto&& [k, v] : t) {
    std::string key = "resolver." + std::string(k.str());
    if (k == "servers") {
      r.servers.clear();
      each_element(v, key, "an array of strings", [&](const toml::node& e, const std::string& element_key) {
        auto ep = inet_endpoint_of(e, element_key, "a resolver server");
        if (ep && ep->port == 0) {
          error(e.source().begin, element_key, quoted(ep->to_string()) + ": a server needs a port other than 0");
        } else if (ep) {
          r.servers.push_back(*ep);
        }
      });
    } else if (k == "timeout") {
      set(r.timeout, duration_of(v, key, true));
    } else if (k == "attempts") {
      set(r.attempts, int_of(v, key, 1, kUint32Max));
    } else {
      unknown_key(k, key, kResolverKeys);
    }
  }
}

// "host:port" (names allowed, resolved later), "[v6]:port", "/path" or "@name".
std::optional<Endpoint> Parser::upstream_of(const toml::node& n, const std::string& key) {
  auto s = name_of(n, key);
  if (!s) return std::nullopt;
  auto ep = net::parse_endpoint(*s, HostRule::NamesAllowed);
  if (!ep) {
    error(n.source().begin, key, ep.error());
    return std::nullopt;
  }
  if (!ep->is_unix() && ep->port == 0) {
    error(n.source().begin, key, quoted(*s) + ": an upstream needs a port other than 0");
    return std::nullopt;
  }
  return *ep;
}

// One entry of `upstreams`: a string, or (where `tables`, i.e. for a mirror) an inline
// table { address = "host:port", sample = N } that sends the upstream 1 datagram in N.
void Parser::read_upstream(const toml::node& n, const std::string& key, bool tables, Listener& l) {
  const toml::node* address = &n;
  std::string address_key = key;
  std::uint32_t sample = 1;
  if (auto* t = n.as_table()) {
    if (!tables) {
      error(n.source().begin, key, "an upstream table (sample) applies to handler = \"mirror\"");
      return;
    }
    address = nullptr;
    bool ok = true;
    for (auto&& [k, v] : *t) {
      const std::string entry_key = key + "." + std::string(k.str());
      if (k == "address") {
        address = &v;
        address_key = entry_key;
      } else if (k == "sample") {
        auto value = int_of(v, entry_key, 1, kUint32Max);
        ok = ok && value.has_value();
        set(sample, value);
      } else {
        unknown_key(k, entry_key, kUpstreamTableKeys);
        ok = false;
      }
    }
    if (address == nullptr) {
      error(n.source().begin, key + ".address", "required key is missing");
      return;
    }
    if (!ok) {
      upstream_of(*address, address_key);  // its own problems, if any, in the same pass
      return;
    }
  } else if (tables && !n.is_string()) {
    wrong_type(n, key, "a string or a table { address, sample }");
    return;
  }
  auto ep = upstream_of(*address, address_key);
  if (!ep) return;
  l.upstreams.push_back(*ep);
  l.upstream_samples.push_back(sample);
  metas_.back().upstream_positions.push_back(address->source().begin);
  metas_.back().upstream_keys.push_back(address_key);
}

// Every listener key but the four core ones, with the protocols and handlers it fits.
struct ListenerKey {
  std::string_view name;
  unsigned protocols;
  unsigned handlers;
  void (*read)(Parser&, const toml::node&, const std::string&, Listener&);
};

const std::vector<std::string_view> kCoreListenerKeys = {"name", "protocol", "address", "handler"};

const ListenerKey kListenerKeys[] = {
    // tcp / unix
    {"backlog", kTcp | kUnix, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.backlog, p.int_of(v, k, 1, 65535)); }},
    {"reuse_port", kTcp, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.reuse_port, p.bool_of(v, k)); }},
    {"keepalive", kTcp, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.keepalive, p.keepalive_of(v, k)); }},
    {"nodelay", kTcp, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.nodelay, p.bool_of(v, k)); }},
    {"linger", kTcp, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.linger, p.int_of(v, k, -1, INT_MAX)); }},
    // setsockopt takes an int for the buffer sizes.
    {"recv_buffer", kTcp | kUdp | kMcast, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.recv_buffer, p.size_of(v, k, 0, INT_MAX)); }},
    {"send_buffer", kTcp | kUdp | kMcast, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.send_buffer, p.size_of(v, k, 0, INT_MAX)); }},
    {"max_connections", kTcp | kUnix, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) {
       p.set(l.max_connections, p.int_of(v, k, 0, kInt64Max));
     }},
    {"v6only", kTcp, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) {
       auto b = p.bool_of(v, k);
       if (b) l.v6only = *b;
     }},
    // unix
    {"mode", kUnix, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) {
       auto s = p.string_of(v, k);
       if (!s) return;
       bool octal = !s->empty() && s->size() <= 5 &&
                    std::all_of(s->begin(), s->end(), [](char c) { return c >= '0' && c <= '7'; });
       if (!octal) {
         p.error(v.source().begin, k, quoted(*s) + ": expected an octal mode like \"0660\"");
         return;
       }
       auto mode = static_cast<mode_t>(std::stoul(*s, nullptr, 8));
       if (mode > 07777) {
         p.error(v.source().begin, k, quoted(*s) + ": must be at most \"07777\"");
         return;
       }
       l.mode = mode;
     }},
    {"owner", kUnix, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.owner, p.name_of(v, k)); }},
    {"group", kUnix, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.group, p.name_of(v, k)); }},
    // (uid_t)-1 means "no change" to chown and is never a peer's uid.
    {"allow_uids", kUnix, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) {
       l.allow_uids.clear();
       p.each_element(v, k, "an array of integers", [&](const toml::node& e, const std::string& ek) {
         if (auto id = p.int_of(e, ek, 0, kUint32Max - 1)) l.allow_uids.push_back(static_cast<uid_t>(*id));
       });
     }},
    {"allow_gids", kUnix, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) {
       l.allow_gids.clear();
       p.each_element(v, k, "an array of integers", [&](const toml::node& e, const std::string& ek) {
         if (auto id = p.int_of(e, ek, 0, kUint32Max - 1)) l.allow_gids.push_back(static_cast<gid_t>(*id));
       });
     }},
    // udp / multicast
    {"workers", kUdp | kMcast, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.workers, p.int_of(v, k, 0, 1024)); }},
    // A mirror has no queue: datagrams wait in the socket's receive buffer (handler_reason).
    {"queue", kUdp | kMcast, kEcho | kRelay,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.queue, p.int_of(v, k, 1, kUint32Max)); }},
    {"sockets", kUdp | kMcast, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.sockets, p.int_of(v, k, 1, 64)); }},
    {"max_datagram", kUdp | kMcast, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.max_datagram, p.size_of(v, k, 1, 65535)); }},
    {"rate_limit", kUdp | kMcast, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.rate_limit, p.int_of(v, k, 0, kUint32Max)); }},
    {"deny_source_ports", kUdp | kMcast, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) {
       l.deny_source_ports.clear();
       l.deny_own_ports = false;
       p.each_element(v, k, "an array of integers", [&](const toml::node& e, const std::string& ek) {
         if (auto port = p.int_of(e, ek, 0, 65535)) l.deny_source_ports.push_back(static_cast<std::uint16_t>(*port));
       });
     }},
    {"allow_sources", kUdp | kMcast, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) {
       l.allow_sources.clear();
       p.each_element(v, k, "an array of strings", [&](const toml::node& e, const std::string& ek) {
         auto s = p.name_of(e, ek);
         if (!s) return;
         auto range = net::parse_cidr(*s);
         if (!range) {
           p.error(e.source().begin, ek, range.error());
         } else {
           l.allow_sources.push_back(*range);
         }
       });
     }},
    // multicast
    {"interface", kMcast, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) {
       auto s = p.name_of(v, k);
       if (s && s->size() > kMaxInterfaceName) {
         p.error(v.source().begin, k, quoted(*s) + ": interface names are at most 15 bytes");
         return;
       }
       p.set(l.interface, s);
     }},
    {"ttl", kMcast, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.ttl, p.int_of(v, k, 0, 255)); }},
    {"loopback", kMcast, kAnyHandler,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.loopback, p.bool_of(v, k)); }},
    // echo on tcp / unix
    {"framing", kTcp | kUnix, kEcho,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.framing, p.enum_of(v, k, kFramings)); }},
    {"max_frame", kTcp | kUnix, kEcho,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.max_frame, p.size_of(v, k, 1, kGiB)); }},
    {"read_timeout", kTcp | kUnix, kEcho,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.read_timeout, p.duration_of(v, k)); }},
    {"write_timeout", kTcp | kUnix, kEcho,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.write_timeout, p.duration_of(v, k)); }},
    {"request_timeout", kTcp | kUnix, kEcho,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.request_timeout, p.duration_of(v, k)); }},
    // relay
    // Strings for every handler; a mirror's entry may also be { address = "host:port", sample = N }.
    {"upstreams", kAnyProtocol, kRelay | kMirror,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) {
       l.upstreams.clear();
       l.upstream_samples.clear();
       if (auto* array = v.as_array()) p.metas_.back().upstreams_written = array->size();
       // A listener whose handler is in doubt (already reported) takes either form quietly.
       const bool tables = l.handler == Handler::Mirror || !p.metas_.back().handler_ok;
       p.each_element(v, k, tables ? "an array of strings or tables" : "an array of strings",
                      [&](const toml::node& e, const std::string& ek) { p.read_upstream(e, ek, tables, l); });
     }},
    // A multicast relay sends every datagram to every upstream: nothing to balance.
    {"balance", kTcp | kUnix | kUdp, kRelay,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.balance, p.enum_of(v, k, kBalances)); }},
    // Dialing, idling and keepalive are TCP connection matters; a UDP relay's
    // sessions have session_timeout instead.
    {"connect_timeout", kTcp | kUnix, kRelay,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) {
       p.set(l.connect_timeout, p.duration_of(v, k, true));
     }},
    {"idle_timeout", kTcp | kUnix, kRelay,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.idle_timeout, p.duration_of(v, k)); }},
    {"upstream_keepalive", kTcp | kUnix, kRelay,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) {
       p.set(l.upstream_keepalive, p.keepalive_of(v, k));
     }},
    // A bare IP is the common case: the kernel picks the source port.
    {"source_address", kAnyProtocol, kRelay,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) {
       auto s = p.string_of(v, k);
       if (!s) return;
       Endpoint bare;
       bare.host = *s;
       if (bare.is_ip_literal()) {
         // Through parse_endpoint for the same canonical spelling as every other address.
         auto ep = net::parse_endpoint(bare.to_string());
         if (ep) l.source_address = *ep;
         return;
       }
       auto ep = net::parse_endpoint(*s, HostRule::IpOnly);
       if (!ep) {
         p.error(v.source().begin, k, ep.error());
       } else if (ep->is_unix()) {
         p.error(v.source().begin, k, quoted(*s) + ": expected an IP address, optionally with a port");
       } else {
         l.source_address = *ep;
       }
     }},
    {"fallback_delay", kTcp | kUnix, kRelay,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.fallback_delay, p.duration_of(v, k)); }},
    {"proxy_protocol", kAnyProtocol, kRelay,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) {
       p.set(l.proxy_protocol, p.enum_of(v, k, kProxyProtocols));
     }},
    // splice(2) runs where both ends are TCP (tcp_relay.cpp); a Unix client never splices.
    {"splice", kTcp, kRelay,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.splice, p.bool_of(v, k)); }},
    {"session_timeout", kUdp, kRelay,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) {
       p.set(l.session_timeout, p.duration_of(v, k, true));
     }},
    {"max_sessions", kUdp, kRelay,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) {
       p.set(l.max_sessions, p.int_of(v, k, 0, kInt64Max));
     }},
    // mirror
    {"preserve_source", kUdp | kMcast, kMirror,
     [](Parser& p, const toml::node& v, const std::string& k, Listener& l) { p.set(l.preserve_source, p.bool_of(v, k)); }},
};

const std::vector<std::string_view>& all_listener_keys() {
  static const std::vector<std::string_view> all = [] {
    std::vector<std::string_view> out = kCoreListenerKeys;
    for (const auto& key : kListenerKeys) out.push_back(key.name);
    return out;
  }();
  return all;
}

const ListenerKey* find_listener_key(std::string_view name) {
  for (const auto& key : kListenerKeys) {
    if (key.name == name) return &key;
  }
  return nullptr;
}

// Why a handler refuses a key, where "does not apply" alone would leave the operator guessing.
std::string_view handler_reason(std::string_view key, Handler handler) {
  if (handler == Handler::Mirror && key == "queue") {
    return ": a mirror has no queue, datagrams wait in the socket's receive buffer (recv_buffer)";
  }
  return "";
}

std::string listener_prefix(std::string_view name) { return "listener[" + quoted(name) + "]"; }

bool valid_listener_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
         c == '-';
}

std::optional<Endpoint> Parser::listener_address(const toml::node& n, const std::string& key, Protocol protocol) {
  auto s = name_of(n, key);
  if (!s) return std::nullopt;
  const std::string proto_text = "protocol = " + quoted(to_string(protocol));
  if (protocol == Protocol::Unix && (s->empty() || (s->front() != '/' && s->front() != '@'))) {
    error(n.source().begin, key, quoted(*s) + ": " + proto_text + " needs \"/path\" or \"@name\"");
    return std::nullopt;
  }
  auto ep = net::parse_endpoint(*s, HostRule::IpOnly);
  if (!ep) {
    error(n.source().begin, key, ep.error());
    return std::nullopt;
  }
  if (protocol != Protocol::Unix && ep->is_unix()) {
    error(n.source().begin, key, quoted(*s) + ": " + proto_text + " needs \"host:port\"");
    return std::nullopt;
  }
  if (protocol == Protocol::Multicast && !net::is_multicast_address(ep->host)) {
    error(n.source().begin, key, quoted(*s) + ": " + ep->host + " is not a multicast group (224.0.0.0/4 or ff00::/8)");
    return std::nullopt;
  }
  return *ep;
}

void Parser::read_listener(const toml::table& t, const std::string& prefix, Listener& l, ListenerMeta& meta) {
  meta.table = t.source().begin;
  for (auto&& [k, v] : t) meta.keys.emplace(std::string(k.str()), v.source().begin);

  if (const toml::node* n = t.get("name")) {
    const std::string key = prefix + ".name";
    if (auto s = string_of(*n, key)) {
      if (s->empty()) {
        error(n->source().begin, key, "must not be empty");
      } else if (!std::all_of(s->begin(), s->end(), valid_listener_name_char)) {
        // The name is handed over in LISTEN_FDNAMES, where ':' separates names.
        error(n->source().begin, key, quoted(*s) + ": only letters, digits, '_', '.' and '-' are allowed");
      } else if (s->size() > kMaxListenerName) {
        error(n->source().begin, key, "must be at most 255 bytes (the limit of LISTEN_FDNAMES)");
      } else {
        l.name = *s;
        meta.name_ok = true;
      }
    }
  } else {
    error(meta.table, prefix + ".name", "required key is missing");
  }
  // Once it has a valid name, a listener is named by it: listener["echo"].framing.
  const std::string named = meta.name_ok ? listener_prefix(l.name) : prefix;

  if (const toml::node* n = t.get("protocol")) {
    if (auto p = enum_of(*n, named + ".protocol", kProtocols)) {
      l.protocol = *p;
      meta.protocol_ok = true;
    }
  } else {
    error(meta.table, named + ".protocol", "required key is missing");
  }

  if (const toml::node* n = t.get("address")) {
    const std::string key = named + ".address";
    if (meta.protocol_ok) {
      if (auto ep = listener_address(*n, key, l.protocol)) {
        l.address = n->as_string()->get();
        l.endpoint = *ep;
        meta.address_ok = true;
      }
    } else if (auto s = string_of(*n, key)) {
      // Which forms are valid depends on the protocol, already reported as bad.
      l.address = *s;
    }
  } else {
    error(meta.table, named + ".address", "required key is missing");
  }

  if (const toml::node* n = t.get("handler")) {
    if (auto h = enum_of(*n, named + ".handler", kHandlers)) {
      l.handler = *h;
      meta.handler_ok = true;
      // A mirror copies datagrams; a stream has none to copy.
      if (*h == Handler::Mirror && meta.protocol_ok && l.is_stream()) {
        error(n->source().begin, named + ".handler", "handler \"mirror\" applies to udp and multicast listeners");
        meta.handler_ok = false;  // so its other keys are judged by the protocol alone
      }
    }
  } else {
    meta.handler_ok = true;  // echo, the default
  }

  for (auto&& [k, v] : t) {
    const std::string_view name = k.str();
    if (std::find(kCoreListenerKeys.begin(), kCoreListenerKeys.end(), name) != kCoreListenerKeys.end()) continue;
    const std::string key = named + "." + std::string(name);
    const ListenerKey* spec = find_listener_key(name);
    if (spec == nullptr) {
      unknown_key(k, key, all_listener_keys());
      continue;
    }
    const bool protocol_fits = !meta.protocol_ok || (spec->protocols & protocol_bit(l.protocol)) != 0;
    const bool handler_fits = !meta.handler_ok || (spec->handlers & handler_bit(l.handler)) != 0;
    const std::string protocol_message =
        std::string(name) + " does not apply to protocol = " + quoted(to_string(l.protocol));
    const std::string handler_message = std::string(name) + " does not apply to handler = " +
                                        quoted(to_string(l.handler)) + std::string(handler_reason(name, l.handler));
    // A relay or mirror key on an echo listener is first of all a handler mistake; an
    // echo framing key on UDP is first of all a protocol mistake.
    if ((spec->handlers & kEcho) == 0 && !handler_fits) {
      error(k.source().begin, key, handler_message);
    } else if (!protocol_fits) {
      error(k.source().begin, key, protocol_message);
    } else if (!handler_fits) {
      error(k.source().begin, key, handler_message);
    } else {
      spec->read(*this, v, key, l);
    }
  }
}

void Parser::validate(Config& config) {
  if (config.listeners.empty()) error(root_, "listener", "no [[listener]] defined");

  auto listener_ref = [&](std::size_t i) {
    return metas_[i].name_ok ? listener_prefix(config.listeners[i].name) : "listener[" + std::to_string(i) + "]";
  };
  auto location = [&](Position at) {
    return file_ + ":" + std::to_string(at.line) + ":" + std::to_string(at.column);
  };
  auto address_at = [&](std::size_t i) {
    auto it = metas_[i].keys.find("address");
    return it == metas_[i].keys.end() ? metas_[i].table : it->second;
  };

  std::map<std::string, std::size_t, std::less<>> names;
  std::map<std::string, std::size_t, std::less<>> addresses;
  for (std::size_t i = 0; i < config.listeners.size(); ++i) {
    const Listener& l = config.listeners[i];
    const ListenerMeta& meta = metas_[i];
    const std::string index_prefix = "listener[" + std::to_string(i) + "]";
    const std::string prefix = meta.name_ok ? listener_prefix(l.name) : index_prefix;
    auto at = [&](std::string_view key) {
      auto it = meta.keys.find(key);
      return it == meta.keys.end() ? meta.table : it->second;
    };

    if (meta.name_ok) {
      auto [it, fresh] = names.emplace(l.name, i);
      if (!fresh) {
        error(at("name"), index_prefix + ".name",
              quoted(l.name) + " is already the name of listener[" + std::to_string(it->second) + "]");
      }
    }

    if (meta.address_ok && meta.protocol_ok) {
      // Port 0 binds get a fresh port each, so they never collide.
      const bool ephemeral = !l.endpoint.is_unix() && l.endpoint.port == 0;
      if (!ephemeral) {
        const std::string identity = std::string(to_string(l.protocol)) + " " + l.endpoint.to_string();
        auto [it, fresh] = addresses.emplace(identity, i);
        if (!fresh) {
          error(at("address"), prefix + ".address", identity + " is already used by " + listener_ref(it->second));
        }
        // Different spellings of one bind: a wildcard takes the port on every address
        // of its family (and an IPv6 wildcard without v6only on IPv4 too).
        for (std::size_t j = 0; j < i; ++j) {
          const Listener& other = config.listeners[j];
          if (!metas_[j].address_ok || !metas_[j].protocol_ok) continue;
          if (!binds_collide(l, other)) continue;
          error(at("address"), prefix + ".address",
                std::string(to_string(l.protocol)) + " " + l.endpoint.to_string() + " cannot be bound together with " +
                    listener_ref(j) + " (" + other.endpoint.to_string() + " at " + location(address_at(j)) +
                    "): the wildcard address takes the port on every address" +
                    (l.protocol == Protocol::Tcp ? " (unless both set reuse_port = true)" : ""));
        }
      }
      if (config.admin.enabled && l.protocol == Protocol::Tcp && !ephemeral && l.endpoint == config.admin.listen) {
        error(admin_listen_at_, "admin.listen",
              "tcp " + l.endpoint.to_string() + " is already used by " + listener_ref(i));
      }
      if (l.protocol == Protocol::Tcp && l.v6only && !l.endpoint.is_ipv6()) {
        error(at("v6only"), prefix + ".v6only",
              "applies only to an IPv6 address (address = " + quoted(l.address) + ")");
      }
      if (l.protocol == Protocol::Unix && l.endpoint.kind == Endpoint::Kind::UnixAbstract) {
        for (std::string_view key : {"mode", "owner", "group"}) {
          if (meta.keys.count(key) != 0) {
            error(at(key), prefix + "." + std::string(key),
                  std::string(key) + " does not apply to an abstract socket (" + quoted(l.address) +
                      " has no file)");
          }
        }
      }
    }

    if (meta.protocol_ok && l.protocol == Protocol::Multicast) {
      // Every socket bound to the group's port gets its own copy of each datagram.
      if (l.sockets > 1) {
        error(at("sockets"), prefix + ".sockets",
              "a multicast listener has one socket: each of " + std::to_string(l.sockets) +
                  " sockets would receive (and answer) every datagram");
      }
      // `workers` fits: it says how many workers read the socket, each sending what it
      // read. Nothing is handed between them, so there is no queue.
      if (meta.handler_ok && l.handler == Handler::Relay && meta.keys.count("queue") != 0) {
        error(at("queue"), prefix + ".queue",
              "queue does not apply to a multicast relay: the worker that reads a datagram sends it to every "
              "upstream itself");
      }
    }

    const bool forwards = l.handler == Handler::Relay || l.handler == Handler::Mirror;
    if (meta.handler_ok && forwards) {
      const std::string handler(to_string(l.handler));
      if (meta.upstreams_written == 0) {
        error(at("upstreams"), prefix + ".upstreams", "a " + handler + " needs at least one upstream");
      }
      // A relay whose upstream is one of this daemon's relay listeners (itself included)
      // chains into itself: one client uses every fd in a second. A mirror whose
      // collector is one of this daemon's datagram listeners (any handler) sends its
      // copies back in: into itself, it multiplies every datagram without end.
      if (meta.protocol_ok) {
        for (std::size_t u = 0; u < l.upstreams.size(); ++u) {
          for (std::size_t j = 0; j < config.listeners.size(); ++j) {
            const Listener& target = config.listeners[j];
            if (!metas_[j].address_ok || !metas_[j].protocol_ok || !metas_[j].handler_ok) continue;
            const std::string own = quoted(l.upstreams[u].to_string()) + " is this daemon's own ";
            const std::string where = " (" + target.endpoint.to_string() + " at " + location(address_at(j)) + ")";
            if (l.handler == Handler::Relay) {
              if (target.handler != Handler::Relay || !dial_reaches(l, l.upstreams[u], target)) continue;
              error(meta.upstream_positions[u], meta.upstream_keys[u],
                    own + "relay " + listener_ref(j) + where + ": the relay would connect to itself");
            } else {
              if (!copy_reaches(l.upstreams[u], target)) continue;
              error(meta.upstream_positions[u], meta.upstream_keys[u],
                    own + std::string(to_string(target.protocol)) + " " + listener_ref(j) + where +
                        ": the mirror would send its copies back into this daemon");
            }
            break;
          }
        }
      }
      if (meta.protocol_ok && l.is_datagram()) {
        for (std::size_t u = 0; u < l.upstreams.size(); ++u) {
          if (!l.upstreams[u].is_unix()) continue;
          error(meta.upstream_positions[u], meta.upstream_keys[u],
                quoted(l.upstreams[u].to_string()) + ": a " + std::string(to_string(l.protocol)) + " " + handler +
                    " needs \"host:port\" upstreams");
        }
        // v1 is a text line for TCP streams; it has no way to say "UDP".
        if (l.handler == Handler::Relay && l.proxy_protocol == ProxyProtocol::V1) {
          error(at("proxy_protocol"), prefix + ".proxy_protocol",
                "\"v1\" cannot describe datagrams; use \"v2\" on a " + std::string(to_string(l.protocol)) + " relay");
        }
      }
    }
  }
}

LoadResult Parser::run(std::string_view text) {
  Config config;
  config.path = file_;
  config.admin.listen = net::parse_endpoint("127.0.0.1:9101").value();

  toml::table root;
  bool parsed = false;
  try {
    root = toml::parse(text, std::string_view(file_));
    parsed = true;
  } catch (const toml::parse_error& e) {
    error(e.source().begin, "", e.description());
  }

  if (parsed) {
    root_ = root.source().begin;
    if (root_.line == 0) root_ = {1, 1};
    for (auto&& [k, v] : root) {
      const std::string key(k.str());
      // clang 14 (the fuzz build) cannot capture a structured binding in a lambda.
      const toml::node& node = v;
      auto section = [&](auto read) {
        if (auto* t = node.as_table()) {
          read(*t);
        } else {
          wrong_type(node, key, "a table ([" + key + "])");
        }
      };
      if (k == "daemon") {
        section([&](const toml::table& t) { read_daemon(t, config.daemon); });
      } else if (k == "log") {
        section([&](const toml::table& t) { read_log(t, config.log); });
      } else if (k == "admin") {
        section([&](const toml::table& t) { read_admin(t, config.admin); });
      } else if (k == "resolver") {
        section([&](const toml::table& t) { read_resolver(t, config.resolver); });
      } else if (k == "listener") {
        auto* array = v.as_array();
        if (array == nullptr) {
          error(v.source().begin, key, "expected [[listener]] (an array of tables), got " + std::string(type_name(v)));
          continue;
        }
        for (std::size_t i = 0; i < array->size(); ++i) {
          const std::string prefix = "listener[" + std::to_string(i) + "]";
          const toml::node& element = (*array)[i];
          auto* t = element.as_table();
          if (t == nullptr) {
            wrong_type(element, prefix, "a table");
            continue;
          }
          config.listeners.emplace_back();
          metas_.emplace_back();
          read_listener(*t, prefix, config.listeners.back(), metas_.back());
        }
      } else {
        unknown_key(k, key, kTopLevelKeys);
      }
    }
    validate(config);
  }

  // File order reads best, whichever pass found the problem.
  std::stable_sort(pending_.begin(), pending_.end(), [](const Pending& a, const Pending& b) {
    return a.at.line != b.at.line ? a.at.line < b.at.line : a.at.column < b.at.column;
  });
  LoadResult result;
  for (auto& p : pending_) result.diagnostics.push_back({std::move(p.text)});
  if (result.diagnostics.empty()) result.config = std::move(config);
  return result;
}

}  // namespace

LoadResult parse_config(std::string_view toml_text, std::string_view source_name) {
  try {
    return Parser(source_name).run(toml_text);
  } catch (const std::exception& e) {
    // Only allocation failures can get here; still, no exception leaves the config module.
    LoadResult result;
    result.diagnostics.push_back({std::string(source_name) + ": cannot parse: " + e.what()});
    return result;
  }
}

LoadResult load_config(const std::string& path) {
  auto cannot_read = [&](int err) {
    LoadResult result;
    result.diagnostics.push_back({path + ": cannot read: " + std::strerror(err)});
    return result;
  };
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) return cannot_read(errno);
  std::string text;
  char buf[65536];
  while (true) {
    std::size_t n = std::fread(buf, 1, sizeof buf, file.get());
    text.append(buf, n);
    if (n < sizeof buf) break;
  }
  // fopen succeeds on a directory; the read is what fails, with EISDIR.
  if (std::ferror(file.get())) return cannot_read(errno);
  return parse_config(text, path);
}

}  // namespace echorelay::config
