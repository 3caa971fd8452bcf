// Resolver against a real dnsmasq that each test starts on a free loopback port, seen
// through a small UDP tap the test owns (it counts the queries and can hold them back),
// plus the system resolver for "localhost". dnsmasq comes from packaging/install-deps.sh
// (dnsmasq-base); without it these tests fail rather than skip.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "config/config.hpp"
#include "net/endpoint.hpp"
#include "net/fd.hpp"
#include "upstream/resolver.hpp"
#include "../common/ports.hpp"

extern char** environ;

namespace echorelay::upstream {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr auto kAnswerTimeout = 10s;
constexpr auto kStartTimeout = 10s;

std::string ip_of(const net::SockAddr& addr) {
  char text[INET6_ADDRSTRLEN] = {};
  if (addr.family() == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(addr.storage).sin_addr, text, sizeof text);
  } else if (addr.family() == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(addr.storage).sin6_addr, text, sizeof text);
  }
  return text;
}

std::uint16_t port_of(const net::SockAddr& addr) {
  return ntohs(addr.family() == AF_INET ? reinterpret_cast<const sockaddr_in&>(addr.storage).sin_port
                                        : reinterpret_cast<const sockaddr_in6&>(addr.storage).sin6_port);
}

std::set<std::string> ips(const Addresses& addresses) {
  std::set<std::string> out;
  for (const auto& a : addresses) out.insert(ip_of(a));
  return out;
}

// A UDP socket on 127.0.0.1 with a kernel-chosen port. Kept open, nothing reads it:
// a DNS server that never answers (and never sends ICMP port unreachable).
net::Fd bound_udp(std::uint16_t& port) {
  port = 0;
  return test::bind_loopback(SOCK_DGRAM, port);
}

std::uint16_t free_udp_port() {
  std::uint16_t port = 0;
  net::Fd fd = bound_udp(port);
  return port;  // closed on return: free again, with a small race the callers retry
}

net::Endpoint loopback(std::uint16_t port) {
  net::Endpoint ep;
  ep.host = "127.0.0.1";
  ep.port = port;
  return ep;
}

config::Resolver dns_config(std::uint16_t port, std::chrono::milliseconds timeout = 1s, unsigned attempts = 2) {
  config::Resolver c;
  c.servers = {loopback(port)};
  c.timeout = timeout;
  c.attempts = attempts;
  return c;
}

std::string find_dnsmasq() {
  for (const char* dir : {"/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin"}) {
    std::string path = std::string(dir) + "/dnsmasq";
    if (::access(path.c_str(), X_OK) == 0) return path;
  }
  return "";
}

