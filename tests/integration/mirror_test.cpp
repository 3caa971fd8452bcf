// The UDP mirror handler through the real daemon: every datagram a listener receives goes,
// byte for byte, to every upstream ("collector"), one-way; `sample = N` sends exactly one
// datagram in N to that upstream (across workers and sockets too, and on a multicast
// listener); allow_sources drops (and counts) other senders on any UDP listener; a
// collector that cannot keep up or is down costs the others nothing and its losses are
// counted; a hot restart storm loses no datagram; preserve_source makes the copies leave
// with the exporter's own address and port (raw socket, in network namespaces of the
// test's own).
//
// Suites: Mirror (label integration), MirrorStorm (the SIGHUP storm, run alone like the
// other storms) and FaultMirror (collector faults, label fault, run alone).
//
// Collectors are test threads reading with recvmmsg from sockets whose receive buffers
// are forced large (SO_RCVBUFFORCE, the tests run as root), and senders keep a window of
// datagrams in flight against what the collectors have read, so nothing is lost to a
// kernel buffer on loopback unless a test means it to be.
#include <arpa/inet.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"
#include "lifecycle_support.hpp"
#include "relay_support.hpp"

namespace echorelay::test {
namespace {

constexpr int kBigBuffer = 16 << 20;  // SO_RCVBUFFORCE for collectors that must lose nothing

// ---- payloads ----

// Datagram `seq` of stream `tag`: a header naming both, then bytes that depend on the
// sequence number, of a length that varies with it (44..299 bytes), so a copy from the
// wrong datagram, a cut or a merge cannot pass for the original.
std::string mirror_payload(std::uint32_t seq, const std::string& tag = "m") {
  char head[40];
  std::snprintf(head, sizeof head, "%s:%08u|", tag.c_str(), seq);
  std::string p(head);
  const std::size_t extra = 32 + (seq * 7919u) % 256u;
  std::uint32_t x = seq * 2654435761u + 12345u;
  for (std::size_t i = 0; i < extra; ++i) {
    x = x * 1103515245u + 12345u;
    p.push_back(static_cast<char>(x >> 24));
  }
  return p;
}

// The sequence number of a payload of stream `tag`, or -1.
long seq_of(const std::string& data, const std::string& tag = "m") {
  if (data.size() < tag.size() + 10 || data.compare(0, tag.size(), tag) != 0 || data[tag.size()] != ':') return -1;
  long seq = 0;
  for (std::size_t i = tag.size() + 1; i < tag.size() + 9; ++i) {
    if (data[i] < '0' || data[i] > '9') return -1;
    seq = seq * 10 + (data[i] - '0');
  }
  return seq;
}

// ---- collectors ----

struct Copy {
  std::string from;  // "198.18.0.2:40000"
  std::string data;
};

// A UDP socket on `address` in `netns` standing for a flow collector. When `read` it is
// read all the time by a thread (recvmmsg batches) that records every datagram; when not
// it never reads (a blackholed collector) and `rcvbuf` is what the kernel may queue.
class Collector {
 public:
  explicit Collector(const std::string& address, int rcvbuf = kBigBuffer, bool read = true,
                     const std::string& netns = "") {
    fd_ = run_in_netns(netns, [&] { return udp_bind(address); });
    if (!fd_) return;
    if (::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) != 0)
      ADD_FAILURE() << "SO_RCVBUFFORCE: " << std::strerror(errno);
    address_ = socket_address(fd_.get());
    if (read) thread_ = std::thread([this] { loop(); });
  }
  ~Collector() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  Collector(const Collector&) = delete;
  Collector& operator=(const Collector&) = delete;

  bool ok() const { return fd_.valid(); }
  // As the bound-addresses file and the daemon's upstream label write it.
  const std::string& address() const { return address_; }
  int fd() const { return fd_.get(); }
  std::size_t count() const { return count_.load(); }
  std::vector<Copy> copies() const {
    std::lock_guard lock(mu_);
    return got_;
  }
  bool wait_for(std::size_t n, Millis timeout = kIoTimeout) const {
    return wait_until([&] { return count() >= n; }, timeout, Millis(2));
  }
  // Datagrams the kernel dropped because this socket's buffer was full (SO_MEMINFO).
  std::uint32_t kernel_drops() const {
    std::uint32_t mem[SK_MEMINFO_VARS] = {};
    socklen_t len = sizeof mem;
    if (::getsockopt(fd_.get(), SOL_SOCKET, SO_MEMINFO, mem, &len) != 0) return 0;
    return mem[SK_MEMINFO_DROPS];
  }

 private:
  void loop() {
    constexpr int kBatch = 64;
    constexpr std::size_t kRoom = 4096;
    std::vector<char> bufs(kBatch * kRoom);
    iovec iov[kBatch];
    sockaddr_storage from[kBatch];
    mmsghdr msgs[kBatch];
    while (!stop_) {
      pollfd p{fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      for (int i = 0; i < kBatch; ++i) {
        iov[i] = {bufs.data() + static_cast<std::size_t>(i) * kRoom, kRoom};
        msgs[i] = {};
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof from[i];
      }
      const int n = ::recvmmsg(fd_.get(), msgs, kBatch, MSG_DONTWAIT, nullptr);
      if (n <= 0) continue;
      std::lock_guard lock(mu_);
      for (int i = 0; i < n; ++i) {
        std::string data(static_cast<char*>(iov[i].iov_base), msgs[i].msg_len);
        if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) data += "<TRUNCATED>";
        got_.push_back({format_inet(from[i]), std::move(data)});
      }
      count_ += static_cast<std::size_t>(n);
    }
  }

