// Implementation of the relay test helpers: scripted upstreams as one poll() thread
// each (woken through a pipe to stop), namespace set-up with `ip`, a fork/exec runner
// for dnsmasq, and a minimal DNS client (one question, A/AAAA answers only).
#include "relay_support.hpp"

#include "os/resources.hpp"
#include "../common/ports.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>


namespace echorelay::test {

namespace {

void make_pipe(Fd& read_end, Fd& write_end) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    ADD_FAILURE() << "pipe2: " << std::strerror(errno);
    return;
  }
  read_end.reset(fds[0]);
  write_end.reset(fds[1]);
}

std::string format_any(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) return format_inet(ss);
  return "unix";
}

// Builds a sockaddr for "host:port", "[v6]:port", "/path" or "@abstract".
bool stream_sockaddr(const std::string& address, sockaddr_storage* ss, socklen_t* len) {
  *ss = {};
  if (!address.empty() && (address.front() == '/' || address.front() == '@')) {
    auto* sun = reinterpret_cast<sockaddr_un*>(ss);
    sun->sun_family = AF_UNIX;
    if (address.size() >= sizeof sun->sun_path) return false;
    if (address.front() == '@') {
      std::memcpy(sun->sun_path + 1, address.data() + 1, address.size() - 1);
      *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address.size());
    } else {
      std::memcpy(sun->sun_path, address.data(), address.size());
      *len = sizeof(sockaddr_un);
    }
    return true;
  }
  *ss = parse_inet(address, len);
  return *len != 0;
}

}  // namespace

// ---- namespaces ----

RelayNetNs::RelayNetNs() : NetNs(Options{"erl-relay", /*multicast_route=*/true}) {
  // The kernel here has no dummy driver; a veth pair does the same job: v0 holds the
  // addresses, and permanent neighbour entries send packets for the "hosts" .1 to a MAC
  // nobody owns, so the peer end v1 drops them (PACKET_OTHERHOST). No ARP/NDP failure
  // can turn the silence into a fast EHOSTUNREACH.
  const std::string kNobody = "02:00:00:00:00:01";
  veth("v0", "v1").address("v0", "198.18.0.2/24").address("v0", "2001:db8::2/64");
  ip({"neigh", "add", kBlackhole4, "lladdr", kNobody, "dev", "v0", "nud", "permanent"});
  ip({"-6", "neigh", "add", kBlackhole6, "lladdr", kNobody, "dev", "v0", "nud", "permanent"});
}

VethNamespaces::VethNamespaces() : peer_(NetNs::Options{"erl-vethp"}), daemon_(NetNs::Options{"erl-vethd"}) {
  daemon_.veth("mq0", "mq1", peer_).address("mq0", std::string(kDaemonIp) + "/24");
  peer_.address("mq1", std::string(kPeerIp) + "/24");
}

// ---- ChildProcess ----

::testing::AssertionResult ChildProcess::start(const std::vector<std::string>& argv, const std::string& log_path,
                                               const std::string& netns) {
  Spawned child = spawn_process(argv, {}, log_path, netns);
  if (child.pid < 0) return ::testing::AssertionFailure() << "spawn " << argv.front() << ": " << std::strerror(child.error);
  pid_ = child.pid;
  reaped_ = false;
  pidfd_ = std::move(child.pidfd);
  return ::testing::AssertionSuccess();
}

bool ChildProcess::running() {
  if (pid_ <= 0 || reaped_) return false;
  pollfd p{pidfd_.get(), POLLIN, 0};
  return ::poll(&p, 1, 0) == 0;
}

::testing::AssertionResult ChildProcess::signal(int signo) {
  if (!running()) return ::testing::AssertionFailure() << "process " << pid_ << " is not running";
  if (::kill(pid_, signo) != 0) return ::testing::AssertionFailure() << "kill: " << std::strerror(errno);
  return ::testing::AssertionSuccess();
}

void ChildProcess::stop() {
  if (pid_ <= 0 || reaped_) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  reaped_ = true;
}

// ---- StreamUpstream ----