// Drives an io_context until `done` holds or the deadline passes. Every wait in these
// tests goes through here.
template <class Pred>
bool run_until(boost::asio::io_context& io, Pred done, std::chrono::steady_clock::duration timeout = kAnswerTimeout) {
  // The guard keeps run_one_for from returning at once (and stopping the context)
  // while the answer is still on its way from the resolver thread.
  auto guard = boost::asio::make_work_guard(io);
  if (io.stopped()) io.restart();
  auto deadline = Clock::now() + timeout;
  while (!done()) {
    auto now = Clock::now();
    if (now >= deadline) return false;
    io.run_one_for(std::min<Clock::duration>(deadline - now, 50ms));
  }
  return true;
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/resolver_test.XXXXXX";
    if (::mkdtemp(tmpl) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A dnsmasq child on 127.0.0.1:port() that knows only the records it is given (no
// /etc/hosts, no resolv.conf, no config file), killed by PID at the end.
class Dnsmasq {
 public:
  ~Dnsmasq() { stop(); }

  // Empty on success, else why it did not start (with dnsmasq's own output).
  std::string start(const std::string& dir, const std::vector<std::string>& records) {
    std::string binary = find_dnsmasq();
    if (binary.empty()) {
      return "dnsmasq not found (looked in /usr/sbin, /usr/bin, ...): install dnsmasq-base, "
             "e.g. with packaging/install-deps.sh";
    }
    log_ = dir + "/dnsmasq.log";
    std::string last_error;
    // The free port is only free until someone else binds it: retry a few times.
    for (int attempt = 0; attempt < 5; ++attempt) {
      port_ = test::free_dns_port();
      if (port_ == 0) return "no port on 127.0.0.1 free for both UDP and TCP";
      std::vector<std::string> args = {binary,
                                       "--no-daemon",
                                       "--port=" + std::to_string(port_),
                                       "--listen-address=127.0.0.1",
                                       "--bind-interfaces",
                                       "--no-resolv",
                                       "--no-hosts",
                                       "--conf-file=/dev/null",
                                       "--log-queries",
                                       "--local=/test/",  // unknown *.test names: NXDOMAIN, never forwarded
                                       "--host-record=ready.test,127.0.0.99"};
      args.insert(args.end(), records.begin(), records.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      posix_spawn_file_actions_t actions;
      posix_spawn_file_actions_init(&actions);
      posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
      posix_spawn_file_actions_addopen(&actions, 2, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int rc = posix_spawn(&pid_, binary.c_str(), &actions, nullptr, argv.data(), environ);
      posix_spawn_file_actions_destroy(&actions);
      if (rc != 0) return "posix_spawn " + binary + ": " + std::strerror(rc);
      if (wait_ready()) return "";
      last_error = "dnsmasq did not answer on port " + std::to_string(port_) + ": " + read_file(log_);
      stop();
    }
    return last_error;
  }

  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    auto deadline = Clock::now() + 5s;
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (Clock::now() >= deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
    pid_ = -1;
  }

  // dnsmasq rereads --addn-hosts files and clears its cache on SIGHUP.
  void reload() { ::kill(pid_, SIGHUP); }
  std::uint16_t port() const { return port_; }

 private:
  // Ready = a fresh resolver gets an answer for ready.test. Exits early if the child
  // died (port taken).
  bool wait_ready() {
    auto deadline = Clock::now() + kStartTimeout;
    while (Clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      boost::asio::io_context io;
      std::optional<Result<Addresses>> answer;
      {
        Resolver probe(dns_config(port_, 200ms, 1));
        probe.resolve("ready.test", 1, io.get_executor(), [&](Result<Addresses> r) { answer = std::move(r); });
        run_until(io, [&] { return answer.has_value(); }, 2s);
      }
      if (answer && answer->ok()) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  pid_t pid_ = -1;
  std::uint16_t port_ = 0;
  std::string log_;
};

// Between the resolver and dnsmasq: forwards every query and answer unchanged, counts
// the queries by name and type, and can hold queries back until released, so a test
// knows exactly what went on the wire and when answers may arrive.
class DnsTap {
 public:
  explicit DnsTap(std::uint16_t upstream_port) {
    front_ = bound_udp(port_);
    back_ = net::Fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_in up{};
    up.sin_family = AF_INET;
    up.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    up.sin_port = htons(upstream_port);
    ::connect(back_.get(), reinterpret_cast<sockaddr*>(&up), sizeof up);
    thread_ = std::thread([this] { run(); });
  }
  ~DnsTap() {
    stop_ = true;
    thread_.join();
  }

  std::uint16_t port() const { return port_; }
  void hold() { held_ = true; }
  void release() { held_ = false; }
  // Queries seen for `name` (any type).
  int queries(const std::string& name) {
    std::lock_guard lock(mutex_);
    int n = 0;
    for (const auto& [key, count] : counts_) {
      if (key.first == name) n += count;
    }
    return n;
  }
  int queries(const std::string& name, int qtype) {
    std::lock_guard lock(mutex_);
    auto it = counts_.find({name, qtype});
    return it == counts_.end() ? 0 : it->second;
  }

 private:
  struct Held {
    sockaddr_storage from;
    socklen_t from_len;
    std::string packet;
  };

  void run() {
    std::map<std::uint16_t, std::pair<sockaddr_storage, socklen_t>> clients;  // DNS id -> client
    std::vector<Held> held;
    char buf[4096];
    while (!stop_) {
      pollfd fds[2] = {{front_.get(), POLLIN, 0}, {back_.get(), POLLIN, 0}};
      ::poll(fds, 2, 20);
      if (fds[0].revents & POLLIN) {
        Held h{};
        h.from_len = sizeof h.from;
        ssize_t n = ::recvfrom(front_.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&h.from), &h.from_len);
        if (n >= 12) {
          h.packet.assign(buf, static_cast<std::size_t>(n));
          count(h.packet);
          held.push_back(std::move(h));
        }
      }
      if (!held_) {
        for (auto& h : held) {
          std::uint16_t id = static_cast<std::uint16_t>((static_cast<unsigned char>(h.packet[0]) << 8) |
                                                        static_cast<unsigned char>(h.packet[1]));
          clients[id] = {h.from, h.from_len};
          ::send(back_.get(), h.packet.data(), h.packet.size(), 0);
        }
        held.clear();
      }
      if (fds[1].revents & POLLIN) {
        ssize_t n = ::recv(back_.get(), buf, sizeof buf, 0);
        if (n >= 12) {
          std::uint16_t id = static_cast<std::uint16_t>((static_cast<unsigned char>(buf[0]) << 8) |
                                                        static_cast<unsigned char>(buf[1]));
          auto it = clients.find(id);
          if (it != clients.end()) {
            ::sendto(front_.get(), buf, static_cast<std::size_t>(n), 0,
                     reinterpret_cast<const sockaddr*>(&it->second.first), it->second.second);
          }
        }
      }
    }
  }

  // The question's name and type: labels from byte 12, then QTYPE.
  void count(const std::string& packet) {
    std::string name;
    std::size_t i = 12;
    while (i < packet.size() && packet[i] != 0) {
      auto len = static_cast<unsigned char>(packet[i]);
      if (!name.empty()) name += '.';
      name += packet.substr(i + 1, len);
      i += 1 + len;
    }
    if (i + 2 >= packet.size()) return;
    int qtype = (static_cast<unsigned char>(packet[i + 1]) << 8) | static_cast<unsigned char>(packet[i + 2]);
    std::lock_guard lock(mutex_);
    ++counts_[{name, qtype}];
  }

  net::Fd front_;
  net::Fd back_;
  std::uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> held_{false};
  std::mutex mutex_;
  std::map<std::pair<std::string, int>, int> counts_;
  std::thread thread_;
};

constexpr int kTypeA = 1;
constexpr int kTypeAaaa = 28;

class ResolverTest : public ::testing::Test {
 protected:
  // Starts dnsmasq with these records; a failure to start fails the test.
  void start_dns(const std::vector<std::string>& records) {
    ASSERT_FALSE(dir_.path().empty()) << "mkdtemp failed";
    std::string error = dns_.start(dir_.path(), records);
    ASSERT_TRUE(error.empty()) << error;
    tap_.emplace(dns_.port());
  }

  Result<Addresses> resolve(Resolver& resolver, const std::string& host, std::uint16_t port = 80,
                            Clock::duration timeout = kAnswerTimeout) {
    std::optional<Result<Addresses>> answer;
    resolver.resolve(host, port, io_.get_executor(), [&](Result<Addresses> r) { answer = std::move(r); });
    if (!run_until(io_, [&] { return answer.has_value(); }, timeout)) {
      return make_error("test: no answer for " + host + " within the timeout");
    }
    return std::move(*answer);
  }

  // io_ outlives every Resolver a test creates: a Resolver's destructor posts to it.
  boost::asio::io_context io_;
  TempDir dir_;
  Dnsmasq dns_;
  std::optional<DnsTap> tap_;
};

TEST_F(ResolverTest, IpLiteralsAreAnsweredWithoutAQuery) {
  std::uint16_t silent_port = 0;
  net::Fd silent = bound_udp(silent_port);  // would time out if it were asked
  Resolver resolver(dns_config(silent_port, 5s, 2));
  auto start = Clock::now();
  auto v4 = resolve(resolver, "192.0.2.7", 8080);
  auto v6 = resolve(resolver, "2001:db8::7", 443);
  EXPECT_LT(Clock::now() - start, 1s);
  ASSERT_TRUE(v4.ok()) << v4.error();
  ASSERT_EQ(v4->size(), 1u);
  EXPECT_EQ(ip_of((*v4)[0]), "192.0.2.7");
  EXPECT_EQ(port_of((*v4)[0]), 8080);
  EXPECT_EQ((*v4)[0].len, sizeof(sockaddr_in));
  ASSERT_TRUE(v6.ok()) << v6.error();
  ASSERT_EQ(v6->size(), 1u);
  EXPECT_EQ(ip_of((*v6)[0]), "2001:db8::7");
  EXPECT_EQ(port_of((*v6)[0]), 443);
  EXPECT_EQ((*v6)[0].len, sizeof(sockaddr_in6));
}

TEST_F(ResolverTest, NameResolvesToTheConfiguredRecord) {
  ASSERT_NO_FATAL_FAILURE(start_dns({"--address=/a.test/127.0.0.2", "--local-ttl=60"}));
  Resolver resolver(dns_config(tap_->port()));
  auto answer = resolve(resolver, "a.test", 7007);
  ASSERT_TRUE(answer.ok()) << answer.error();
  ASSERT_EQ(answer->size(), 1u);
  EXPECT_EQ(ip_of((*answer)[0]), "127.0.0.2");
  EXPECT_EQ(port_of((*answer)[0]), 7007);
  // --address covers subdomains too, and the name is asked as written (no search list).
  auto sub = resolve(resolver, "www.a.test", 1);
  ASSERT_TRUE(sub.ok()) << sub.error();
  EXPECT_EQ(ips(*sub), std::set<std::string>{"127.0.0.2"});
  EXPECT_EQ(tap_->queries("www.a.test", kTypeA), 1);
}

TEST_F(ResolverTest, DualStackNameReturnsBothFamilies) {
  ASSERT_NO_FATAL_FAILURE(start_dns({"--host-record=dual.test,127.0.0.3,2001:db8::3", "--local-ttl=60"}));
  Resolver resolver(dns_config(tap_->port()));
  auto answer = resolve(resolver, "dual.test", 53);
  ASSERT_TRUE(answer.ok()) << answer.error();
  EXPECT_EQ(ips(*answer), (std::set<std::string>{"127.0.0.3", "2001:db8::3"}));
  for (const auto& a : *answer) EXPECT_EQ(port_of(a), 53);
  EXPECT_EQ(tap_->queries("dual.test", kTypeA), 1);
  EXPECT_EQ(tap_->queries("dual.test", kTypeAaaa), 1);
}

TEST_F(ResolverTest, UnknownNameIsACleanErrorAndNotCached) {
  ASSERT_NO_FATAL_FAILURE(start_dns({"--local-ttl=60"}));
  Resolver resolver(dns_config(tap_->port()));
  auto answer = resolve(resolver, "nope.test");
  ASSERT_FALSE(answer.ok());
  EXPECT_EQ(answer.error(), "resolve nope.test: Domain name not found");
  int first = tap_->queries("nope.test");
  EXPECT_GE(first, 1);
  auto again = resolve(resolver, "nope.test");
  ASSERT_FALSE(again.ok());
  EXPECT_GT(tap_->queries("nope.test"), first) << "a negative answer must not be cached";
}

TEST_F(ResolverTest, SilentServerTimesOutWithinTimeoutTimesAttempts) {
  std::uint16_t silent_port = 0;
  net::Fd silent = bound_udp(silent_port);
  ASSERT_TRUE(silent);
  constexpr auto kTimeout = 300ms;
  constexpr unsigned kAttempts = 2;
  Resolver resolver(dns_config(silent_port, kTimeout, kAttempts));
  auto start = Clock::now();
  auto answer = resolve(resolver, "slow.test");
  auto elapsed = Clock::now() - start;
  ASSERT_FALSE(answer.ok());
  EXPECT_EQ(answer.error(), "resolve slow.test: Timeout while contacting DNS servers");
  EXPECT_LE(elapsed, kTimeout * kAttempts + 1s);
  EXPECT_GE(elapsed, kTimeout);  // it did wait for the server at least once
}

TEST_F(ResolverTest, ClosedServerPortFailsWithinTheBudget) {
  std::uint16_t closed_port = free_udp_port();  // nothing listens: ICMP port unreachable
  Resolver resolver(dns_config(closed_port, 300ms, 2));
  auto start = Clock::now();
  auto answer = resolve(resolver, "closed.test");
  ASSERT_FALSE(answer.ok());
  EXPECT_EQ(answer.error().rfind("resolve closed.test: ", 0), 0u) << answer.error();
  EXPECT_LE(Clock::now() - start, 600ms + 1s);
}

TEST_F(ResolverTest, AnswerIsReusedWithinItsTtlAndAChangeIsFollowedAfterIt) {
  constexpr auto kTtl = 3s;
  std::string hosts = dir_.path() + "/hosts";
  write_file(hosts, "127.0.0.5 cached.test\n");
  ASSERT_NO_FATAL_FAILURE(start_dns({"--addn-hosts=" + hosts, "--local-ttl=3"}));
  Resolver resolver(dns_config(tap_->port()));

  auto start = Clock::now();  // the cache entry cannot expire before start + TTL
  auto first = resolve(resolver, "cached.test");
  ASSERT_TRUE(first.ok()) << first.error();
  EXPECT_EQ(ips(*first), std::set<std::string>{"127.0.0.5"});
  int queries_after_first = tap_->queries("cached.test", kTypeA);
  EXPECT_EQ(queries_after_first, 1);

  write_file(hosts, "127.0.0.6 cached.test\n");
  dns_.reload();
  // dnsmasq now serves the new record: a resolver with an empty cache sees it.
  {
    bool changed = false;
    auto deadline = Clock::now() + 5s;
    while (!changed && Clock::now() < deadline) {
      Resolver fresh(dns_config(dns_.port()));
      auto r = resolve(fresh, "cached.test");
      changed = r.ok() && ips(*r) == std::set<std::string>{"127.0.0.6"};
      if (!changed) std::this_thread::sleep_for(50ms);
    }
    ASSERT_TRUE(changed) << "dnsmasq did not pick up the rewritten hosts file";
  }

  auto second = resolve(resolver, "cached.test");
  ASSERT_TRUE(second.ok()) << second.error();
  if (Clock::now() - start < kTtl - 500ms) {
    EXPECT_EQ(ips(*second), std::set<std::string>{"127.0.0.5"}) << "the cached answer is reused within its TTL";
    EXPECT_EQ(tap_->queries("cached.test", kTypeA), 1) << "no query within the TTL";
  }

  // After the TTL the new record comes through (polled, with a deadline).
  bool followed = false;
  auto deadline = start + kTtl + 5s;
  while (!followed && Clock::now() < deadline) {
    auto r = resolve(resolver, "cached.test");
    followed = r.ok() && ips(*r) == std::set<std::string>{"127.0.0.6"};
    if (!followed) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(followed) << "the changed record was not followed after its TTL";
  EXPECT_GE(Clock::now() - start, kTtl - 100ms) << "the old answer should have been kept for its TTL";
  EXPECT_EQ(tap_->queries("cached.test", kTypeA), 2);
}

TEST_F(ResolverTest, OneSecondTtlChangeIsFollowed) {
  std::string hosts = dir_.path() + "/hosts";
  write_file(hosts, "127.0.0.7 short.test\n");
  ASSERT_NO_FATAL_FAILURE(start_dns({"--addn-hosts=" + hosts, "--local-ttl=1"}));
  Resolver resolver(dns_config(tap_->port()));
  auto first = resolve(resolver, "short.test");
  ASSERT_TRUE(first.ok()) << first.error();
  EXPECT_EQ(ips(*first), std::set<std::string>{"127.0.0.7"});
  write_file(hosts, "127.0.0.8 short.test\n");
  dns_.reload();
  bool followed = false;
  auto deadline = Clock::now() + 1s + 5s;
  while (!followed && Clock::now() < deadline) {
    auto r = resolve(resolver, "short.test");
    followed = r.ok() && ips(*r) == std::set<std::string>{"127.0.0.8"};
    if (!followed) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(followed);
}

TEST_F(ResolverTest, ZeroTtlIsNotCached) {
  ASSERT_NO_FATAL_FAILURE(start_dns({"--host-record=zero.test,127.0.0.4", "--local-ttl=0"}));
  Resolver resolver(dns_config(tap_->port()));
  for (int i = 0; i < 3; ++i) {
    auto r = resolve(resolver, "zero.test");
    ASSERT_TRUE(r.ok()) << r.error();
  }
  EXPECT_EQ(tap_->queries("zero.test", kTypeA), 3);
}

TEST_F(ResolverTest, ConcurrentResolvesOfOneNameShareOneQuery) {
  // TTL 0: nothing is cached, so only joining the lookup in flight can save queries.
  ASSERT_NO_FATAL_FAILURE(start_dns({"--host-record=conc.test,127.0.0.10", "--local-ttl=0"}));
  Resolver resolver(dns_config(tap_->port()));
  tap_->hold();  // no answer until every request is in

  constexpr int kThreads = 4;
  constexpr int kPerThread = 10;
  std::atomic<int> done{0};
  std::atomic<int> good{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < kThreads; ++t) {
    callers.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        resolver.resolve("conc.test", static_cast<std::uint16_t>(1000 + t * kPerThread + i), io_.get_executor(),
                         [&, port = 1000 + t * kPerThread + i](Result<Addresses> r) {
                           if (r.ok() && r->size() == 1 && ip_of((*r)[0]) == "127.0.0.10" &&
                               port_of((*r)[0]) == port) {
                             ++good;
                           }
                           ++done;
                         });
      }
    });
  }
  for (auto& c : callers) c.join();
  // The first request's queries reach the tap; the other 39 must not add any.
  ASSERT_TRUE(run_until(io_, [&] { return tap_->queries("conc.test", kTypeA) >= 1; }));
  tap_->release();
  ASSERT_TRUE(run_until(io_, [&] { return done.load() == kThreads * kPerThread; }));
  EXPECT_EQ(good.load(), kThreads * kPerThread);
  EXPECT_EQ(tap_->queries("conc.test", kTypeA), 1);
  EXPECT_EQ(tap_->queries("conc.test", kTypeAaaa), 1);
}

TEST_F(ResolverTest, CoroutineFormResolvesOnTheCallersExecutor) {
  ASSERT_NO_FATAL_FAILURE(start_dns({"--host-record=co.test,127.0.0.11", "--local-ttl=60"}));
  Resolver resolver(dns_config(tap_->port()));
  std::optional<Result<Addresses>> answer;
  std::optional<Result<Addresses>> literal;
  boost::asio::co_spawn(
      io_,
      [&]() -> boost::asio::awaitable<void> {
        // A temporary host string: the coroutine form must copy it before suspending.
        answer = co_await resolver.async_resolve(std::string("co") + ".test", 9);
        literal = co_await resolver.async_resolve("::1", 10);
      },
      boost::asio::detached);
  ASSERT_TRUE(run_until(io_, [&] { return literal.has_value(); }));
  ASSERT_TRUE(answer->ok()) << answer->error();
  EXPECT_EQ(ips(**answer), std::set<std::string>{"127.0.0.11"});
  EXPECT_EQ(port_of((**answer)[0]), 9);
  ASSERT_TRUE(literal->ok()) << literal->error();
  EXPECT_EQ(ip_of((**literal)[0]), "::1");
}

TEST_F(ResolverTest, DestructionFailsPendingRequests) {
  std::uint16_t silent_port = 0;
  net::Fd silent = bound_udp(silent_port);
  std::optional<Result<Addresses>> answer;
  auto start = Clock::now();
  {
    Resolver resolver(dns_config(silent_port, 10s, 3));
    resolver.resolve("pending.test", 1, io_.get_executor(), [&](Result<Addresses> r) { answer = std::move(r); });
  }
  EXPECT_LT(Clock::now() - start, 2s) << "the destructor must not wait for the lookup";
  ASSERT_TRUE(run_until(io_, [&] { return answer.has_value(); }));
  ASSERT_FALSE(answer->ok());
  EXPECT_EQ(answer->error(), "resolve pending.test: resolver stopped");
}

TEST_F(ResolverTest, SystemResolverAnswersLocalhost) {
  Resolver resolver(config::Resolver{});  // no servers: getaddrinfo
  auto answer = resolve(resolver, "localhost", 7);
  ASSERT_TRUE(answer.ok()) << answer.error();
  EXPECT_TRUE(ips(*answer).count("127.0.0.1") == 1 || ips(*answer).count("::1") == 1);
  for (const auto& a : *answer) EXPECT_EQ(port_of(a), 7);
  // Again: from the cache now, same answer.
  auto again = resolve(resolver, "localhost", 8);
  ASSERT_TRUE(again.ok()) << again.error();
  EXPECT_EQ(ips(*again), ips(*answer));
  for (const auto& a : *again) EXPECT_EQ(port_of(a), 8);
}

}  // namespace
}  // namespace echorelay::upstream
