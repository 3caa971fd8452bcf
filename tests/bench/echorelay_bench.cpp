// echorelay-bench: the load generator of tests/bench. Owns the workloads (pingpong, bulk,
// churn, udp, idle, mirror), byte-for-byte verification of every echo, the latency histogram and
// the one-line JSON report; for the restart benchmark also a notify-socket receiver and a
// signal sender that print CLOCK_MONOTONIC timestamps. Plain C++20 over epoll: no Asio and no daemon code, so it is
// cheap to build and shares no code path with what it measures. Starting servers and
// tabulating results belong to tests/bench/run.
#include <arpa/inet.h>
#include <linux/sock_diag.h>
#include <dirent.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <barrier>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

std::uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

// SIGINT/SIGTERM end the measured window early (pingpong, bulk, churn, udp): the run
// reports what it measured until then. The handler only stores the time (clock_gettime
// is async-signal-safe); the workers notice within one epoll timeout.
std::atomic<std::uint64_t> g_stop_ns{~std::uint64_t{0}};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

extern "C" void on_stop_signal(int) {
  std::uint64_t expected = ~std::uint64_t{0};
  g_stop_ns.compare_exchange_strong(expected, now_ns());
}

[[noreturn]] void fail(const std::string& message) {
  std::fprintf(stderr, "echorelay-bench: %s\n", message.c_str());
  std::exit(2);
}

// ---------------------------------------------------------------------------------------
// Latency histogram: log-linear buckets like HdrHistogram with 32 sub-buckets per power of
// two, so any recorded value is reported within ~3%. Values are nanoseconds; 64 powers
// cover every duration a run can see. Fixed size, so recording never allocates.
class Histogram {
 public:
  void record(std::uint64_t v) {
    ++counts_[index(v)];
    ++total_;
  }
  void merge(const Histogram& other) {
    for (std::size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i];
    total_ += other.total_;
  }
  // The value at quantile q (0..1), as the middle of its bucket; 0 when empty.
  std::uint64_t quantile(double q) const {
    if (total_ == 0) return 0;
    auto rank = static_cast<std::uint64_t>(q * static_cast<double>(total_));
    if (rank >= total_) rank = total_ - 1;
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < counts_.size(); ++i) {
      seen += counts_[i];
      if (seen > rank) return middle(i);
    }
    return middle(counts_.size() - 1);
  }

 private:
  static constexpr unsigned kSubBits = 5;
  static constexpr std::uint64_t kSub = 1u << kSubBits;
  static std::size_t index(std::uint64_t v) {
    if (v < 2 * kSub) return static_cast<std::size_t>(v);
    const unsigned msb = 63u - static_cast<unsigned>(__builtin_clzll(v));
    const unsigned shift = msb - kSubBits;
    return static_cast<std::size_t>(shift * kSub + (v >> shift));
  }
  static std::uint64_t middle(std::size_t i) {
    if (i < 2 * kSub) return i;
    const std::uint64_t shift = i / kSub - 1;
    const std::uint64_t mantissa = i % kSub + kSub;
    return (mantissa << shift) + ((std::uint64_t{1} << shift) >> 1);
  }
  std::array<std::uint64_t, 64 * kSub> counts_{};
  std::uint64_t total_ = 0;
};

// ---------------------------------------------------------------------------------------
// Options and targets.

enum class Mode { PingPong, Bulk, Churn, Udp, Idle, Mirror };
enum class Framing { Line, LengthPrefixed, Raw };
enum class Kind { Tcp, Unix, Udp };

struct Target {
  Kind kind = Kind::Tcp;
  sockaddr_storage addr{};
  socklen_t len = 0;
  std::string text;
};

struct Options {
  Mode mode = Mode::PingPong;
  std::string mode_name;
  Target target;
  std::size_t connections = 1;
  std::size_t size = 0;  // 0 = the mode's default
  std::size_t line_size = 1024;
  Framing framing = Framing::Line;
  std::uint64_t duration_ns = 5'000'000'000;
  std::uint64_t warmup_ns = 1'000'000'000;
  std::uint64_t loss_timeout_ns = 200'000'000;
  std::uint64_t connect_timeout_ns = 30'000'000'000;
  std::uint64_t request_timeout_ns = 0;  // 0 = off
  std::uint64_t pause_ns = 0;  // pingpong/udp: think time between a reply and the next request
  std::size_t threads = 1;
  bool progress = false;
  bool reconnect = false;  // a clean EOF at a request boundary reconnects (not an error)
  pid_t server_pid = 0;     // --server-pid: whose CPU time the measured window cost
  // mirror: the collector addresses this generator binds (the server sends copies there),
  // and the window of datagrams in flight against the first collector (0 = open loop).
  std::vector<std::string> collect;
  std::size_t window = 0;
  bool read_all = false;  // mirror: read every collector, not only the first
};

std::optional<std::uint64_t> parse_duration_ns(std::string_view text) {
  double value = 0;
  std::size_t used = 0;
  try {
    value = std::stod(std::string(text), &used);
  } catch (...) {
    return std::nullopt;
  }
  const std::string_view unit = text.substr(used);
  double scale = 1e9;
  if (unit == "ms") scale = 1e6;
  else if (unit == "us") scale = 1e3;
  else if (unit == "m") scale = 60e9;
  else if (!unit.empty() && unit != "s") return std::nullopt;
  if (value < 0) return std::nullopt;
  return static_cast<std::uint64_t>(value * scale);
}

std::size_t parse_count(std::string_view text, const char* what) {
  std::size_t value = 0;
  std::size_t mult = 1;
  if (text.ends_with("KiB")) mult = 1024, text.remove_suffix(3);
  else if (text.ends_with("MiB")) mult = 1024 * 1024, text.remove_suffix(3);
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size()) fail(std::string("bad ") + what + ": " + std::string(text));
  return value * mult;
}

// Traffic goes to loopback only: 127.0.0.0/8, ::1 (and a v4-mapped 127.x), Unix paths.
Target parse_target(const std::string& text) {
  Target t;
  t.text = text;
  std::string rest;
  if (text.starts_with("tcp://")) t.kind = Kind::Tcp, rest = text.substr(6);
  else if (text.starts_with("udp://")) t.kind = Kind::Udp, rest = text.substr(6);
  else if (text.starts_with("unix://")) t.kind = Kind::Unix, rest = text.substr(7);
  else fail("target must be tcp://host:port, udp://host:port or unix:///path: " + text);

  if (t.kind == Kind::Unix) {
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    if (rest.empty() || rest.size() >= sizeof sun.sun_path) fail("bad unix path: " + text);
    std::memcpy(sun.sun_path, rest.data(), rest.size());
    if (rest[0] == '@') sun.sun_path[0] = '\0';  // abstract namespace
    std::memcpy(&t.addr, &sun, sizeof sun);
    t.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + rest.size() + (rest[0] == '@' ? 0 : 1));
    return t;
  }
  std::string host;
  std::string port;
  if (rest.starts_with("[")) {
    const auto close = rest.find("]:");
    if (close == std::string::npos) fail("bad address: " + text);
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
  } else {
    const auto colon = rest.rfind(':');
    if (colon == std::string::npos) fail("bad address: " + text);
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  if (host == "localhost") host = "127.0.0.1";
  const auto port_number = static_cast<std::uint16_t>(parse_count(port, "port"));
  sockaddr_in sin{};
  sockaddr_in6 sin6{};
  if (inet_pton(AF_INET, host.c_str(), &sin.sin_addr) == 1) {
    if ((ntohl(sin.sin_addr.s_addr) >> 24) != 127) fail("refusing a non-loopback target: " + text);
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port_number);
    std::memcpy(&t.addr, &sin, sizeof sin);
    t.len = sizeof sin;
  } else if (inet_pton(AF_INET6, host.c_str(), &sin6.sin6_addr) == 1) {
    const bool mapped_loopback = IN6_IS_ADDR_V4MAPPED(&sin6.sin6_addr) && sin6.sin6_addr.s6_addr[12] == 127;
    if (!IN6_IS_ADDR_LOOPBACK(&sin6.sin6_addr) && !mapped_loopback) fail("refusing a non-loopback target: " + text);
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(port_number);
    std::memcpy(&t.addr, &sin6, sizeof sin6);
    t.len = sizeof sin6;
  } else {
    fail("host must be a loopback IP address: " + text);
  }
  return t;
}

// ---------------------------------------------------------------------------------------
// Payload: one fixed pseudo-random stream of printable bytes (never '\n'), long and
// aperiodic enough that an echo from the wrong offset or connection cannot match.

constexpr std::size_t kPatternLen = 1'000'003;  // prime: writes of any power of two drift across it
constexpr std::size_t kMaxChunk = 256 * 1024;   // longest contiguous slice handed out