StreamUpstream::StreamUpstream(const std::string& address, UpstreamOptions options) : options_(std::move(options)) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (!stream_sockaddr(address, &ss, &len)) {
    ADD_FAILURE() << "bad upstream address " << address;
    return;
  }
  // The listening socket belongs to the namespace it was created in; the serving thread
  // may run anywhere.
  std::string error = run_in_netns(options_.netns, [&]() -> std::string {
    Fd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) return std::string("socket: ") + std::strerror(errno);
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0)
      return "bind " + address + ": " + std::strerror(errno);
    if (::listen(fd.get(), 4096) != 0) return std::string("listen: ") + std::strerror(errno);
    listen_ = std::move(fd);
    return {};
  });
  if (!error.empty()) {
    ADD_FAILURE() << "scripted upstream: " << error;
    return;
  }
  if (ss.ss_family == AF_UNIX) {
    address_ = address;
  } else {
    sockaddr_storage bound{};
    socklen_t blen = sizeof bound;
    ::getsockname(listen_.get(), reinterpret_cast<sockaddr*>(&bound), &blen);
    address_ = format_inet(bound);
  }
  make_pipe(wake_read_, wake_write_);
  thread_ = std::thread([this] { loop(); });
}

StreamUpstream::~StreamUpstream() {
  if (thread_.joinable()) {
    char c = 'x';
    (void)!::write(wake_write_.get(), &c, 1);
    thread_.join();
  }
  if (!address_.empty() && address_.front() == '/') ::unlink(address_.c_str());
}

std::size_t StreamUpstream::accepted() const {
  std::lock_guard lock(mutex_);
  return conns_.size();
}

std::size_t StreamUpstream::open_connections() const {
  std::lock_guard lock(mutex_);
  std::size_t n = 0;
  for (const auto& c : conns_) n += c.closed ? 0 : 1;
  return n;
}

std::vector<UpstreamConnection> StreamUpstream::connections() const {
  std::lock_guard lock(mutex_);
  return conns_;
}