  Fd fd_;
  std::string address_;
  std::atomic<bool> stop_{false};
  std::atomic<std::size_t> count_{0};
  mutable std::mutex mu_;
  std::vector<Copy> got_;
  std::thread thread_;
};

// Sends payloads 0..n-1 of `tag`, datagram i on the connected fds[i % fds.size()],
// keeping at most `window` datagrams ahead of what the slowest of `pace` has read (each of
// those gets every datagram).
::testing::AssertionResult send_windowed(const std::vector<int>& fds, std::uint32_t n,
                                         const std::vector<const Collector*>& pace, std::size_t window = 64,
                                         const std::string& tag = "m", std::uint32_t first = 0) {
  auto slowest = [&] {
    std::size_t m = ~std::size_t{0};
    for (const auto* c : pace) m = std::min(m, c->count());
    return m;
  };
  const std::size_t base = slowest();
  for (std::uint32_t i = 0; i < n; ++i) {
    if (i >= window && !wait_until([&] { return slowest() - base + window > i; }, kIoTimeout, Millis(1)))
      return ::testing::AssertionFailure() << "collectors stopped at " << slowest() - base << " of " << i
                                           << " datagrams sent";
    if (auto r = udp_send(fds[i % fds.size()], mirror_payload(first + i, tag)); !r) return r;
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult send_windowed(int fd, std::uint32_t n, const std::vector<const Collector*>& pace,
                                         std::size_t window = 64, const std::string& tag = "m",
                                         std::uint32_t first = 0) {
  return send_windowed(std::vector<int>{fd}, n, pace, window, tag, first);
}

// Checks that `copies` are exactly the payloads `expected` (sequence numbers of `tag`),
// each once and byte-identical.
::testing::AssertionResult exactly(const std::vector<Copy>& copies, const std::set<std::uint32_t>& expected,
                                   const std::string& tag = "m") {
  std::set<std::uint32_t> seen;
  std::size_t wrong = 0, duplicates = 0, unexpected = 0;
  std::string first_problem;
  for (const auto& c : copies) {
    const long seq = seq_of(c.data, tag);
    if (seq < 0 || c.data != mirror_payload(static_cast<std::uint32_t>(seq), tag)) {
      if (first_problem.empty()) first_problem = "a copy that matches no payload (" + std::to_string(c.data.size()) + " bytes)";
      ++wrong;
      continue;
    }
    const auto s = static_cast<std::uint32_t>(seq);
    if (!expected.count(s)) {
      if (first_problem.empty()) first_problem = "datagram " + std::to_string(s) + " was not expected here";
      ++unexpected;
    }
    if (!seen.insert(s).second) {
      if (first_problem.empty()) first_problem = "datagram " + std::to_string(s) + " arrived twice";
      ++duplicates;
    }
  }
  std::size_t missing = 0;
  for (auto s : expected)
    if (!seen.count(s)) {
      if (first_problem.empty()) first_problem = "datagram " + std::to_string(s) + " is missing";
      ++missing;
    }
  if (wrong + duplicates + unexpected + missing == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << copies.size() << " copies for " << expected.size() << " expected: "
                                       << missing << " missing, " << duplicates << " duplicates, " << unexpected
                                       << " unexpected, " << wrong << " corrupt; first: " << first_problem;
}

std::set<std::uint32_t> range(std::uint32_t n, std::uint32_t step = 1, std::uint32_t first = 0) {
  std::set<std::uint32_t> s;
  for (std::uint32_t i = 0; i < n; i += step) s.insert(first + i);
  return s;
}

std::uint64_t bytes_of(const std::set<std::uint32_t>& seqs, const std::string& tag = "m") {
  std::uint64_t b = 0;
  for (auto s : seqs) b += mirror_payload(s, tag).size();
  return b;
}

Labels up(const std::string& listener, const std::string& upstream) {
  return {{"listener", listener}, {"upstream", upstream}};
}
Labels busy(const std::string& listener, const std::string& upstream) {
  return {{"listener", listener}, {"reason", "upstream_busy"}, {"upstream", upstream}};
}
Labels reason(const std::string& listener, const std::string& why) { return {{"listener", listener}, {"reason", why}}; }

// `"a", "b", { address = "c", sample = 10 }` for the upstreams key.
std::string upstream_entry(const std::string& address, unsigned sample = 1) {
  if (sample <= 1) return "\"" + address + "\"";
  return "{ address = \"" + address + "\", sample = " + std::to_string(sample) + " }";
}

std::string mirror_config(const std::vector<std::string>& upstreams, const std::string& keys = "",
                          const std::string& address = "127.0.0.1:0", const std::string& daemon_keys = "") {
  std::string list;
  for (const auto& u : upstreams) list += (list.empty() ? "" : ", ") + u;
  return R"([daemon]
workers = 1
drain_timeout = "2s"
restart_timeout = "5s"
)" + daemon_keys + R"(
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "netflow"
protocol = "udp"
address = ")" + address + R"("
handler = "mirror"
upstreams = [)" + list + R"(]
deny_source_ports = []
rate_limit = 0
)" + keys;
}

double ticks_to_seconds(long ticks) { return static_cast<double>(ticks) / static_cast<double>(::sysconf(_SC_CLK_TCK)); }

// ---- a. fan-out and sampling ----

// 10,000 datagrams from one sender to a mirror with three collectors, the third with
// sample = 10: 10,000 + 10,000 + 1,000 copies, byte-identical, each once. One worker
// and one sender fix the order, so the sampled collector gets the 1st, 11th, 21st, ...
TEST(Mirror, EveryDatagramReachesEveryCollectorAndSampleTakesExactlyOneInN) {
  Collector a("127.0.0.1:0"), b("127.0.0.1:0"), c("127.0.0.1:0");
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  Daemon daemon(mirror_config({upstream_entry(a.address()), upstream_entry(b.address()),
                               upstream_entry(c.address(), 10)}));
  ASSERT_TRUE(daemon.start());
  Fd exporter = udp_connect(daemon.address("netflow"));
  ASSERT_TRUE(exporter);

  constexpr std::uint32_t kN = 10000;
  ASSERT_TRUE(send_windowed(exporter.get(), kN, {&a, &b}));
  EXPECT_TRUE(a.wait_for(kN)) << a.count();
  EXPECT_TRUE(b.wait_for(kN)) << b.count();
  EXPECT_TRUE(c.wait_for(kN / 10)) << c.count();
  std::this_thread::sleep_for(200ms);  // the observation window: anything extra would have arrived by now
  EXPECT_EQ(a.count(), kN);
  EXPECT_EQ(b.count(), kN);
  EXPECT_EQ(c.count(), kN / 10);
  EXPECT_TRUE(exactly(a.copies(), range(kN))) << "collector A";
  EXPECT_TRUE(exactly(b.copies(), range(kN))) << "collector B";
  EXPECT_TRUE(exactly(c.copies(), range(kN, 10))) << "collector C (sample = 10): the 1st, 11th, 21st, ...";
  // The mirror is one-way: nothing comes back to the exporter.
  EXPECT_FALSE(udp_recv(exporter.get(), 100ms).has_value());

  const std::string admin = daemon.admin();
  EXPECT_TRUE(wait_metric(admin, "echorelay_datagrams_received_total", {{"listener", "netflow"}}, kN));
  EXPECT_TRUE(wait_metric(admin, "echorelay_mirror_datagrams_sent_total", up("netflow", a.address()), kN));
  EXPECT_TRUE(wait_metric(admin, "echorelay_mirror_datagrams_sent_total", up("netflow", b.address()), kN));
  EXPECT_TRUE(wait_metric(admin, "echorelay_mirror_datagrams_sent_total", up("netflow", c.address()), kN / 10));
  EXPECT_TRUE(wait_metric(admin, "echorelay_mirror_bytes_sent_total", up("netflow", a.address()),
                          static_cast<double>(bytes_of(range(kN)))));
  EXPECT_TRUE(wait_metric(admin, "echorelay_mirror_bytes_sent_total", up("netflow", c.address()),
                          static_cast<double>(bytes_of(range(kN, 10)))));
  EXPECT_TRUE(wait_metric(admin, "echorelay_mirror_sampled_out_total", up("netflow", c.address()), kN - kN / 10));
  EXPECT_EQ(metric_or(admin, "echorelay_mirror_sampled_out_total", up("netflow", a.address()), 0), 0);
  for (const auto* col : {&a, &b, &c}) {
    EXPECT_EQ(metric_or(admin, "echorelay_datagrams_dropped_total", busy("netflow", col->address()), 0), 0)
        << col->address();
    EXPECT_EQ(metric_or(admin, "echorelay_mirror_errors_total", up("netflow", col->address()), 0), 0)
        << col->address();
  }
}

// The 1-in-N count is per upstream, not per worker or socket: with two workers, two
// SO_REUSEPORT sockets and eight senders, 10,000 datagrams in still make exactly 1,000
// copies for the sampled collector (which ones depends on the interleaving), and every
// datagram reaches the other collector.
TEST(Mirror, SampleIsExactAcrossWorkersAndSockets) {
  Collector all("127.0.0.1:0"), sampled("127.0.0.1:0");
  ASSERT_TRUE(all.ok() && sampled.ok());
  std::string toml = mirror_config({upstream_entry(all.address()), upstream_entry(sampled.address(), 10)},
                                   "workers = 2\nsockets = 2\n");
  const auto at = toml.find("workers = 1");
  ASSERT_NE(at, std::string::npos);
  toml.replace(at, 11, "workers = 2");
  Daemon daemon(toml);
  ASSERT_TRUE(daemon.start());
  std::vector<Fd> exporters;
  std::vector<int> fds;
  for (int i = 0; i < 8; ++i) {
    exporters.push_back(udp_connect(daemon.address("netflow")));
    ASSERT_TRUE(exporters.back());
    fds.push_back(exporters.back().get());
  }
  constexpr std::uint32_t kN = 10000;
  ASSERT_TRUE(send_windowed(fds, kN, {&all}, 64));
  ASSERT_TRUE(all.wait_for(kN)) << all.count();
  ASSERT_TRUE(sampled.wait_for(kN / 10)) << sampled.count();
  std::this_thread::sleep_for(200ms);  // the observation window: anything extra would have arrived by now
  EXPECT_TRUE(exactly(all.copies(), range(kN)));
  EXPECT_EQ(sampled.count(), kN / 10) << "sample = 10 over two workers";
  std::set<std::uint32_t> taken;
  for (const auto& c : sampled.copies()) {
    const long seq = seq_of(c.data);
    ASSERT_GE(seq, 0);
    EXPECT_EQ(c.data, mirror_payload(static_cast<std::uint32_t>(seq)));
    taken.insert(static_cast<std::uint32_t>(seq));
  }
  EXPECT_EQ(taken.size(), kN / 10) << "a datagram was sampled twice";
  const std::string admin = daemon.admin();
  EXPECT_TRUE(wait_metric(admin, "echorelay_mirror_datagrams_sent_total", up("netflow", sampled.address()), kN / 10));
  EXPECT_TRUE(wait_metric(admin, "echorelay_mirror_sampled_out_total", up("netflow", sampled.address()), kN - kN / 10));
  EXPECT_TRUE(wait_metric(admin, "echorelay_mirror_datagrams_sent_total", up("netflow", all.address()), kN));
}

// A multicast listener with handler = "mirror" (in a network namespace of the test's own,
// so no multicast leaves the machine): every datagram sent to the group reaches every
// collector, the sampled one exactly one in two.
TEST(Mirror, MulticastListenerMirrorsTheGroupsDatagrams) {
  RelayNetNs ns;
  ASSERT_TRUE(ns.ok()) << "network namespace: " << ns.error();
  const unsigned r = static_cast<unsigned>(::getpid()) * 2654435761u;
  const std::string group = "239.252." + std::to_string(r % 250 + 1) + "." + std::to_string((r >> 8) % 250 + 1);
  Collector a("127.0.0.1:0", kBigBuffer, true, ns.name()), b("127.0.0.1:0", kBigBuffer, true, ns.name());
  ASSERT_TRUE(a.ok() && b.ok());
  Daemon::Options options;
  options.netns = ns.name();
  Daemon daemon(R"([daemon]
workers = 1

[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "netflow"
protocol = "multicast"
address = ")" + group + R"(:0"
interface = "lo"
handler = "mirror"
upstreams = [)" + upstream_entry(a.address()) + ", " + upstream_entry(b.address(), 2) + R"(]
deny_source_ports = []
rate_limit = 0
)",
                options);
  ASSERT_TRUE(daemon.start());
  Fd sender = ns.run([] { return udp_bind("127.0.0.1:0"); });
  ASSERT_TRUE(sender);
  in_addr lo{};
  lo.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::setsockopt(sender.get(), IPPROTO_IP, IP_MULTICAST_IF, &lo, sizeof lo), 0) << std::strerror(errno);
  int ttl = 1;
  ASSERT_EQ(::setsockopt(sender.get(), IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl), 0);
  socklen_t len = 0;
  sockaddr_storage to = parse_inet(daemon.address("netflow"), &len);
  ASSERT_EQ(::connect(sender.get(), reinterpret_cast<sockaddr*>(&to), len), 0) << std::strerror(errno);
  constexpr std::uint32_t kN = 1000;
  ASSERT_TRUE(send_windowed(sender.get(), kN, {&a}, 32));
  ASSERT_TRUE(a.wait_for(kN)) << a.count();
  ASSERT_TRUE(b.wait_for(kN / 2)) << b.count();
  std::this_thread::sleep_for(100ms);  // the observation window: anything extra would have arrived by now
  EXPECT_TRUE(exactly(a.copies(), range(kN)));
  EXPECT_TRUE(exactly(b.copies(), range(kN, 2))) << "sample = 2 on a multicast mirror";
  EXPECT_TRUE(run_in_netns(ns.name(), [&] {
    return wait_metric(daemon.admin(), "echorelay_mirror_sampled_out_total", up("netflow", b.address()), kN / 2);
  }));
}

// What collectors send back (here: each echoes every copy) is read and dropped by the
// daemon, never passed to the exporter, and the mirror keeps going.
TEST(Mirror, RepliesFromCollectorsNeverReachTheExporter) {
  DatagramUpstream echoing("127.0.0.1:0", /*echo=*/true);
  Collector quiet("127.0.0.1:0");
  ASSERT_TRUE(echoing.ok() && quiet.ok());
  Daemon daemon(mirror_config({upstream_entry(echoing.address()), upstream_entry(quiet.address())}));
  ASSERT_TRUE(daemon.start());
  Fd exporter = udp_connect(daemon.address("netflow"));
  ASSERT_TRUE(exporter);
  constexpr std::uint32_t kN = 200;
  ASSERT_TRUE(send_windowed(exporter.get(), kN, {&quiet}, 16));
  ASSERT_TRUE(quiet.wait_for(kN));
  ASSERT_TRUE(echoing.wait_for(kN));
  EXPECT_FALSE(udp_recv(exporter.get(), 300ms).has_value()) << "a collector's reply reached the exporter";
  std::set<std::uint32_t> seen;
  for (const auto& d : echoing.datagrams()) seen.insert(static_cast<std::uint32_t>(seq_of(d.data)));
  EXPECT_EQ(seen, range(kN));
  EXPECT_TRUE(exactly(quiet.copies(), range(kN)));
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_mirror_datagrams_sent_total", up("netflow", echoing.address()), kN));
}

// ---- b. allow_sources ----

// Only 127.0.0.2 may send: datagrams from 127.0.0.1 are neither mirrored nor (on an
// echo listener) answered, and each is counted as a drop and a refusal.
TEST(Mirror, AllowSourcesDropsAndCountsEveryOtherSender) {
  Collector col("127.0.0.1:0");
  ASSERT_TRUE(col.ok());
  Daemon daemon(mirror_config({upstream_entry(col.address())}, R"(allow_sources = ["127.0.0.2/32"]

[[listener]]
name = "echo"
protocol = "udp"
address = "127.0.0.1:0"
handler = "echo"
allow_sources = ["127.0.0.2/32"]
deny_source_ports = []
rate_limit = 0
)"));
  ASSERT_TRUE(daemon.start());
  const std::string admin = daemon.admin();
  const std::string target = daemon.address("netflow");
  Fd denied = udp_connect(target, "127.0.0.1:0");
  Fd allowed = udp_connect(target, "127.0.0.2:0");
  ASSERT_TRUE(denied && allowed);

  constexpr std::uint32_t kEach = 300;
  for (std::uint32_t i = 0; i < kEach; ++i) {
    ASSERT_TRUE(udp_send(denied.get(), mirror_payload(i, "deny")));
    ASSERT_TRUE(udp_send(allowed.get(), mirror_payload(i, "allow")));
    if (i % 32 == 31) {
      ASSERT_TRUE(col.wait_for(i + 1 - 16)) << col.count();  // a window against overflow
    }
  }
  ASSERT_TRUE(col.wait_for(kEach));
  EXPECT_TRUE(wait_metric(admin, "echorelay_datagrams_dropped_total", reason("netflow", "source_not_allowed"), kEach));
  EXPECT_TRUE(wait_metric(admin, "echorelay_refused_total", reason("netflow", "source_not_allowed"), kEach));
  EXPECT_TRUE(wait_metric(admin, "echorelay_datagrams_received_total", {{"listener", "netflow"}}, 2 * kEach))
      << "every datagram in is counted, admitted or not";
  std::this_thread::sleep_for(100ms);  // the observation window: a denied copy would have arrived by now
  EXPECT_EQ(col.count(), kEach);
  EXPECT_TRUE(exactly(col.copies(), range(kEach), "allow")) << "only 127.0.0.2's datagrams are mirrored";
  EXPECT_TRUE(wait_metric(admin, "echorelay_mirror_datagrams_sent_total", up("netflow", col.address()), kEach));

  // The same rule on an echo listener: 127.0.0.2 is answered, 127.0.0.1 is not, and counted.
  const std::string echo = daemon.address("echo");
  Fd denied_echo = udp_connect(echo, "127.0.0.1:0");
  Fd allowed_echo = udp_connect(echo, "127.0.0.2:0");
  ASSERT_TRUE(denied_echo && allowed_echo);
  constexpr int kEcho = 20;
  for (int i = 0; i < kEcho; ++i) {
    ASSERT_TRUE(udp_send(denied_echo.get(), "from 127.0.0.1 #" + std::to_string(i)));
    ASSERT_TRUE(udp_send(allowed_echo.get(), "from 127.0.0.2 #" + std::to_string(i)));
    EXPECT_EQ(udp_recv(allowed_echo.get()), std::optional<std::string>("from 127.0.0.2 #" + std::to_string(i)));
  }
  EXPECT_TRUE(wait_metric(admin, "echorelay_datagrams_dropped_total", reason("echo", "source_not_allowed"), kEcho));
  EXPECT_TRUE(wait_metric(admin, "echorelay_refused_total", reason("echo", "source_not_allowed"), kEcho));
  EXPECT_FALSE(udp_recv(denied_echo.get(), 200ms).has_value()) << "a source outside allow_sources was answered";
  // The mirror's counts did not move.
  EXPECT_EQ(metric_or(admin, "echorelay_refused_total", reason("netflow", "source_not_allowed")), kEach);
}

// ---- c. collectors that cannot take the copies ----

// A blackholed collector (never reads, tiny buffer) and a closed one (nothing bound:
// ICMP port unreachable, ECONNREFUSED on a later send) beside one that reads: the reader
// gets all of them, the others' losses are accounted for, and the daemon neither spins
// nor stops answering.
//
// On loopback the kernel never makes a sender wait for a full receiver: the datagram is
// handed to the receiving socket at once and dropped there (SK_MEMINFO_DROPS of the
// blackhole), so the daemon's send succeeds. For the blackholed collector the test
// therefore asserts that every datagram was either sent or counted as upstream_busy
// (and prints how many were which); upstream_busy > 0 under real back-pressure is
// FaultMirror.SlowLinkBackPressureIsCountedAsUpstreamBusy.
TEST(FaultMirror, BlackholedAndClosedCollectorsDoNotSlowTheOneThatReads) {
  Collector reader("127.0.0.1:0");
  Collector blackhole("127.0.0.1:0", /*rcvbuf=*/1, /*read=*/false);
  ASSERT_TRUE(reader.ok() && blackhole.ok());
  std::string closed;
  {
    Fd gone = udp_bind("127.0.0.1:0");
    ASSERT_TRUE(gone);
    closed = socket_address(gone.get());
  }  // closed: nothing is bound there now
  Daemon daemon(mirror_config({upstream_entry(blackhole.address()), upstream_entry(closed),
                               upstream_entry(reader.address())}));
  ASSERT_TRUE(daemon.start());
  const std::string admin = daemon.admin();
  Fd exporter = udp_connect(daemon.address("netflow"));
  ASSERT_TRUE(exporter);

  constexpr std::uint32_t kN = 20000;
  const long ticks_before = cpu_ticks(daemon.pid());
  const auto t0 = Clock::now();
  ASSERT_TRUE(send_windowed(exporter.get(), kN, {&reader}, 128));
  ASSERT_TRUE(reader.wait_for(kN)) << reader.count() << " of " << kN;
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  const double cpu_busy = ticks_to_seconds(cpu_ticks(daemon.pid()) - ticks_before);
  EXPECT_TRUE(exactly(reader.copies(), range(kN))) << "the collector that reads gets every datagram";
  EXPECT_TRUE(wait_metric(admin, "echorelay_mirror_datagrams_sent_total", up("netflow", reader.address()), kN));
  EXPECT_TRUE(wait_metric(admin, "echorelay_datagrams_received_total", {{"listener", "netflow"}}, kN));

  // Blackhole: the kernel dropped most copies at its socket; the daemon accounted for each.
  const double bh_sent = metric_or(admin, "echorelay_mirror_datagrams_sent_total", up("netflow", blackhole.address()), 0);
  const double bh_busy = metric_or(admin, "echorelay_datagrams_dropped_total", busy("netflow", blackhole.address()), 0);
  EXPECT_GT(blackhole.kernel_drops(), 0u) << "the blackhole's buffer never filled";
  EXPECT_EQ(bh_sent + bh_busy, kN) << "blackhole: sent " << bh_sent << " + upstream_busy " << bh_busy;
  // Closed port: ICMP port unreachable comes back as ECONNREFUSED on the connected socket.
  const double cl_sent = metric_or(admin, "echorelay_mirror_datagrams_sent_total", up("netflow", closed), 0);
  const double cl_busy = metric_or(admin, "echorelay_datagrams_dropped_total", busy("netflow", closed), 0);
  const double cl_errors = metric_or(admin, "echorelay_mirror_errors_total", up("netflow", closed), 0);
  EXPECT_GT(cl_errors + cl_busy, 0) << "the closed collector's ICMP errors were not counted";
  EXPECT_LE(cl_sent, kN);

  // Idle again: the daemon must not spin on the errors or the full socket.
  const long ticks_idle = cpu_ticks(daemon.pid());
  std::this_thread::sleep_for(1000ms);
  const double cpu_idle = ticks_to_seconds(cpu_ticks(daemon.pid()) - ticks_idle);
  EXPECT_LT(cpu_idle, 0.2) << "the daemon burns CPU with nothing to do";
  EXPECT_LT(cpu_busy, secs + 0.5) << "more than one CPU for one worker?";
  // ... and it still serves: admin answers, new datagrams reach the reader.
  auto health = http_get(admin, "/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  ASSERT_TRUE(send_windowed(exporter.get(), 100, {&reader}, 16, "m", kN));
  EXPECT_TRUE(reader.wait_for(kN + 100));
  std::printf("[ mirror ] %u datagrams in %.2f s, daemon CPU %.2f s (idle after: %.2f s); blackhole sent %.0f, "
              "upstream_busy %.0f, kernel drops at the blackhole %u; closed port sent %.0f, errors %.0f, "
              "upstream_busy %.0f\n",
              kN, secs, cpu_busy, cpu_idle, bh_sent, bh_busy, blackhole.kernel_drops(), cl_sent, cl_errors, cl_busy);
}



// A collector behind a slow link (a token bucket of 8 Mbit/s on the daemon's way out to
// it, its queue longer than the daemon's socket send buffer) fills the daemon's send
// buffer: the sends meet EAGAIN and must neither wait nor slow the fast collector.
// Every datagram is sent or counted as upstream_busy, busy > 0, and what was sent
// arrives.
TEST(FaultMirror, SlowLinkBackPressureIsCountedAsUpstreamBusy) {
  VethNamespaces ns;
  REQUIRE_NETNS(ns);
  ASSERT_TRUE(ns.shape("8mbit", "16mb"));
  const std::string d = ns.daemon_side();
  Collector fast("127.0.0.1:0", kBigBuffer, true, d);
  Collector slow(std::string(VethNamespaces::kPeerIp) + ":0", kBigBuffer, true, ns.peer_side());
  ASSERT_TRUE(fast.ok() && slow.ok());
  Daemon::Options options;
  options.netns = d;
  Daemon daemon(mirror_config({upstream_entry(fast.address()), upstream_entry(slow.address())}), options);
  ASSERT_TRUE(daemon.start());
  const std::string admin = daemon.admin();
  Fd exporter = run_in_netns(d, [&] { return udp_connect(daemon.address("netflow")); });
  ASSERT_TRUE(exporter);

  // ~6.5 MB as fast as the fast collector reads: several times what 8 Mbit/s carries
  // in the time it takes, so the slow link's queue holds the daemon's socket full.
  constexpr std::uint32_t kN = 40000;
  const auto t0 = Clock::now();
  ASSERT_TRUE(send_windowed(exporter.get(), kN, {&fast}, 128));
  ASSERT_TRUE(fast.wait_for(kN)) << fast.count();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_TRUE(exactly(fast.copies(), range(kN))) << "the fast collector gets every datagram";
  EXPECT_TRUE(wait_metric_in(d, admin, "echorelay_datagrams_received_total", {{"listener", "netflow"}}, kN));

  const double slow_sent = metric_in(d, admin, "echorelay_mirror_datagrams_sent_total", up("netflow", slow.address()), 0);
  const double slow_busy = metric_in(d, admin, "echorelay_datagrams_dropped_total", busy("netflow", slow.address()), 0);
  EXPECT_GT(slow_busy, 0) << "a full send buffer was never counted as upstream_busy";
  EXPECT_EQ(slow_sent + slow_busy, kN) << "sent " << slow_sent << " + upstream_busy " << slow_busy;
  EXPECT_EQ(metric_in(d, admin, "echorelay_datagrams_dropped_total", busy("netflow", fast.address()), 0), 0);
  // What the daemon sent drains through the slow link and arrives intact.
  EXPECT_TRUE(slow.wait_for(static_cast<std::size_t>(slow_sent), 20000ms))
      << slow.count() << " of " << slow_sent << " sent";
  std::set<std::uint32_t> slow_seqs;
  for (const auto& c : slow.copies()) {
    const long s = seq_of(c.data);
    EXPECT_TRUE(s >= 0 && c.data == mirror_payload(static_cast<std::uint32_t>(s))) << "corrupt copy";
    if (s >= 0) slow_seqs.insert(static_cast<std::uint32_t>(s));
  }
  EXPECT_EQ(slow_seqs.size(), slow.count()) << "duplicates at the slow collector";
  std::printf("[ mirror ] %u datagrams in %.2f s; slow collector: sent %.0f, upstream_busy %.0f, received %zu\n", kN,
              secs, slow_sent, slow_busy, slow.count());
}

// ---- d. hot restart storm ----

// 20,000 datagrams at a steady 2,000/s while the daemon is hot-restarted 8 times: the
// listening socket is handed over, so the collector receives every datagram, once,
// byte-identical, and the counters carry on across the generations.
TEST(MirrorStorm, HotRestartsDuringAStreamLoseNoDatagram) {
  Collector col("127.0.0.1:0");
  ASSERT_TRUE(col.ok());
  ServiceUnderTest svc(mirror_config({upstream_entry(col.address())}, "recv_buffer = \"4MiB\"\n"));
  ASSERT_TRUE(svc.start());
  const std::string target = svc.address("netflow");
  const std::string admin = svc.admin();
  Fd exporter = udp_connect(target);
  ASSERT_TRUE(exporter);

  constexpr std::uint32_t kN = 20000;
  constexpr int kRestarts = 8;
  std::atomic<std::uint32_t> sent{0};
  std::atomic<bool> send_failed{false};
  std::thread sender([&] {
    // 20 datagrams every 10 ms: 2,000/s for 10 s.
    auto next = Clock::now();
    for (std::uint32_t i = 0; i < kN; ++i) {
      if (i % 20 == 0) {
        next += 10ms;
        std::this_thread::sleep_until(next);
      }
      const std::string p = mirror_payload(i);
      if (::send(exporter.get(), p.data(), p.size(), 0) != static_cast<ssize_t>(p.size())) send_failed = true;
      sent = i + 1;
    }
  });
  std::vector<pid_t> old_pids;
  std::vector<long> took;
  // The stream flows through the daemon (half a second of it) before the first restart.
  // EXPECT, not ASSERT: the sender thread must be joined.
  EXPECT_TRUE(col.wait_for(1000)) << col.count();
  for (int r = 0; r < kRestarts; ++r) {
    const pid_t old = svc.main_pid();
    auto res = svc.hot_restart(10000ms);
    if (!res.ok) {
      ADD_FAILURE() << "restart " << r + 1 << ": " << res.status;
      break;
    }
    EXPECT_NE(res.pid, old);
    EXPECT_EQ(svc.address("netflow"), target) << "the listener keeps its port";
    old_pids.push_back(old);
    took.push_back(res.took.count());
    std::this_thread::sleep_for(700ms);  // pacing: the restarts spread over the stream
  }
  sender.join();
  ASSERT_FALSE(send_failed.load());
  const bool all = col.wait_for(kN, 10000ms);
  std::this_thread::sleep_for(200ms);  // the observation window: a duplicate would have arrived by now
  EXPECT_TRUE(all) << col.count() << " of " << kN << " datagrams reached the collector";
  EXPECT_EQ(col.count(), kN);
  EXPECT_TRUE(exactly(col.copies(), range(kN))) << "across " << old_pids.size() << " hot restarts";
  EXPECT_EQ(old_pids.size(), static_cast<std::size_t>(kRestarts));
  for (pid_t p : old_pids) EXPECT_TRUE(wait_gone(p, 7000ms).gone) << "old pid " << p << " still runs";
  EXPECT_TRUE(wait_metric(admin, "echorelay_datagrams_received_total", {{"listener", "netflow"}}, kN))
      << "the totals carry over across restarts";
  EXPECT_TRUE(wait_metric(admin, "echorelay_mirror_datagrams_sent_total", up("netflow", col.address()), kN));
  std::string times;
  for (long t : took) times += std::to_string(t) + " ";
  std::printf("[ mirror ] %zu restarts during %u datagrams; restart ms: %s\n", old_pids.size(), kN, times.c_str());
}

// ---- e. preserve_source ----

// The exporter is 198.18.0.2 in its own namespace; the daemon and the collector are in
// the other, behind 198.18.0.1. With preserve_source the collector sees each copy come
// from the exporter's address and port, payload intact; without it, from the daemon.
void preserve_source_case(bool preserve) {
  VethNamespaces ns;
  REQUIRE_NETNS(ns);
  const std::string d = ns.daemon_side();
  Collector col(std::string(VethNamespaces::kDaemonIp) + ":0", kBigBuffer, true, d);
  ASSERT_TRUE(col.ok());
  Daemon::Options options;
  options.netns = d;
  Daemon daemon(mirror_config({upstream_entry(col.address())},
                              std::string("preserve_source = ") + (preserve ? "true" : "false") +
                                  "\nallow_sources = [\"198.18.0.0/24\"]\n",
                              std::string(VethNamespaces::kDaemonIp) + ":0"),
                options);
  ASSERT_TRUE(daemon.start());
  const std::string admin = daemon.admin();
  Fd exporter =
      run_in_netns(ns.peer_side(), [&] { return udp_connect(daemon.address("netflow"), std::string(VethNamespaces::kPeerIp) + ":0"); });
  ASSERT_TRUE(exporter);
  const std::string exporter_address = socket_address(exporter.get());
  ASSERT_EQ(exporter_address.rfind(std::string(VethNamespaces::kPeerIp) + ":", 0), 0u) << exporter_address;

  constexpr std::uint32_t kN = 500;
  ASSERT_TRUE(send_windowed(exporter.get(), kN, {&col}, 32));
  ASSERT_TRUE(col.wait_for(kN)) << col.count();
  // Sizes up to the edge of one Ethernet frame as well: a header the daemon builds must
  // fit them (1472 bytes of payload in a 1500-byte packet).
  const std::vector<std::string> big = {std::string(1472, 'x'), std::string(1000, '\0'), std::string()};
  for (const auto& p : big) ASSERT_TRUE(udp_send(exporter.get(), p));
  ASSERT_TRUE(col.wait_for(kN + big.size())) << col.count();
  auto copies = col.copies();
  ASSERT_EQ(copies.size(), kN + big.size());
  std::vector<Copy> small(copies.begin(), copies.begin() + kN);
  EXPECT_TRUE(exactly(small, range(kN)));
  std::multiset<std::string> big_seen, big_expected(big.begin(), big.end());
  for (std::size_t i = kN; i < copies.size(); ++i) big_seen.insert(copies[i].data);
  EXPECT_TRUE(big_seen == big_expected) << "large, binary or empty datagrams changed on the way";
  std::map<std::string, std::size_t> sources;
  for (const auto& c : copies) ++sources[c.from];
  ASSERT_EQ(sources.size(), 1u) << "copies came from several sources; first " << sources.begin()->first;
  const std::string seen_from = sources.begin()->first;
  if (preserve) {
    EXPECT_EQ(seen_from, exporter_address) << "preserve_source: the copies must carry the exporter's address and port";
  } else {
    EXPECT_NE(seen_from, exporter_address);
    EXPECT_EQ(seen_from.rfind(std::string(VethNamespaces::kDaemonIp) + ":", 0), 0u)
        << "without preserve_source the copies come from the daemon: " << seen_from;
  }
  EXPECT_TRUE(wait_metric_in(d, admin, "echorelay_mirror_datagrams_sent_total", up("netflow", col.address()),
                             kN + big.size()));
  EXPECT_EQ(metric_in(d, admin, "echorelay_mirror_errors_total", up("netflow", col.address()), 0), 0);
}

TEST(Mirror, PreserveSourceSendsCopiesFromTheExportersAddressAndPort) { preserve_source_case(true); }
TEST(Mirror, WithoutPreserveSourceCopiesComeFromTheDaemon) { preserve_source_case(false); }


// ---- names ----

// A collector named by host is resolved through [resolver] (a real dnsmasq, TTL 1 s)
// and a changed record is followed within the mirror's re-resolution interval (5 s)
// plus the TTL: copies move to the new address, none go to the old one after that.
TEST(Mirror, ACollectorNamedByHostIsResolvedAndAChangedRecordIsFollowed) {
  Collector first("127.0.0.2:0");
  ASSERT_TRUE(first.ok());
  const std::string port = first.address().substr(first.address().rfind(':') + 1);
  Collector second("127.0.0.3:" + port);
  ASSERT_TRUE(second.ok());
  Dnsmasq dns("127.0.0.2 collector.test\n");
  ASSERT_TRUE(dns.start("collector.test"));
  const std::string upstream = "collector.test:" + port;
  Daemon daemon(mirror_config({upstream_entry(upstream)}, "", "127.0.0.1:0",
                              "\n[resolver]\nservers = [\"" + dns.server() + "\"]\ntimeout = \"1s\"\nattempts = 2\n"));
  ASSERT_TRUE(daemon.start());
  Fd exporter = udp_connect(daemon.address("netflow"));
  ASSERT_TRUE(exporter);
  const auto probe = [&] { return ::send(exporter.get(), "probe", 5, 0) == 5; };

  // The first answer arrives a moment after the start: until then copies are lost
  // (counted as errors), so send until one arrives.
  ASSERT_TRUE(wait_until([&] { return probe() && first.count() > 0; }, 5000ms)) << "the name was never resolved";
  EXPECT_EQ(second.count(), 0u);

  ASSERT_TRUE(dns.set_hosts("127.0.0.3 collector.test\n"));
  ASSERT_TRUE(wait_until([&] {
    auto a = dns.query("collector.test", 1);
    return a && a->size() == 1 && (*a)[0] == "127.0.0.3";
  })) << "dnsmasq did not pick up the new record; log:\n"
      << dns.log();
  const auto changed = std::chrono::steady_clock::now();
  const auto since_change = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - changed).count(); };
  const bool followed = wait_until([&] { return probe() && second.count() > 0; }, 9000ms);
  ASSERT_TRUE(followed) << "copies still go to the old address " << since_change() << " s after the change";
  std::cerr << "changed record followed after " << since_change() << " s\n";

  // Settled: the next datagrams all reach the new address and none the old one (after
  // 100 ms in which copies already on their way to the old one land).
  std::this_thread::sleep_for(100ms);
  const std::size_t old_count = first.count();
  const std::size_t new_count = second.count();
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(probe());
  EXPECT_TRUE(second.wait_for(new_count + 50)) << second.count() - new_count;
  EXPECT_EQ(first.count(), old_count);
  EXPECT_TRUE(wait_metric(daemon.admin(), "echorelay_mirror_datagrams_sent_total", up("netflow", upstream),
                          static_cast<double>(old_count + new_count + 50)));
}

}  // namespace
}  // namespace echorelay::test