const std::vector<char>& pattern() {
  static const std::vector<char> bytes = [] {
    std::vector<char> v(kPatternLen + kMaxChunk);
    std::uint64_t x = 0x9e3779b97f4a7c15u;
    for (std::size_t i = 0; i < kPatternLen; ++i) {
      x = x * 6364136223846793005u + 1442695040888963407u;
      v[i] = static_cast<char>('!' + (x >> 33) % 94);  // '!'..'~'
    }
    std::copy_n(v.begin(), kMaxChunk, v.begin() + kPatternLen);  // slices never wrap
    return v;
  }();
  return bytes;
}

// Builds request number `seq` of connection `id` into `out` (out.size() bytes on the wire).
void build_frame(std::vector<char>& out, Framing framing, std::uint64_t id, std::uint64_t seq) {
  const std::size_t n = out.size();
  const char* src = pattern().data() + (id * 7919 + seq * 104729) % kPatternLen;
  switch (framing) {
    case Framing::Line:
      std::memcpy(out.data(), src, n - 1);
      out[n - 1] = '\n';
      break;
    case Framing::LengthPrefixed: {
      const auto len = static_cast<std::uint32_t>(n - 4);
      out[0] = static_cast<char>(len >> 24);
      out[1] = static_cast<char>(len >> 16);
      out[2] = static_cast<char>(len >> 8);
      out[3] = static_cast<char>(len);
      std::memcpy(out.data() + 4, src, n - 4);
      break;
    }
    case Framing::Raw:
      std::memcpy(out.data(), src, n);
      break;
  }
}

// The bulk stream: for raw framing the pattern itself; for line framing the pattern cut
// into lines of line_size bytes, each ending in '\n'. Built once, one period long, with
// its first kMaxChunk bytes repeated at the end so any slice is contiguous.
struct BulkStream {
  std::vector<char> bytes;
  std::size_t period = 0;
  const char* at(std::uint64_t offset) const { return bytes.data() + offset % period; }
};

BulkStream make_bulk_stream(Framing framing, std::size_t line_size) {
  BulkStream s;
  const auto& p = pattern();
  if (framing != Framing::Line) {
    s.period = kPatternLen;
    s.bytes.assign(p.begin(), p.end());
    return s;
  }
  const std::size_t lines = (kPatternLen + line_size - 1) / line_size;
  s.period = lines * line_size;
  s.bytes.resize(s.period + kMaxChunk);
  for (std::size_t k = 0; k < lines; ++k) {
    std::memcpy(s.bytes.data() + k * line_size, p.data() + (k * 131) % kPatternLen, line_size - 1);
    s.bytes[k * line_size + line_size - 1] = '\n';
  }
  std::copy_n(s.bytes.begin(), kMaxChunk, s.bytes.begin() + static_cast<std::ptrdiff_t>(s.period));
  return s;
}

// ---------------------------------------------------------------------------------------
// Per-thread results, merged by main once every thread has stopped.

struct Stats {
  std::uint64_t requests = 0;
  std::uint64_t bytes = 0;
  std::uint64_t errors = 0;
  std::uint64_t mismatches = 0;
  std::uint64_t lost = 0;
  std::uint64_t connects = 0;    // connects completed in the window
  std::uint64_t reconnects = 0;  // clean closes by the server at a request boundary (--reconnect)
  // Of those, the closes that came after a request was sent (EOF before any reply byte):
  // the request went again on a new connection, but the server dropped it.
  std::uint64_t resent = 0;
  Histogram latency;
  std::atomic<std::uint64_t> progress{0};  // requests so far, read by the progress printer

  void merge(const Stats& o) {
    requests += o.requests;
    bytes += o.bytes;
    errors += o.errors;
    mismatches += o.mismatches;
    lost += o.lost;
    connects += o.connects;
    reconnects += o.reconnects;
    resent += o.resent;
    latency.merge(o.latency);
  }
};

// The measurement window: [measure_start, measure_end). Set once every thread has its
// connections up, so connection setup never counts as load.
struct Clock {
  std::atomic<std::uint64_t> start{0};
  std::uint64_t warmup = 0;
  std::uint64_t duration = 0;
  std::uint64_t measure_start() const { return start.load(std::memory_order_acquire) + warmup; }
  // The planned end, or earlier when SIGINT/SIGTERM stopped the run.
  std::uint64_t measure_end() const {
    return std::min(measure_start() + duration, g_stop_ns.load(std::memory_order_relaxed));
  }
};

int open_socket(const Target& t, bool nodelay) {
  const int family = t.addr.ss_family;
  const int type = t.kind == Kind::Udp ? SOCK_DGRAM : SOCK_STREAM;
  const int fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (nodelay && t.kind == Kind::Tcp) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  return fd;
}

// Starts a non-blocking connect. Returns the fd (connected or in progress), or -1 with
// errno set; EAGAIN on a Unix socket means its backlog is full: try again shortly.
int start_connect(const Target& t, bool nodelay) {
  const int fd = open_socket(t, nodelay);
  if (fd < 0) return -1;
  if (connect(fd, reinterpret_cast<const sockaddr*>(&t.addr), t.len) < 0 && errno != EINPROGRESS) {
    const int saved = errno;
    close(fd);
    errno = saved;
    return -1;
  }
  return fd;
}

// The outcome of a non-blocking connect: 0 or its errno.
int connect_error(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
  return err;
}

void epoll_set(int ep, int op, int fd, std::uint32_t events, std::uint64_t data) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = data;
  if (epoll_ctl(ep, op, fd, &ev) < 0 && op != EPOLL_CTL_DEL) fail(std::string("epoll_ctl: ") + std::strerror(errno));
}

// ---------------------------------------------------------------------------------------
// A stream connection, shared by pingpong, bulk, churn and idle. Each mode drives it.

struct Conn {
  enum class State { Down, Connecting, Running, Dead };
  int fd = -1;
  std::uint32_t gen = 0;  // bumped per socket: epoll events of a closed socket are ignored
  std::uint64_t id = 0;
  State state = State::Down;
  bool handshake = false;  // setup echo outstanding
  int attempts = 0;        // failed setup attempts
  const char* last_op = "connect";  // the last failure, for the diagnostic when giving up
  int last_err = 0;
  std::uint64_t seq = 0;
  std::uint64_t started = 0;  // connect start (churn) or request sent (pingpong)
  std::uint64_t step_at = 0;  // last connect or request sent: what --request-timeout times
  bool resend = false;        // the request goes again on a new connection (--reconnect)
  bool paused = false;        // --pause: between a reply and the next request, nothing outstanding
  std::uint64_t retry_at = 0;
  bool out_armed = false;
  std::vector<char> request;
  std::vector<char> reply;
  std::size_t sent = 0;
  std::size_t got = 0;
  // bulk
  std::uint64_t stream_sent = 0;
  std::uint64_t stream_got = 0;
  struct Pending {
    std::uint64_t end;
    std::uint64_t at;
  };
  std::array<Pending, 64> pending{};  // writes not fully echoed yet, oldest first
  std::size_t pending_head = 0;
  std::size_t pending_count = 0;
};

// Starts the measurement clock once the last thread is through setup.
struct StartClock {
  Clock* clock;
  void operator()() noexcept { clock->start.store(now_ns(), std::memory_order_release); }
};
using Ready = std::barrier<StartClock>;

class Worker {
 public:
  Worker(const Options& opt, Clock& clock, Ready* ready, const std::vector<std::uint64_t>& ids,
         const BulkStream* stream)
      : opt_(opt), clock_(clock), ready_(ready), stream_(stream) {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) fail("epoll_create1");
    // Bulk proves each connection with one small line before streaming; the others with
    // one request of the measured size.
    const std::size_t frame = opt_.mode == Mode::Bulk ? 64 : opt_.size;
    conns_.resize(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      conns_[i].id = ids[i];
      conns_[i].request.resize(frame);
      conns_[i].reply.resize(frame);
    }
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() {
    for (auto& c : conns_) close_conn(c);
    close(ep_);
  }
  Stats& stats() { return stats_; }

  void run() {
    if (opt_.mode == Mode::Udp) return run_udp();
    if (opt_.mode != Mode::Churn) establish_all();
    ready_->arrive_and_wait();
    running_ = true;
    for (auto& c : conns_) {
      if (opt_.mode == Mode::Churn) begin_connect(c, now_ns());
      else if (c.state == Conn::State::Running) on_connected(c, now_ns());
    }
    std::array<epoll_event, 256> events{};
    std::uint64_t next_scan = now_ns() + 100'000'000;
    for (;;) {
      std::uint64_t now = now_ns();
      if (now >= clock_.measure_end()) break;
      retry_due(now);
      resume_due(now);
      if (opt_.request_timeout_ns && opt_.mode != Mode::Bulk && now >= next_scan) {
        next_scan = now + 100'000'000;
        expire_stalled(now);
      }
      const int n = epoll_wait(ep_, events.data(), static_cast<int>(events.size()),
                               down_.empty() && paused_.empty() ? 10 : 1);
      now = now_ns();
      for (int i = 0; i < n; ++i) {
        Conn* c = lookup(events[i].data.u64);
        if (c) on_event(*c, events[i].events, now);
      }
    }
  }