void StreamUpstream::loop() {
  struct Live {
    Fd fd;
    std::size_t index;       // into conns_
    std::string out;         // pending bytes to send
    std::size_t out_pos = 0;
    std::uint64_t bulk_sent = 0;
    bool fin_sent = false;
    bool peer_eof = false;
  };
  std::vector<Live> live;
  std::vector<char> buf(256 * 1024);
  std::string bulk_chunk(256 * 1024, '\0');
  const std::size_t kMaxPending = 1 << 20;  // stop reading while this much echo is unsent

  auto pending = [](const Live& l) { return l.out.size() - l.out_pos; };
  auto close_live = [&](Live& l) {
    l.fd.reset();
    std::lock_guard lock(mutex_);
    conns_[l.index].closed = true;
  };

  for (;;) {
    std::vector<pollfd> fds;
    fds.push_back({wake_read_.get(), POLLIN, 0});
    fds.push_back({listen_.get(), POLLIN, 0});
    for (auto& l : live) {
      short events = 0;
      if (!l.peer_eof && pending(l) < kMaxPending) events |= POLLIN;
      bool wants_out = pending(l) > 0 ||
                       (options_.mode == UpstreamMode::Bulk && l.bulk_sent < options_.bulk_bytes && !l.fin_sent);
      if (wants_out) events |= POLLOUT;
      fds.push_back({l.fd.get(), events, 0});
    }
    if (::poll(fds.data(), fds.size(), 1000) < 0 && errno != EINTR) return;
    if (fds[0].revents) return;
    // Connections accepted below join `live` after this poll: only the first `polled`
    // entries have a pollfd.
    const std::size_t polled = live.size();
    if (fds[1].revents & POLLIN) {
      for (;;) {
        sockaddr_storage peer{};
        socklen_t plen = sizeof peer;
        int c = ::accept4(listen_.get(), reinterpret_cast<sockaddr*>(&peer), &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c < 0) break;
        UpstreamConnection info;
        info.peer = format_any(peer);
        std::size_t index;
        {
          std::lock_guard lock(mutex_);
          index = conns_.size();
          conns_.push_back(info);
        }
        if (options_.mode == UpstreamMode::Reset) {
          linger lg{1, 0};
          ::setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
          ::close(c);
          std::lock_guard lock(mutex_);
          conns_[index].closed = true;
          continue;
        }
        Live l{Fd(c), index, {}, 0, 0, false, false};
        if (options_.mode == UpstreamMode::SendThenHalfClose) l.out = options_.greeting;
        live.push_back(std::move(l));
      }
    }
    for (std::size_t i = 0; i < polled; ++i) {
      Live& l = live[i];
      short rev = fds[i + 2].revents;
      if (!l.fd) continue;
      if (rev & (POLLIN | POLLHUP | POLLERR)) {
        ssize_t n = ::recv(l.fd.get(), buf.data(), buf.size(), MSG_DONTWAIT);
        if (n > 0) {
          std::lock_guard lock(mutex_);
          auto& info = conns_[l.index];
          info.received_bytes += static_cast<std::uint64_t>(n);
          if (options_.record) info.received.append(buf.data(), static_cast<std::size_t>(n));
        }
        if (n > 0 && options_.mode == UpstreamMode::Echo) {
          if (l.out_pos > 0 && l.out_pos == l.out.size()) {
            l.out.clear();
            l.out_pos = 0;
          }
          l.out.append(buf.data(), static_cast<std::size_t>(n));
        }
        if (n == 0) {
          l.peer_eof = true;
          std::lock_guard lock(mutex_);
          conns_[l.index].eof = true;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
          close_live(l);
          continue;
        }
      }
      if (pending(l) > 0 && (rev & POLLOUT)) {
        ssize_t n = ::send(l.fd.get(), l.out.data() + l.out_pos, pending(l), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) l.out_pos += static_cast<std::size_t>(n);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
          close_live(l);
          continue;
        }
      }
      if (options_.mode == UpstreamMode::Bulk && !l.fin_sent && (rev & POLLOUT)) {
        // Keep the kernel buffer full: loop until EAGAIN.
        while (l.bulk_sent < options_.bulk_bytes) {
          std::size_t want = static_cast<std::size_t>(
              std::min<std::uint64_t>(bulk_chunk.size(), options_.bulk_bytes - l.bulk_sent));
          for (std::size_t k = 0; k < want; ++k) bulk_chunk[k] = pattern_byte(l.bulk_sent + k);
          ssize_t n = ::send(l.fd.get(), bulk_chunk.data(), want, MSG_DONTWAIT | MSG_NOSIGNAL);
          if (n < 0 && errno != EAGAIN && errno != EINTR) {
            close_live(l);  // the reader went away (EPIPE, ECONNRESET)
            break;
          }
          if (n <= 0) break;
          l.bulk_sent += static_cast<std::uint64_t>(n);
        }
        if (!l.fd) continue;
        if (l.bulk_sent == options_.bulk_bytes) {
          ::shutdown(l.fd.get(), SHUT_WR);
          l.fin_sent = true;
        }
      }
      if (options_.mode == UpstreamMode::SendThenHalfClose && !l.fin_sent && pending(l) == 0) {
        ::shutdown(l.fd.get(), SHUT_WR);
        l.fin_sent = true;
      }
      // Done when the peer has finished and everything we owe it was sent.
      bool owes = pending(l) > 0 || (options_.mode == UpstreamMode::Bulk && !l.fin_sent);
      if (l.peer_eof && !owes) close_live(l);
    }
    std::erase_if(live, [](const Live& l) { return !l.fd.valid(); });
  }
}

// ---- DatagramUpstream ----

DatagramUpstream::DatagramUpstream(const std::string& address, bool echo, const std::string& netns) : echo_(echo) {
  fd_ = run_in_netns(netns, [&] { return udp_bind(address); });
  if (!fd_) return;
  sockaddr_storage bound{};
  socklen_t blen = sizeof bound;
  ::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&bound), &blen);
  address_ = format_inet(bound);
  make_pipe(wake_read_, wake_write_);
  thread_ = std::thread([this] { loop(); });
}