  // Idle mode: connect all, one echo each; they then stay open until the Worker goes.
  void run_idle() { establish_all(); }
  std::size_t established() const {
    return static_cast<std::size_t>(std::count_if(conns_.begin(), conns_.end(),
                                                  [](const Conn& c) { return c.state == Conn::State::Running; }));
  }

 private:
  bool in_window(std::uint64_t t) const { return t >= clock_.measure_start() && t < clock_.measure_end(); }

  std::uint64_t tag(const Conn& c) const {
    return static_cast<std::uint64_t>(&c - conns_.data()) | (static_cast<std::uint64_t>(c.gen) << 32);
  }
  Conn* lookup(std::uint64_t data) {
    Conn& c = conns_[data & 0xffffffffu];
    return c.fd >= 0 && c.gen == (data >> 32) ? &c : nullptr;
  }
  void watch(Conn& c, int op, std::uint32_t events) { epoll_set(ep_, op, c.fd, events, tag(c)); }

  void close_conn(Conn& c) {
    if (c.fd >= 0) close(c.fd);  // closing also leaves the epoll set
    c.fd = -1;
    c.out_armed = false;
  }

  // Opens a fresh socket for c. An immediate failure leaves c Down on the retry list.
  void begin_connect(Conn& c, std::uint64_t now) {
    close_conn(c);
    ++c.gen;
    c.sent = c.got = 0;
    c.stream_sent = c.stream_got = 0;
    c.pending_head = c.pending_count = 0;
    c.handshake = false;
    c.paused = false;
    if (!c.resend) c.started = now;
    c.step_at = now;
    c.fd = start_connect(opt_.target, true);
    if (c.fd < 0) {
      // A full Unix backlog (EAGAIN) or no free ephemeral port is load, not failure.
      if (errno != EAGAIN && errno != EADDRNOTAVAIL) {
        ++c.attempts;
        // Setup counts its failures when it gives up; a measured run counts each one
        // (a refused connect during a restart is exactly what must not happen).
        if (running_ && in_window(now)) count_error("connect", errno);
      }
      c.last_op = "connect";
      c.last_err = errno;
      c.state = Conn::State::Down;
      c.retry_at = now + 1'000'000;
      down_.push_back(static_cast<std::size_t>(&c - conns_.data()));
      return;
    }
    c.state = Conn::State::Connecting;
    watch(c, EPOLL_CTL_ADD, EPOLLOUT);
  }

  // --pause: connections waiting for their next request; an entry whose connection was
  // replaced meanwhile (a reconnect resends by itself) no longer looks up and is dropped.
  void resume_due(std::uint64_t now) {
    if (paused_.empty()) return;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> due;
    due.swap(paused_);
    for (const auto& [at, t] : due) {
      if (at > now) {
        paused_.emplace_back(at, t);
        continue;
      }
      Conn* c = lookup(t);
      if (!c || c->state != Conn::State::Running) continue;
      // A close that has already arrived is seen before sending, not after: the client
      // could not know about one still in flight, but this one it can.
      char peek = 0;
      if (recv(c->fd, &peek, 1, MSG_PEEK | MSG_DONTWAIT) == 0) {
        on_reply(*c, now);  // paused: a clean reconnect
        continue;
      }
      send_request(*c, now);
    }
  }

  void retry_due(std::uint64_t now) {
    if (down_.empty()) return;
    std::vector<std::size_t> due;
    due.swap(down_);
    for (const std::size_t i : due) {
      Conn& c = conns_[i];
      if (c.state != Conn::State::Down) continue;
      if (c.retry_at > now) down_.push_back(i);
      else begin_connect(c, now);
    }
  }

  // Counts an error; the first few also go to stderr, to say what kind of errors they were.
  void count_error(const char* op, int err) {
    ++stats_.errors;
    if (logged_errors_++ < 5)
      std::fprintf(stderr, "echorelay-bench: %s %s: %s\n", op, opt_.target.text.c_str(),
                   err ? std::strerror(err) : "connection closed by peer");
  }

  // A connection broke after it had worked: count it and start over.
  void broken(Conn& c, std::uint64_t now, const char* op, int err) {
    if (in_window(now)) count_error(op, err);
    c.resend = false;
    begin_connect(c, now);
  }

  // --reconnect: a request was sent and the answer was a clean EOF. The client cannot
  // tell whether it was processed, so it is resent on a new connection (its latency runs
  // from the first send) and counted as `resent`, which the restart benchmark and the
  // soak count as failures. (A close seen before sending is a clean reconnect: see
  // on_reply.)
  void reconnect(Conn& c, std::uint64_t now) {
    if (in_window(now)) {
      ++stats_.reconnects;
      ++stats_.resent;
    }
    c.resend = true;
    begin_connect(c, now);
  }

  // --request-timeout: a connect or request not done in time is an error; start over.
  void expire_stalled(std::uint64_t now) {
    for (auto& c : conns_) {
      const bool busy = c.state == Conn::State::Connecting || (c.state == Conn::State::Running && !c.handshake);
      if (c.fd >= 0 && busy && now - c.step_at > opt_.request_timeout_ns)
        broken(c, now, c.state == Conn::State::Connecting ? "connect" : "request", ETIMEDOUT);
    }
  }

  // Setup: every connection up and through one echo (or given up after three attempts)
  // before the clock starts. At most kInFlight handshakes at a time keeps accept queues sane.
  void establish_all() {
    constexpr std::size_t kInFlight = 256;
    constexpr int kAttempts = 3;
    const std::uint64_t deadline = now_ns() + opt_.connect_timeout_ns;
    std::size_t next = 0;
    std::size_t active = 0;
    std::size_t settled = 0;
    std::array<epoll_event, 256> events{};
    const auto give_up = [&](Conn& c) {
      close_conn(c);
      c.state = Conn::State::Dead;
      count_error(c.last_op, c.last_err);
      ++settled;
      --active;
    };
    for (std::uint64_t now = now_ns(); settled < conns_.size() && now < deadline; now = now_ns()) {
      if (!down_.empty()) {
        std::vector<std::size_t> due;
        due.swap(down_);
        for (const std::size_t i : due) {
          Conn& c = conns_[i];
          if (c.attempts >= kAttempts) give_up(c);
          else if (c.retry_at > now) down_.push_back(i);
          else begin_connect(c, now);
        }
      }
      while (next < conns_.size() && active < kInFlight) {
        ++active;
        begin_connect(conns_[next++], now);
      }
      const int n = epoll_wait(ep_, events.data(), static_cast<int>(events.size()), down_.empty() ? 10 : 1);
      for (int i = 0; i < n; ++i) {
        Conn* c = lookup(events[i].data.u64);
        if (!c) continue;
        const auto result = setup_step(*c);
        if (result == Setup::Done) {
          ++settled;
          --active;
        } else if (result == Setup::Failed) {
          close_conn(*c);
          if (++c->attempts >= kAttempts) {
            give_up(*c);
          } else {
            c->state = Conn::State::Down;
            c->retry_at = now_ns() + 10'000'000;
            down_.push_back(static_cast<std::size_t>(c - conns_.data()));
          }
        }
      }
    }
    for (auto& c : conns_) {
      if (c.state == Conn::State::Running && !c.handshake) continue;
      if (c.state != Conn::State::Dead) count_error("setup", ETIMEDOUT);
      close_conn(c);
      c.state = Conn::State::Dead;
    }
    down_.clear();
  }

  enum class Setup { Pending, Done, Failed };

  Setup setup_step(Conn& c) {
    if (c.state == Conn::State::Connecting) {
      c.last_op = "connect";
      c.last_err = connect_error(c.fd);
      if (c.last_err != 0) return Setup::Failed;
      // One echo proves the path end to end (a relay has reached its upstream).
      build_frame(c.request, opt_.framing, c.id, c.seq);
      c.got = 0;
      c.last_op = "write";
      if (write(c.fd, c.request.data(), c.request.size()) != static_cast<ssize_t>(c.request.size())) {
        c.last_err = errno;
        return Setup::Failed;
      }
      c.state = Conn::State::Running;
      c.handshake = true;
      watch(c, EPOLL_CTL_MOD, EPOLLIN);
      return Setup::Pending;
    }
    if (!c.handshake) return Setup::Pending;
    const ssize_t n = read(c.fd, c.reply.data() + c.got, c.reply.size() - c.got);
    if (n < 0 && errno == EAGAIN) return Setup::Pending;
    if (n <= 0) {
      c.last_op = "read";
      c.last_err = n < 0 ? errno : 0;
      return Setup::Failed;
    }
    c.got += static_cast<std::size_t>(n);
    if (c.got < c.reply.size()) return Setup::Pending;
    if (std::memcmp(c.reply.data(), c.request.data(), c.reply.size()) != 0) ++stats_.mismatches;
    c.handshake = false;
    c.got = 0;
    ++c.seq;
    return Setup::Done;
  }

  void on_connected(Conn& c, std::uint64_t now) {
    c.state = Conn::State::Running;
    watch(c, EPOLL_CTL_MOD, EPOLLIN);
    if (opt_.mode == Mode::Bulk) return bulk_write(c, now);
    send_request(c, now);
  }