DatagramUpstream::~DatagramUpstream() {
  if (thread_.joinable()) {
    char c = 'x';
    (void)!::write(wake_write_.get(), &c, 1);
    thread_.join();
  }
}

std::vector<ReceivedDatagram> DatagramUpstream::datagrams() const {
  std::lock_guard lock(mutex_);
  return received_;
}

bool DatagramUpstream::wait_for(std::size_t n, Millis timeout) const {
  return wait_until(
      [&] {
        std::lock_guard lock(mutex_);
        return received_.size() >= n;
      },
      timeout);
}

void DatagramUpstream::loop() {
  std::vector<char> buf(65536);
  for (;;) {
    pollfd fds[2] = {{wake_read_.get(), POLLIN, 0}, {fd_.get(), POLLIN, 0}};
    if (::poll(fds, 2, 1000) < 0 && errno != EINTR) return;
    if (fds[0].revents) return;
    if (!(fds[1].revents & POLLIN)) continue;
    sockaddr_storage from{};
    socklen_t flen = sizeof from;
    ssize_t n = ::recvfrom(fd_.get(), buf.data(), buf.size(), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &flen);
    if (n < 0) continue;
    {
      std::lock_guard lock(mutex_);
      received_.push_back({format_inet(from), std::string(buf.data(), static_cast<std::size_t>(n))});
    }
    if (echo_) ::sendto(fd_.get(), buf.data(), static_cast<std::size_t>(n), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&from), flen);
  }
}

// ---- DNS ----

std::optional<std::vector<std::string>> dns_query(const std::string& server, const std::string& name, int type,
                                                  Millis timeout) {
  static std::atomic<std::uint16_t> next_id{0x1234};
  const std::uint16_t id = next_id++;
  std::string q;
  q += static_cast<char>(id >> 8);
  q += static_cast<char>(id & 0xff);
  q += std::string("\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00", 10);  // RD, one question
  std::size_t start = 0;
  while (start < name.size()) {
    auto dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    q += static_cast<char>(dot - start);
    q += name.substr(start, dot - start);
    start = dot + 1;
  }
  q += '\0';
  q += static_cast<char>(type >> 8);
  q += static_cast<char>(type & 0xff);
  q += std::string("\x00\x01", 2);  // IN

  socklen_t len = 0;
  sockaddr_storage ss = parse_inet(server, &len);
  Fd fd(::socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd || ::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) return std::nullopt;
  if (::send(fd.get(), q.data(), q.size(), 0) != static_cast<ssize_t>(q.size())) return std::nullopt;
  auto deadline = Clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
    if (left <= 0) return std::nullopt;
    auto reply = udp_recv(fd.get(), Millis(left));
    if (!reply) return std::nullopt;
    const std::string& r = *reply;
    if (r.size() < 12 || static_cast<std::uint8_t>(r[0]) != (id >> 8) || static_cast<std::uint8_t>(r[1]) != (id & 0xff))
      continue;
    auto u16 = [&](std::size_t p) {
      return static_cast<unsigned>(static_cast<std::uint8_t>(r[p]) << 8 | static_cast<std::uint8_t>(r[p + 1]));
    };
    unsigned qd = u16(4), an = u16(6);
    std::size_t pos = 12;
    auto skip_name = [&]() {
      while (pos < r.size()) {
        auto l = static_cast<std::uint8_t>(r[pos]);
        if (l == 0) {
          ++pos;
          return;
        }
        if ((l & 0xc0) == 0xc0) {
          pos += 2;
          return;
        }
        pos += 1 + l;
      }
    };
    for (unsigned i = 0; i < qd; ++i) {
      skip_name();
      pos += 4;
    }
    std::vector<std::string> out;
    for (unsigned i = 0; i < an && pos < r.size(); ++i) {
      skip_name();
      if (pos + 10 > r.size()) break;
      unsigned rtype = u16(pos), rdlen = u16(pos + 8);
      pos += 10;
      if (pos + rdlen > r.size()) break;
      char text[INET6_ADDRSTRLEN] = {};
      if (rtype == 1 && rdlen == 4) {
        ::inet_ntop(AF_INET, r.data() + pos, text, sizeof text);
        out.emplace_back(text);
      } else if (rtype == 28 && rdlen == 16) {
        ::inet_ntop(AF_INET6, r.data() + pos, text, sizeof text);
        out.emplace_back(text);
      }
      pos += rdlen;
    }
    return out;
  }
}