  void on_event(Conn& c, std::uint32_t ev, std::uint64_t now) {
    if (c.state == Conn::State::Connecting) {
      if (const int err = connect_error(c.fd)) return broken(c, now, "connect", err);
      if (in_window(now)) ++stats_.connects;
      return on_connected(c, now);
    }
    if (opt_.mode == Mode::Bulk) return on_bulk(c, ev, now);
    if ((ev & EPOLLOUT) && !write_rest(c)) return broken(c, now, "write", errno);
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_reply(c, now);
  }

  void send_request(Conn& c, std::uint64_t now) {
    build_frame(c.request, opt_.framing, c.id, c.seq);
    c.sent = c.got = 0;
    c.step_at = now;
    // churn times the whole connect-to-close cycle; a resent request its first send
    if (opt_.mode != Mode::Churn && !c.resend) c.started = now;
    c.resend = false;
    c.paused = false;
    if (write_rest(c)) return;
    if (opt_.reconnect && errno == EPIPE && c.sent == 0) {
      // A Unix server closing at a request boundary shuts its read side before its FIN:
      // the request was refused whole at send, so nothing was sent; a clean reconnect.
      if (in_window(now)) ++stats_.reconnects;
      return begin_connect(c, now);
    }
    broken(c, now, "write", errno);
  }

  // Writes what is left of the request; EPOLLOUT is armed only while the socket is full.
  bool write_rest(Conn& c) {
    while (c.sent < c.request.size()) {
      const ssize_t w = write(c.fd, c.request.data() + c.sent, c.request.size() - c.sent);
      if (w < 0) {
        if (errno != EAGAIN) return false;
        if (!c.out_armed) watch(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
        c.out_armed = true;
        return true;
      }
      c.sent += static_cast<std::size_t>(w);
    }
    if (c.out_armed) watch(c, EPOLL_CTL_MOD, EPOLLIN);
    c.out_armed = false;
    return true;
  }

  void on_reply(Conn& c, std::uint64_t now) {
    if (c.paused) {
      // Nothing is outstanding: an EOF is a clean close at a request boundary (a draining
      // server); --reconnect connects again and the next request goes out on the new
      // connection. Any byte here is one the server should not have sent.
      char stray = 0;
      const ssize_t n = read(c.fd, &stray, 1);
      if (n < 0 && errno == EAGAIN) return;
      c.paused = false;
      if (n == 0 && opt_.reconnect) {
        if (in_window(now)) ++stats_.reconnects;
        c.resend = false;
        return begin_connect(c, now);
      }
      if (n > 0 && in_window(now)) ++stats_.mismatches;
      return broken(c, now, "read", n < 0 ? errno : 0);
    }
    // Read only what the outstanding request can produce: anything beyond it would be a
    // server bug, and shows up as a mismatch on the next request.
    const ssize_t n = read(c.fd, c.reply.data() + c.got, c.reply.size() - c.got);
    if (n < 0 && errno == EAGAIN) return;
    if (n == 0 && c.got == 0 && opt_.reconnect) return reconnect(c, now);
    // EOF inside a reply is a partial echo: an error, like a reset.
    if (n <= 0) return broken(c, now, c.got ? "read (partial echo)" : "read", n < 0 ? errno : 0);
    c.got += static_cast<std::size_t>(n);
    if (c.got < c.reply.size()) return;
    const bool same = std::memcmp(c.reply.data(), c.request.data(), c.reply.size()) == 0;
    if (in_window(now)) {
      if (!same) ++stats_.mismatches;
      ++stats_.requests;
      stats_.bytes += c.request.size();
      stats_.latency.record(now - c.started);
      stats_.progress.store(stats_.requests, std::memory_order_relaxed);
    }
    ++c.seq;
    if (opt_.mode == Mode::Churn) return begin_connect(c, now);
    if (opt_.pause_ns) {
      c.step_at = now;  // idle by choice: not a stalled request
      c.paused = true;
      paused_.emplace_back(now + opt_.pause_ns, tag(c));
      return;
    }
    if (opt_.reconnect) {
      // A draining server's FIN leaves with its last answer: already here, it is a
      // clean close at a request boundary, seen before the next request is sent.
      char byte;
      if (recv(c.fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0) {
        if (in_window(now)) ++stats_.reconnects;
        c.resend = false;
        return begin_connect(c, now);
      }
    }
    send_request(c, now);
  }

  // Bulk: keep up to kWindow bytes in flight and verify every echoed byte at its offset.
  // The latency of a write is the time until its last byte has come back.
  static constexpr std::uint64_t kWindow = 2 * 1024 * 1024;

  void bulk_write(Conn& c, std::uint64_t now) {
    while (c.stream_sent - c.stream_got < kWindow) {
      const auto room = kWindow - (c.stream_sent - c.stream_got);
      const auto len = static_cast<std::size_t>(std::min<std::uint64_t>(opt_.size, room));
      const ssize_t w = write(c.fd, stream_->at(c.stream_sent), len);
      if (w < 0) {
        if (errno != EAGAIN) return broken(c, now, "write", errno);
        if (!c.out_armed) watch(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
        c.out_armed = true;
        return;
      }
      c.stream_sent += static_cast<std::uint64_t>(w);
      if (c.pending_count < c.pending.size()) {
        c.pending[(c.pending_head + c.pending_count) % c.pending.size()] = {c.stream_sent, now};
        ++c.pending_count;
      }
    }
    if (c.out_armed) watch(c, EPOLL_CTL_MOD, EPOLLIN);  // window full: wait for echoes
    c.out_armed = false;
  }

  void on_bulk(Conn& c, std::uint32_t ev, std::uint64_t now) {
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
      const ssize_t n = read(c.fd, scratch_.data(), scratch_.size());
      if (n == 0 || (n < 0 && errno != EAGAIN)) return broken(c, now, "read", n < 0 ? errno : 0);
      if (n > 0) {
        const auto len = static_cast<std::size_t>(n);
        const bool same = std::memcmp(scratch_.data(), stream_->at(c.stream_got), len) == 0;
        c.stream_got += len;
        const bool counted = in_window(now);
        if (counted) {
          if (!same) ++stats_.mismatches;
          stats_.bytes += len;
        }
        while (c.pending_count > 0 && c.pending[c.pending_head].end <= c.stream_got) {
          if (counted) {
            ++stats_.requests;
            stats_.latency.record(now - c.pending[c.pending_head].at);
          }
          c.pending_head = (c.pending_head + 1) % c.pending.size();
          --c.pending_count;
        }
        if (counted) stats_.progress.store(stats_.bytes, std::memory_order_relaxed);
      }
    }
    bulk_write(c, now);
  }

  // UDP ping-pong: one datagram in flight per socket; a reply that does not come within
  // the loss timeout counts as lost and the next request goes out. Each datagram starts
  // with its sequence number, so a late echo of an earlier one is recognised and ignored.
  void run_udp() {
    struct Sock {
      int fd = -1;
      std::uint64_t id = 0;
      std::uint64_t seq = 0;
      std::uint64_t sent_at = 0;
      std::uint64_t next_at = 0;  // --pause: when the next request goes; 0 = one is in flight
      std::vector<char> request;
    };
    std::vector<Sock> socks(conns_.size());
    for (std::size_t i = 0; i < socks.size(); ++i) {
      auto& s = socks[i];
      s.id = conns_[i].id;
      s.request.resize(opt_.size);
      s.fd = open_socket(opt_.target, false);
      if (s.fd < 0 || connect(s.fd, reinterpret_cast<const sockaddr*>(&opt_.target.addr), opt_.target.len) < 0)
        fail(std::string("udp socket: ") + std::strerror(errno));
      epoll_set(ep_, EPOLL_CTL_ADD, s.fd, EPOLLIN, i);
    }
    const auto send = [&](Sock& s, std::uint64_t now) {
      ++s.seq;
      build_frame(s.request, Framing::Raw, s.id, s.seq);
      for (int k = 0; k < 16; ++k) s.request[static_cast<std::size_t>(k)] = "0123456789abcdef"[(s.seq >> (60 - 4 * k)) & 15];
      s.sent_at = now;
      s.next_at = 0;
      if (::send(s.fd, s.request.data(), s.request.size(), 0) < 0 && errno != EAGAIN && in_window(now))
        count_error("send", errno);
    };
    ready_->arrive_and_wait();
    for (auto& s : socks) send(s, now_ns());
    std::array<epoll_event, 64> events{};
    for (;;) {
      std::uint64_t now = now_ns();
      if (now >= clock_.measure_end()) break;
      for (auto& s : socks) {
        if (s.next_at) {
          if (now >= s.next_at) send(s, now);
          continue;
        }
        if (now - s.sent_at >= opt_.loss_timeout_ns) {
          if (in_window(now)) ++stats_.lost;
          send(s, now);
        }
      }
      const int n = epoll_wait(ep_, events.data(), static_cast<int>(events.size()), 5);
      now = now_ns();
      for (int i = 0; i < n; ++i) {
        auto& s = socks[events[i].data.u64];
        for (;;) {
          const ssize_t r = recv(s.fd, scratch_.data(), scratch_.size(), MSG_DONTWAIT);
          if (r < 0) {
            if (errno == EAGAIN) break;
            // ECONNREFUSED: an ICMP unreachable came back; the request is gone.
            if (in_window(now)) count_error("recv", errno);
            send(s, now);
            break;
          }
          const auto len = static_cast<std::size_t>(r);
          if (len >= 16 && len == s.request.size() && std::memcmp(scratch_.data(), s.request.data(), 16) != 0)
            continue;  // a late echo of an earlier request
          if (in_window(now)) {
            if (len != s.request.size() || std::memcmp(scratch_.data(), s.request.data(), len) != 0) ++stats_.mismatches;
            ++stats_.requests;
            stats_.bytes += len;
            stats_.latency.record(now - s.sent_at);
            stats_.progress.store(stats_.requests, std::memory_order_relaxed);
          }
          if (opt_.pause_ns) s.next_at = now + opt_.pause_ns;
          else send(s, now);
        }
      }
    }
    for (auto& s : socks) close(s.fd);
  }

  const Options& opt_;
  Clock& clock_;
  Ready* ready_;
  const BulkStream* stream_;
  int ep_ = -1;
  std::vector<Conn> conns_;
  std::vector<std::size_t> down_;  // indices of Down connections waiting for a retry
  bool running_ = false;           // past setup: the measured loop runs
  Stats stats_;
  int logged_errors_ = 0;
  std::array<char, kMaxChunk> scratch_{};
  std::vector<std::pair<std::uint64_t, std::uint64_t>> paused_;  // (resume at, connection tag)
};

// ---------------------------------------------------------------------------------------

void usage() {
  std::fputs(
      "usage: echorelay-bench MODE --target URL [options]\n"
      "  MODE      pingpong | bulk | churn | udp | idle | mirror\n"
      "  --target  tcp://127.0.0.1:PORT | tcp://[::1]:PORT | unix:///path | unix://@name | udp://127.0.0.1:PORT\n"
      "  --connections N   connections (udp: sockets); default 1\n"
      "  --size S          bytes per request on the wire (default 64), bulk: bytes per write (default 64KiB)\n"
      "  --framing F       line (default) | length-prefixed | raw; bulk: line or raw\n"
      "  --line-size L     bulk with line framing: bytes per line including '\\n' (default 1024)\n"
      "  --duration D      measured time (default 5s)   --warmup D   unmeasured time first (default 1s)\n"
      "  --loss-timeout D  udp: a reply later than this is lost (default 200ms)\n"
      "  --threads N       load threads (default 1)     --progress   progress on stderr every second\n"
      "  --reconnect       pingpong: a close seen before the next request is sent reconnects\n"
      "                    (a reconnect, not an error); a clean EOF in place of a reply to a\n"
      "                    sent request reconnects and resends it (counted as resent: a failure)\n"
      "  --request-timeout D  pingpong/churn: a connect or request not done in D is an error (default 0s = off)\n"
      "  --server-pid P    also report the CPU time (utime + stime) that process and its children spent\n"
      "                    in the measured window: server_cpu_s, server_cpu_us_per_req (or per MB for bulk)\n"
      "  --pause D         pingpong/udp: wait D after each reply before the next request (default 0s:\n"
      "                    closed loop at full speed); paces a moderate load, e.g. for tests/soak/run\n"
      "  --collect A,B,...  mirror: collector addresses (127.0.0.1:PORT) to bind and count copies at\n"
      "  --window W        mirror: at most W datagrams ahead of the first collector (default 0: open loop)\n"
      "  --read-all        mirror: read and check every collector (default: the first; the others are\n"
      "                    counted by the kernel's drops at a minimal receive buffer, costing this CPU nothing)\n"
      "  SIGINT/SIGTERM end the measured window early; the report covers what was measured.\n"
      "  echorelay-bench freeport [N]   print N loopback ports free for both TCP and UDP\n"
      "  echorelay-bench notify PATH    bind an AF_UNIX datagram socket (sd_notify receiver) and print\n"
      "                                 'MONOTONIC_NS SENDER_PID MESSAGE' per datagram until SIGTERM/SIGINT\n"
      "  echorelay-bench signal PID SIG print CLOCK_MONOTONIC ns, then kill(PID, SIG) (SIG: HUP, TERM, ...)\n",
      stderr);
  std::exit(2);
}

Options parse_options(int argc, char** argv) {
  if (argc < 2) usage();
  Options opt;
  opt.mode_name = argv[1];
  if (opt.mode_name == "pingpong") opt.mode = Mode::PingPong;
  else if (opt.mode_name == "bulk") opt.mode = Mode::Bulk;
  else if (opt.mode_name == "churn") opt.mode = Mode::Churn;
  else if (opt.mode_name == "udp") opt.mode = Mode::Udp;
  else if (opt.mode_name == "idle") opt.mode = Mode::Idle;
  else if (opt.mode_name == "mirror") opt.mode = Mode::Mirror;
  else usage();
  std::string target;
  std::string framing = "line";
  opt.progress = isatty(2) == 1;
  for (int i = 2; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--progress") {
      opt.progress = true;
      continue;
    }
    if (arg == "--reconnect") {
      opt.reconnect = true;
      continue;
    }
    if (arg == "--read-all") {
      opt.read_all = true;
      continue;
    }
    if (i + 1 >= argc) usage();
    const std::string_view value = argv[++i];
    const auto duration = [&] {
      auto d = parse_duration_ns(value);
      if (!d) fail("bad duration: " + std::string(value));
      return *d;
    };
    if (arg == "--target") target = value;
    else if (arg == "--connections") opt.connections = parse_count(value, "connections");
    else if (arg == "--size") opt.size = parse_count(value, "size");
    else if (arg == "--line-size") opt.line_size = parse_count(value, "line size");
    else if (arg == "--framing") framing = value;
    else if (arg == "--duration") opt.duration_ns = duration();
    else if (arg == "--warmup") opt.warmup_ns = duration();
    else if (arg == "--loss-timeout") opt.loss_timeout_ns = duration();
    else if (arg == "--connect-timeout") opt.connect_timeout_ns = duration();
    else if (arg == "--request-timeout") opt.request_timeout_ns = duration();
    else if (arg == "--pause") opt.pause_ns = duration();
    else if (arg == "--threads") opt.threads = parse_count(value, "threads");
    else if (arg == "--server-pid") opt.server_pid = static_cast<pid_t>(parse_count(value, "server pid"));
    else if (arg == "--window") opt.window = parse_count(value, "window");
    else if (arg == "--collect") {
      std::string_view rest = value;
      while (!rest.empty()) {
        const auto comma = rest.find(',');
        opt.collect.emplace_back(rest.substr(0, comma));
        rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
      }
    } else usage();
  }
  if (target.empty()) usage();
  opt.target = parse_target(target);
  if (framing == "line") opt.framing = Framing::Line;
  else if (framing == "length-prefixed") opt.framing = Framing::LengthPrefixed;
  else if (framing == "raw") opt.framing = Framing::Raw;
  else fail("framing must be line, length-prefixed or raw");
  const bool datagrams = opt.mode == Mode::Udp || opt.mode == Mode::Mirror;
  if ((opt.target.kind == Kind::Udp) != datagrams) fail("udp and mirror modes need a udp:// target and the others a stream target");
  if (datagrams) opt.framing = Framing::Raw;  // a datagram is its own frame
  if ((opt.mode == Mode::Mirror) != !opt.collect.empty()) fail("--collect goes with mirror mode, which needs it");
  if (opt.size == 0) opt.size = opt.mode == Mode::Bulk ? 65536 : 64;
  if (opt.mode == Mode::Bulk) {
    if (opt.size > kMaxChunk) fail("bulk --size is at most 256KiB");
    if (opt.framing == Framing::LengthPrefixed) fail("bulk takes line or raw framing");
    if (opt.framing == Framing::Line && (opt.line_size < 1 || opt.line_size > kMaxChunk)) fail("bad --line-size");
  }
  const std::size_t min_size =
      opt.framing == Framing::LengthPrefixed ? 5 : (opt.mode == Mode::Udp ? 16 : opt.mode == Mode::Mirror ? 24 : 1);
  if (opt.mode != Mode::Bulk && (opt.size < min_size || opt.size > kMaxChunk)) fail("--size out of range");
  if (opt.connections == 0 || opt.threads == 0) fail("--connections and --threads must be at least 1");
  opt.threads = std::min(opt.threads, opt.connections);
  if (opt.mode == Mode::Idle) opt.threads = 1;
  return opt;
}

// Ports free for TCP and UDP at once on 127.0.0.1, for peers that cannot bind port 0
// and report it (HAProxy, nginx, socat). All are held until all are found, so they differ.
int freeport(int argc, char** argv) {
  const std::size_t want = argc > 2 ? parse_count(argv[2], "count") : 1;
  std::vector<int> held;
  std::vector<int> ports;
  while (ports.size() < want) {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const int t = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    socklen_t len = sizeof sin;
    if (t < 0 || bind(t, reinterpret_cast<sockaddr*>(&sin), sizeof sin) < 0 ||
        getsockname(t, reinterpret_cast<sockaddr*>(&sin), &len) < 0)
      fail("freeport: bind tcp 127.0.0.1:0");
    held.push_back(t);
    const int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (u >= 0 && bind(u, reinterpret_cast<sockaddr*>(&sin), sizeof sin) == 0) {
      held.push_back(u);
      ports.push_back(ntohs(sin.sin_port));
    } else if (u >= 0) {
      close(u);
    }
  }
  for (const int fd : held) close(fd);
  for (const int p : ports) std::printf("%d\n", p);
  return 0;
}

void raise_fd_limit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

// CPU ticks (utime + stime, in clock ticks) of `pid` and every process below it: nginx
// and HAProxy serve from child processes, echorelayd's supervisor from its worker. A
// process that ends inside the window takes its ticks with it (none does in a run).
std::uint64_t process_tree_ticks(pid_t pid) {
  std::uint64_t ticks = 0;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  if (FILE* f = std::fopen(path, "r")) {
    char buf[1024];
    const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = '\0';
    // Fields after the command name, which may hold spaces and ')': state is field 3,
    // utime and stime are fields 14 and 15.
    if (const char* p = std::strrchr(buf, ')')) {
      unsigned long long utime = 0, stime = 0;
      if (std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) == 2) {
        ticks += utime + stime;
      }
    }
  }
  std::snprintf(path, sizeof path, "/proc/%d/task", static_cast<int>(pid));
  std::vector<pid_t> children;
  if (DIR* tasks = opendir(path)) {
    while (const dirent* t = readdir(tasks)) {
      if (t->d_name[0] == '.') continue;
      char cpath[320];
      std::snprintf(cpath, sizeof cpath, "/proc/%d/task/%s/children", static_cast<int>(pid), t->d_name);
      if (FILE* f = std::fopen(cpath, "r")) {
        int child = 0;
        while (std::fscanf(f, "%d", &child) == 1) children.push_back(child);
        std::fclose(f);
      }
    }
    closedir(tasks);
  }
  for (pid_t c : children) ticks += process_tree_ticks(c);
  return ticks;
}