Dnsmasq::Dnsmasq(const std::string& hosts, const std::string& netns) : netns_(netns) {
  // dnsmasq may read the hosts file after dropping privileges: make it readable.
  ::chmod(dir_.path().c_str(), 0755);
  hosts_path_ = dir_.file("hosts");
  log_path_ = dir_.file("dnsmasq.log");
  write_file(hosts_path_, hosts);
  ::chmod(hosts_path_.c_str(), 0644);
}

::testing::AssertionResult Dnsmasq::start(const std::string& probe_name) {
  const std::string binary = "/usr/sbin/dnsmasq";
  if (::access(binary.c_str(), X_OK) != 0)
    return ::testing::AssertionFailure() << binary
                                         << " is missing: install the Debian package dnsmasq-base (the install "
                                            "script lists it); the relay DNS tests need a real DNS server";
  // A port free for UDP and TCP right now; dnsmasq binds both. Retried on a lost race.
  for (int attempt = 0; attempt < 5; ++attempt) {
    std::uint16_t port = run_in_netns(netns_, [] { return free_dns_port(); });
    if (port == 0) return ::testing::AssertionFailure() << "no port on 127.0.0.1 free for both UDP and TCP";
    server_ = "127.0.0.1:" + std::to_string(port);
    auto started = process_.start({binary, "--no-daemon", "--port=" + std::to_string(port),
                                   "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                                   "--conf-file=/dev/null", "--addn-hosts=" + hosts_path_, "--local-ttl=1",
                                   "--log-facility=-", "--pid-file", "--user=root"},
                                  log_path_, netns_);
    if (!started) return started;
    bool answered = wait_until(
        [&] {
          if (!process_.running()) return true;
          auto a = query(probe_name, 1);
          auto aaaa = a && !a->empty() ? a : query(probe_name, 28);
          return aaaa && !aaaa->empty();
        },
        5000ms);
    if (answered && process_.running()) return ::testing::AssertionSuccess();
    process_.stop();
    if (answered) continue;  // exited: most likely the port was taken meanwhile
    return ::testing::AssertionFailure() << "dnsmasq did not answer for " << probe_name << " within 5 s; log:\n"
                                         << log();
  }
  return ::testing::AssertionFailure() << "dnsmasq did not start; log:\n" << log();
}

::testing::AssertionResult Dnsmasq::set_hosts(const std::string& hosts) {
  write_file(hosts_path_ + ".new", hosts);
  ::chmod((hosts_path_ + ".new").c_str(), 0644);
  if (::rename((hosts_path_ + ".new").c_str(), hosts_path_.c_str()) != 0)
    return ::testing::AssertionFailure() << "rename: " << std::strerror(errno);
  return process_.signal(SIGHUP);
}

std::optional<std::vector<std::string>> Dnsmasq::query(const std::string& name, int type) {
  return run_in_netns(netns_, [&] { return dns_query(server_, name, type); });
}

// ---- misc ----

std::string unused_tcp_address(const std::string& host) {
  std::string probe = host.find(':') != std::string::npos ? "[" + host + "]:0" : host + ":0";
  socklen_t len = 0;
  sockaddr_storage ss = parse_inet(probe, &len);
  Fd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    ADD_FAILURE() << "bind " << probe << ": " << std::strerror(errno);
    return {};
  }
  sockaddr_storage bound{};
  socklen_t blen = sizeof bound;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &blen);
  return format_inet(bound);  // closed on return: nothing listens there
}

std::uint64_t vm_rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10);
  }
  return 0;
}

std::string toml_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (std::size_t i = 0; i < items.size(); ++i) out += (i ? ", \"" : "\"") + items[i] + "\"";
  return out + "]";
}