// Samples the server's CPU at the start and at the end of the measured window.
class CpuSampler {
 public:
  CpuSampler(pid_t pid, const Clock& clock) : pid_(pid) {
    if (pid_ == 0) return;
    thread_ = std::thread([this, &clock] {
      while (clock.start.load(std::memory_order_acquire) == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      sleep_until_ns(clock.measure_start());
      const std::uint64_t first = process_tree_ticks(pid_);
      sleep_until_ns(clock.measure_end());
      ticks_ = process_tree_ticks(pid_) - first;
    });
  }
  ~CpuSampler() { join(); }
  CpuSampler(const CpuSampler&) = delete;
  CpuSampler& operator=(const CpuSampler&) = delete;
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  bool active() const { return pid_ != 0; }
  double seconds() const { return static_cast<double>(ticks_) / static_cast<double>(sysconf(_SC_CLK_TCK)); }

 private:
  static void sleep_until_ns(std::uint64_t t) {
    // The window ends early on SIGINT/SIGTERM: g_stop_ns moves measure_end().
    for (std::uint64_t now = now_ns(); now < t; now = now_ns()) {
      std::this_thread::sleep_for(std::chrono::nanoseconds(std::min<std::uint64_t>(t - now, 10'000'000)));
    }
  }
  pid_t pid_;
  std::uint64_t ticks_ = 0;
  std::thread thread_;
};


// ",server_cpu_s":X,"server_cpu_us_per_req":Y (per MB for bulk), or nothing without a sampler.
std::string cpu_fields(const Options& opt, const Stats& s, const CpuSampler* cpu) {
  if (cpu == nullptr || !cpu->active()) return {};
  const double secs = cpu->seconds();
  char buf[160];
  if (opt.mode == Mode::Bulk) {
    const double mb = static_cast<double>(s.bytes) / 1e6;
    std::snprintf(buf, sizeof buf, ",\"server_cpu_s\":%.2f,\"server_cpu_us_per_mb\":%.1f", secs, mb > 0 ? secs * 1e6 / mb : 0.0);
  } else {
    const double reqs = static_cast<double>(s.requests);
    std::snprintf(buf, sizeof buf, ",\"server_cpu_s\":%.2f,\"server_cpu_us_per_req\":%.2f", secs, reqs > 0 ? secs * 1e6 / reqs : 0.0);
  }
  return buf;
}
void print_json(const Options& opt, const Stats& s, std::size_t connections, const CpuSampler* cpu = nullptr) {
  const double secs = static_cast<double>(opt.duration_ns) / 1e9;
  const double rate = secs > 0 ? static_cast<double>(s.requests) / secs : 0;
  const double mbps = secs > 0 ? static_cast<double>(s.bytes) / secs / 1e6 : 0;
  const char* framing = opt.framing == Framing::Line ? "line" : opt.framing == Framing::Raw ? "raw" : "length-prefixed";
  std::printf(
      "{\"mode\":\"%s\",\"target\":\"%s\",\"framing\":\"%s\",\"connections\":%zu,\"size\":%zu,\"duration_s\":%.3f,"
      "\"requests\":%" PRIu64 ",\"req_per_s\":%.1f,\"mb_per_s\":%.2f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
      "\"errors\":%" PRIu64 ",\"mismatches\":%" PRIu64 ",\"lost\":%" PRIu64 ",\"connects\":%" PRIu64
      ",\"reconnects\":%" PRIu64 ",\"resent\":%" PRIu64 "%s}\n",
      opt.mode_name.c_str(), opt.target.text.c_str(), framing, connections, opt.size, secs, s.requests, rate, mbps,
      static_cast<double>(s.latency.quantile(0.50)) / 1e3, static_cast<double>(s.latency.quantile(0.99)) / 1e3,
      static_cast<double>(s.latency.quantile(0.999)) / 1e3, s.errors, s.mismatches, s.lost, s.connects, s.reconnects, s.resent,
      cpu_fields(opt, s, cpu).c_str());
  std::fflush(stdout);
}

// notify PATH: an sd_notify(3) receiver, like systemd's end of NOTIFY_SOCKET. Each datagram
// becomes one line "MONOTONIC_NS SENDER_PID MESSAGE" (newlines in the message turned into
// spaces), flushed at once, so a script can time READY=1 against a signal it sent. File
// descriptors passed along (FDSTORE=1) are closed at once, so no listening socket stays
// open here. Runs until SIGTERM/SIGINT; removes its path on exit.
int notify_receiver(int argc, char** argv) {
  if (argc != 3) usage();
  const std::string path = argv[2];
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof sun.sun_path) fail("bad notify socket path: " + path);
  std::memcpy(sun.sun_path, path.data(), path.size());
  const bool abstract = path[0] == '@';
  if (abstract) sun.sun_path[0] = '\0';
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (abstract ? 0 : 1));
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  const int sfd = signalfd(-1, &set, SFD_CLOEXEC);
  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) fail(std::string("notify: socket: ") + std::strerror(errno));
  if (!abstract) unlink(path.c_str());
  if (bind(fd, reinterpret_cast<const sockaddr*>(&sun), len) < 0) fail("notify: bind " + path + ": " + std::strerror(errno));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
  int rcvbuf = 1 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  std::vector<char> buf(64 * 1024);
  alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int) * 256)> control{};
  pollfd fds[2] = {{sfd, POLLIN, 0}, {fd, POLLIN, 0}};
  for (;;) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[0].revents) break;
    if (!fds[1].revents) continue;
    iovec iov{buf.data(), buf.size() - 1};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    const ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    const std::uint64_t at = now_ns();
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      fail(std::string("notify: recvmsg: ") + std::strerror(errno));
    }
    long pid = 0;
    int passed = 0;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET) continue;
      if (c->cmsg_type == SCM_CREDENTIALS) {
        ucred cred{};
        std::memcpy(&cred, CMSG_DATA(c), sizeof cred);
        pid = cred.pid;
      } else if (c->cmsg_type == SCM_RIGHTS) {
        const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < count; ++i) {
          int passed_fd = -1;
          std::memcpy(&passed_fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
          close(passed_fd);
          ++passed;
        }
      }
    }
    std::string text(buf.data(), static_cast<std::size_t>(n));
    while (!text.empty() && text.back() == '\n') text.pop_back();
    std::replace(text.begin(), text.end(), '\n', ' ');
    if (passed) text += " (" + std::to_string(passed) + " fds)";
    std::printf("%" PRIu64 " %ld %s\n", at, pid, text.c_str());
    std::fflush(stdout);
  }
  close(fd);
  if (!abstract) unlink(path.c_str());
  return 0;
}