std::string be32(std::uint32_t n) {
  std::string s(4, '\0');
  s[0] = static_cast<char>(n >> 24);
  s[1] = static_cast<char>(n >> 16);
  s[2] = static_cast<char>(n >> 8);
  s[3] = static_cast<char>(n);
  return s;
}

std::string random_bytes(std::size_t n, std::uint32_t seed) {
  std::string data(n, '\0');
  std::uint32_t x = seed;
  for (auto& ch : data) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    ch = static_cast<char>(x);
  }
  return data;
}

std::string peer_of(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return {};
  return format_any(ss);
}

std::size_t concurrent_line_echo(const std::string& address, std::size_t count, Millis timeout, std::string* error) {
  // This process holds both the clients and, for scripted upstreams, the accepted
  // side: 2 × count fds, more than a default soft limit allows.
  os::raise_fd_limit();
  struct Client {
    Fd fd;
    std::string line;
    std::size_t sent = 0;
    std::string got;
    bool connected = false;
    bool done = false;
    bool failed = false;
  };
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (!stream_sockaddr(address, &ss, &len)) {
    *error = "bad address " + address;
    return 0;
  }
  std::vector<Client> clients(count);
  for (std::size_t i = 0; i < count; ++i) {
    auto& c = clients[i];
    c.line = "client " + std::to_string(i) + " says hello through the relay\n";
    c.fd.reset(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!c.fd) {
      if (error->empty()) *error = std::string("socket: ") + std::strerror(errno);
      c.failed = true;
      continue;
    }
    if (::connect(c.fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0 && errno != EINPROGRESS) {
      if (error->empty()) *error = std::string("connect: ") + std::strerror(errno);
      c.failed = true;
    }
  }
  auto deadline = Clock::now() + timeout;
  std::size_t ok = 0;
  for (;;) {
    std::vector<pollfd> fds;
    std::vector<std::size_t> which;
    for (std::size_t i = 0; i < count; ++i) {
      auto& c = clients[i];
      if (c.done || c.failed) continue;
      short ev = POLLIN;
      if (!c.connected || c.sent < c.line.size()) ev |= POLLOUT;
      fds.push_back({c.fd.get(), ev, 0});
      which.push_back(i);
    }
    if (fds.empty()) break;
    auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
    if (left <= 0) {
      if (error->empty()) *error = std::to_string(fds.size()) + " clients unfinished at the deadline";
      break;
    }
    int rc = ::poll(fds.data(), fds.size(), static_cast<int>(std::min<long>(left, 500)));
    if (rc < 0 && errno != EINTR) break;
    for (std::size_t k = 0; k < fds.size(); ++k) {
      auto& c = clients[which[k]];
      short rev = fds[k].revents;
      if (rev == 0) continue;
      if (!c.connected && (rev & (POLLOUT | POLLERR | POLLHUP))) {
        int so_error = 0;
        socklen_t sl = sizeof so_error;
        ::getsockopt(c.fd.get(), SOL_SOCKET, SO_ERROR, &so_error, &sl);
        if (so_error != 0) {
          if (error->empty()) *error = std::string("connect: ") + std::strerror(so_error);
          c.failed = true;
          continue;
        }
        c.connected = true;
      }
      if (c.connected && c.sent < c.line.size() && (rev & POLLOUT)) {
        ssize_t n = ::send(c.fd.get(), c.line.data() + c.sent, c.line.size() - c.sent, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) c.sent += static_cast<std::size_t>(n);
      }
      if (rev & (POLLIN | POLLHUP | POLLERR)) {
        char buf[256];
        ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
          c.got.append(buf, static_cast<std::size_t>(n));
          if (c.got.size() >= c.line.size()) {
            c.done = true;
            if (c.got == c.line) {
              ++ok;
            } else if (error->empty()) {
              *error = "client " + std::to_string(which[k]) + " got '" + c.got + "'";
            }
          }
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
          if (error->empty())
            *error = "client " + std::to_string(which[k]) + " closed after " + std::to_string(c.got.size()) +
                     " bytes" + (n < 0 ? std::string(": ") + std::strerror(errno) : std::string());
          c.failed = true;
        }
      }
    }
  }
  return ok;
}

}  // namespace echorelay::test