// signal PID SIG: the time, then the signal, so a script can time what the signal starts
// (SIGHUP to READY=1) with the receiver above on the same clock.
int send_signal(int argc, char** argv) {
  if (argc != 4) usage();
  std::string_view name = argv[3];
  if (name.starts_with("SIG")) name.remove_prefix(3);
  int sig = 0;
  if (name == "HUP") sig = SIGHUP;
  else if (name == "TERM") sig = SIGTERM;
  else if (name == "INT") sig = SIGINT;
  else if (name == "USR1") sig = SIGUSR1;
  else if (name == "USR2") sig = SIGUSR2;
  else if (name == "KILL") sig = SIGKILL;
  else sig = static_cast<int>(parse_count(name, "signal"));
  const auto pid = static_cast<pid_t>(parse_count(argv[2], "pid"));
  if (pid <= 0) fail("bad pid");
  const std::uint64_t at = now_ns();
  if (kill(pid, sig) < 0) {
    std::fprintf(stderr, "echorelay-bench: kill %d: %s\n", static_cast<int>(pid), std::strerror(errno));
    return 1;
  }
  std::printf("%" PRIu64 "\n", at);
  return 0;
}

// Idle mode: hold the connections until SIGTERM/SIGINT or EOF on stdin, so the caller can
// read the server's memory in between. "ready N" on stdout says all are connected.
int run_idle(Options& opt) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigprocmask(SIG_BLOCK, &set, nullptr);  // before any thread exists, so all inherit it
  const int sfd = signalfd(-1, &set, SFD_CLOEXEC);
  Clock clock;
  Ready ready(1, StartClock{&clock});
  std::vector<std::uint64_t> ids(opt.connections);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = i;
  Worker worker(opt, clock, &ready, ids, nullptr);
  const std::uint64_t t0 = now_ns();
  worker.run_idle();
  const std::size_t up = worker.established();
  std::fprintf(stderr, "idle: %zu of %zu connections up in %.1f s\n", up, opt.connections,
               static_cast<double>(now_ns() - t0) / 1e9);
  std::printf("ready %zu\n", up);
  std::fflush(stdout);
  pollfd fds[2] = {{sfd, POLLIN, 0}, {0, POLLIN, 0}};
  for (;;) {
    if (poll(fds, 2, -1) < 0 && errno != EINTR) break;
    if (fds[0].revents) break;
    if (fds[1].revents) {
      char buf[256];
      const ssize_t n = read(0, buf, sizeof buf);
      if (n <= 0) break;
    }
  }
  opt.duration_ns = 0;
  worker.stats().requests = up;
  print_json(opt, worker.stats(), opt.connections);
  return 0;
}

// mirror: a stream of --size datagrams to the target from --connections sockets, at full
// speed (or at most --window ahead of the first collector), while the K collector sockets
// bound here (--collect) count the copies the server under test sends them. One thread
// does both in turns (a sendmmsg batch per sending socket, then the first collector drained
// with recvmmsg), so generator and collectors share one pinned CPU. Each datagram carries
// a magic, its sequence number and its send time: the first collector checks the bytes and
// records the one-way latency. The other collectors are not read (unless --read-all): their
// receive buffer is the kernel's minimum, so every copy that reaches them overflows it and
// is counted in SK_MEMINFO_DROPS, which is their count (within the few datagrams queued at
// the window's edges); reading K copies of every datagram on this one CPU would make the
// generator, not the server, the limit at K = 4. The report's `requests`/`req_per_s` are the copies the FIRST
// collector received in the window (datagrams/s through the mirror, comparable across K);
// `delivered_per_s_total` sums all collectors, `per_collector_per_s` lists them, `sent`/
// `sent_per_s` is what went in, `lost` sums, over the collectors, what was sent in the
// window but not received by it (in open loop the server's receive buffer overflows: loss
// is expected there), and `collector_drops` what the collectors' own buffers dropped (non-
// zero means this generator, not the server, was the bottleneck).
int run_mirror(Options& opt) {
  constexpr std::size_t kBatch = 32;
  constexpr std::size_t kRecvBatch = 256;
  constexpr char kMagic[8] = {'E', 'R', 'M', 'I', 'R', 'R', 'O', 'R'};
  struct Collector {
    int fd = -1;
    std::uint64_t got = 0;         // all copies, for the window
    std::uint64_t got_window = 0;  // copies received in the measured window
    std::uint64_t bytes_window = 0;
    std::uint32_t drops_at_start = 0;
    bool counted_only = false;  // never read: arrivals = the kernel's drops at a full, tiny buffer
  };
  const auto drops = [](int fd) -> std::uint32_t {
    std::uint32_t mem[SK_MEMINFO_VARS] = {};
    socklen_t len = sizeof mem;
    return getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &len) == 0 ? mem[SK_MEMINFO_DROPS] : 0;
  };
  std::vector<Collector> cols(opt.collect.size());
  for (std::size_t c = 0; c < cols.size(); ++c) {
    const Target t = parse_target("udp://" + opt.collect[c]);
    cols[c].fd = socket(t.addr.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    cols[c].counted_only = c > 0 && !opt.read_all;
    int big = cols[c].counted_only ? 0 : 32 << 20;  // 0: the kernel's minimum, a few datagrams
    if (cols[c].fd < 0) fail(std::string("collector socket: ") + std::strerror(errno));
    if (setsockopt(cols[c].fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big) < 0)
      setsockopt(cols[c].fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);  // not root: what rmem_max allows
    if (bind(cols[c].fd, reinterpret_cast<const sockaddr*>(&t.addr), t.len) < 0)
      fail("collector bind " + opt.collect[c] + ": " + std::strerror(errno));
  }
  std::vector<int> senders(opt.connections);
  for (auto& fd : senders) {
    fd = open_socket(opt.target, false);
    if (fd < 0 || connect(fd, reinterpret_cast<const sockaddr*>(&opt.target.addr), opt.target.len) < 0)
      fail(std::string("udp socket: ") + std::strerror(errno));
  }

  const std::size_t size = opt.size;
  const char* tail = pattern().data();
  std::vector<char> out(kBatch * size);
  std::array<iovec, kBatch> out_iov{};
  std::array<mmsghdr, kBatch> out_msgs{};
  for (std::size_t i = 0; i < kBatch; ++i) {
    char* d = out.data() + i * size;
    std::memcpy(d, kMagic, 8);
    std::memcpy(d + 24, tail, size - 24);
    out_iov[i] = {d, size};
    out_msgs[i].msg_hdr.msg_iov = &out_iov[i];
    out_msgs[i].msg_hdr.msg_iovlen = 1;
  }
  std::uint64_t seq = 0;
  const auto fill = [&](std::size_t n, std::uint64_t now) {
    for (std::size_t i = 0; i < n; ++i) {
      char* d = out.data() + i * size;
      const std::uint64_t q = seq + i;
      std::memcpy(d + 8, &q, 8);
      std::memcpy(d + 16, &now, 8);
    }
  };
  std::vector<char> in(kRecvBatch * (size + 1));
  std::array<iovec, kRecvBatch> in_iov{};
  std::array<mmsghdr, kRecvBatch> in_msgs{};

  Clock clock;
  clock.warmup = opt.warmup_ns;
  clock.duration = opt.duration_ns;
  Stats stats;
  const auto in_window = [&](std::uint64_t t) {
    const std::uint64_t s0 = clock.start.load(std::memory_order_relaxed);
    return s0 != 0 && t >= clock.measure_start() && t < clock.measure_end();
  };
  // Drains collector c; returns how many copies it read.
  const auto drain = [&](Collector& col) {
    std::size_t total = 0;
    for (int round = 0; round < 8; ++round) {
      for (std::size_t i = 0; i < kRecvBatch; ++i) {
        in_iov[i] = {in.data() + i * (size + 1), size + 1};
        in_msgs[i].msg_hdr = {};
        in_msgs[i].msg_hdr.msg_iov = &in_iov[i];
        in_msgs[i].msg_hdr.msg_iovlen = 1;
      }
      const int n = recvmmsg(col.fd, in_msgs.data(), kRecvBatch, MSG_DONTWAIT, nullptr);
      if (n <= 0) break;
      const std::uint64_t now = now_ns();
      const bool counted = in_window(now);
      for (int i = 0; i < n; ++i) {
        const char* d = static_cast<const char*>(in_iov[static_cast<std::size_t>(i)].iov_base);
        const std::size_t len = in_msgs[static_cast<std::size_t>(i)].msg_len;
        ++col.got;
        if (!counted) continue;
        ++col.got_window;
        col.bytes_window += len;
        std::uint64_t sent_at = 0;
        if (len != size || std::memcmp(d, kMagic, 8) != 0 || std::memcmp(d + 24, tail, size - 24) != 0) {
          ++stats.mismatches;
          continue;
        }
        std::memcpy(&sent_at, d + 16, 8);
        if (&col == &cols[0] && sent_at <= now) stats.latency.record(now - sent_at);
      }
      total += static_cast<std::size_t>(n);
      if (static_cast<std::size_t>(n) < kRecvBatch) break;
    }
    return total;
  };

  // Setup: one datagram every 10 ms until each collector has a copy (the server is up and
  // sends to all of them), then a quiet moment so the probes do not count.
  const std::uint64_t deadline = now_ns() + opt.connect_timeout_ns;
  for (bool all = false; !all;) {
    if (now_ns() > deadline) fail("the collectors got no copies: is the server mirroring to --collect?");
    fill(1, now_ns());
    if (send(senders[0], out.data(), size, 0) < 0 && errno != EAGAIN && errno != ECONNREFUSED)
      fail(std::string("send: ") + std::strerror(errno));
    ++seq;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    all = true;
    for (auto& c : cols) {
      drain(c);
      all = all && c.got > 0;
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  for (auto& c : cols) drain(c);
  // --window: datagrams the first collector never got (dropped by the server) would close
  // the window for good; after --loss-timeout without progress they are written off.
  std::uint64_t written_off = seq - std::min(seq, cols[0].got);
  std::uint64_t progress_at = now_ns();
  std::uint64_t last_got = cols[0].got;
  CpuSampler cpu(opt.server_pid, clock);
  clock.start.store(now_ns(), std::memory_order_release);
  bool window_started = false;
  std::uint64_t sent_window = 0;
  std::vector<pollfd> wait_fds;
  for (auto& c : cols) wait_fds.push_back({c.fd, POLLIN, 0});
  for (;;) {
    std::uint64_t now = now_ns();
    if (now >= clock.measure_end()) break;
    if (!window_started && now >= clock.measure_start()) {
      window_started = true;
      for (auto& c : cols) c.drops_at_start = drops(c.fd);
    }
    bool sent_any = false;
    if (cols[0].got != last_got) last_got = cols[0].got, progress_at = now;
    if (opt.window && now - progress_at > opt.loss_timeout_ns) {
      written_off = seq - std::min(seq, cols[0].got);
      progress_at = now;
    }
    for (int fd : senders) {
      const std::uint64_t ahead = seq - std::min(seq, cols[0].got + written_off);
      if (opt.window && ahead >= opt.window) break;
      const std::size_t n = opt.window ? std::min<std::uint64_t>(kBatch, opt.window - ahead) : kBatch;
      fill(n, now);
      const int r = sendmmsg(fd, out_msgs.data(), static_cast<unsigned>(n), MSG_DONTWAIT);
      if (r > 0) {
        seq += static_cast<std::uint64_t>(r);
        if (in_window(now)) sent_window += static_cast<std::uint64_t>(r);
        sent_any = true;
      } else if (r < 0 && errno != EAGAIN && errno != ENOBUFS && in_window(now)) {
        ++stats.errors;  // ECONNREFUSED: nothing listens at the target
      }
    }
    std::size_t got = 0;
    for (auto& c : cols)
      if (!c.counted_only) got += drain(c);
    if (!sent_any && got == 0) poll(wait_fds.data(), 1, 1);
    stats.progress.store(cols[0].got_window, std::memory_order_relaxed);
  }
  const std::uint64_t from = clock.measure_start();
  const std::uint64_t to = clock.measure_end();
  opt.duration_ns = to > from ? to - from : 0;
  cpu.join();
  std::uint64_t collector_drops = 0;
  std::uint64_t delivered = 0;
  std::string per;
  const double secs = static_cast<double>(opt.duration_ns) / 1e9;
  for (auto& c : cols) {
    const std::uint32_t dropped = drops(c.fd) - c.drops_at_start;
    if (c.counted_only) {
      // Every copy that arrived in the window overflowed the tiny buffer, but for the few
      // queued in it when the window opened or closed (within a handful either way).
      c.got_window = dropped;
      c.bytes_window = static_cast<std::uint64_t>(dropped) * size;
    } else {
      collector_drops += dropped;
    }
    delivered += c.got_window;
    if (c.got_window < sent_window) stats.lost += sent_window - c.got_window;
    char buf[32];
    std::snprintf(buf, sizeof buf, "%s%.1f", per.empty() ? "" : ",", secs > 0 ? static_cast<double>(c.got_window) / secs : 0);
    per += buf;
    close(c.fd);
  }
  for (int fd : senders) close(fd);
  stats.requests = cols[0].got_window;
  stats.bytes = cols[0].bytes_window;
  const double rate = secs > 0 ? static_cast<double>(stats.requests) / secs : 0;
  std::printf(
      "{\"mode\":\"mirror\",\"target\":\"%s\",\"framing\":\"raw\",\"connections\":%zu,\"size\":%zu,\"duration_s\":%.3f,"
      "\"requests\":%" PRIu64 ",\"req_per_s\":%.1f,\"mb_per_s\":%.2f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
      "\"errors\":%" PRIu64 ",\"mismatches\":%" PRIu64 ",\"lost\":%" PRIu64
      ",\"connects\":0,\"reconnects\":0,\"resent\":0,\"collectors\":%zu,\"window\":%zu,\"sent\":%" PRIu64
      ",\"sent_per_s\":%.1f,\"delivered_total\":%" PRIu64 ",\"delivered_per_s_total\":%.1f,\"per_collector_per_s\":[%s],"
      "\"collector_drops\":%" PRIu64 "%s}\n",
      opt.target.text.c_str(), opt.connections, size, secs, stats.requests, rate,
      secs > 0 ? static_cast<double>(stats.bytes) / secs / 1e6 : 0, static_cast<double>(stats.latency.quantile(0.50)) / 1e3,
      static_cast<double>(stats.latency.quantile(0.99)) / 1e3, static_cast<double>(stats.latency.quantile(0.999)) / 1e3,
      stats.errors, stats.mismatches, stats.lost, cols.size(), opt.window, sent_window,
      secs > 0 ? static_cast<double>(sent_window) / secs : 0, delivered, secs > 0 ? static_cast<double>(delivered) / secs : 0,
      per.c_str(), collector_drops, cpu_fields(opt, stats, &cpu).c_str());
  std::fflush(stdout);
  return stats.errors + stats.mismatches > 0 ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::string_view(argv[1]) == "freeport") return freeport(argc, argv);
  if (argc >= 2 && std::string_view(argv[1]) == "notify") return notify_receiver(argc, argv);
  if (argc >= 2 && std::string_view(argv[1]) == "signal") return send_signal(argc, argv);
  Options opt = parse_options(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  raise_fd_limit();
  (void)pattern();
  if (opt.mode == Mode::Idle) return run_idle(opt);
  struct sigaction stop {};
  stop.sa_handler = on_stop_signal;
  sigemptyset(&stop.sa_mask);
  sigaction(SIGINT, &stop, nullptr);
  sigaction(SIGTERM, &stop, nullptr);
  if (opt.mode == Mode::Mirror) return run_mirror(opt);

  const BulkStream stream = opt.mode == Mode::Bulk ? make_bulk_stream(opt.framing, opt.line_size) : BulkStream{};
  Clock clock;
  clock.warmup = opt.warmup_ns;
  clock.duration = opt.duration_ns;
  // The last thread to finish setup starts the clock; setup time is never measured.
  Ready ready(static_cast<std::ptrdiff_t>(opt.threads), StartClock{&clock});
  std::vector<std::unique_ptr<Worker>> workers;
  for (std::size_t t = 0; t < opt.threads; ++t) {
    std::vector<std::uint64_t> ids;
    for (std::size_t i = t; i < opt.connections; i += opt.threads) ids.push_back(i);
    workers.push_back(std::make_unique<Worker>(opt, clock, &ready, ids, &stream));
  }
  CpuSampler cpu(opt.server_pid, clock);
  std::vector<std::thread> threads;
  for (auto& w : workers) threads.emplace_back([&w] { w->run(); });

  if (opt.progress) {
    while (clock.start.load(std::memory_order_acquire) == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    while (now_ns() + 1'000'000'000 < clock.measure_end()) {
      const std::uint64_t end = clock.measure_end();
      std::this_thread::sleep_for(std::chrono::seconds(1));
      std::uint64_t done = 0;
      for (auto& w : workers) done += w->stats().progress.load(std::memory_order_relaxed);
      std::fprintf(stderr, "%s: %.0f s left, %" PRIu64 " %s so far\n", opt.mode_name.c_str(),
                   static_cast<double>(end - std::min(end, now_ns())) / 1e9, done,
                   opt.mode == Mode::Bulk ? "bytes" : "requests");
    }
  }
  for (auto& t : threads) t.join();
  // Stopped early by a signal: the window measured is what the rates are over.
  const std::uint64_t from = clock.measure_start();
  const std::uint64_t to = clock.measure_end();
  opt.duration_ns = to > from ? to - from : 0;
  Stats total;
  for (auto& w : workers) total.merge(w->stats());
  workers.clear();
  cpu.join();
  print_json(opt, total, opt.connections, &cpu);
  return total.errors + total.mismatches > 0 ? 1 : 0;
}
