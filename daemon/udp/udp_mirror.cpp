// The UDP mirror; see udp_mirror.hpp.
//
// Why a raw socket for preserve_source rather than IP_TRANSPARENT: a transparent socket
// must be bound to each exporter's address and port, one socket per exporter and
// worker, created on the data path; one raw socket per worker and family sends for any
// number of exporters, keeps the source port exactly, and needs CAP_NET_RAW, which is
// narrower than CAP_NET_ADMIN.
#include "udp/udp_mirror.hpp"

#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <netinet/udp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <array>
#include <atomic>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cerrno>
#include <cstring>
#include <future>
#include <mutex>
#include <string>
#include <system_error>

#include "net/fd.hpp"
#include "net/socket_options.hpp"
#include "udp/datagram_readers.hpp"
#include "upstream/resolver.hpp"

namespace echorelay::udp {

namespace {

// How often a named collector is resolved again; the resolver's cache answers until
// the record's TTL (or its own fixed time for the system resolver) has passed.
constexpr auto kResolveInterval = upstream::kSystemResolverCacheTtl;

// IPv4 or IPv6 header plus the UDP header, as a raw socket sends them.
constexpr std::size_t kHeaderRoom = sizeof(ip6_hdr) + sizeof(udphdr);

std::uint32_t sum_words(const void* data, std::size_t len, std::uint32_t sum) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (; len > 1; p += 2, len -= 2) sum += static_cast<std::uint32_t>(p[0] << 8 | p[1]);
  if (len == 1) sum += static_cast<std::uint32_t>(p[0] << 8);
  return sum;
}

std::uint16_t fold(std::uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  const auto check = static_cast<std::uint16_t>(~sum & 0xffff);
  return check == 0 ? 0xffff : check;  // 0 means "no checksum"
}

// The exporter's address as the family of the collector, or false when it has none
// (an IPv6 exporter cannot appear to an IPv4 collector).
bool source_as(const sockaddr_storage& from, int family, sockaddr_storage& out) {
  if (from.ss_family == family) {
    out = from;
    return true;
  }
  if (family == AF_INET && from.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(from);
    if (!IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) return false;
    auto& in = reinterpret_cast<sockaddr_in&>(out);
    in = sockaddr_in{};
    in.sin_family = AF_INET;
    in.sin_port = in6.sin6_port;
    std::memcpy(&in.sin_addr, reinterpret_cast<const unsigned char*>(&in6.sin6_addr) + 12, 4);
    return true;
  }
  return false;
}

// IP and UDP headers of a copy from `from` to `to` carrying `payload`; returns their
// length. The kernel fills the IPv4 checksum and total length; UDP over IPv6 must
// carry its checksum.
std::size_t build_headers(unsigned char* out, const sockaddr_storage& from, const sockaddr_storage& to,
                          const std::byte* payload, std::uint32_t len) {
  udphdr udp{};
  udp.uh_ulen = htons(static_cast<std::uint16_t>(sizeof(udphdr) + len));
  if (to.ss_family == AF_INET) {
    const auto& src = reinterpret_cast<const sockaddr_in&>(from);
    const auto& dst = reinterpret_cast<const sockaddr_in&>(to);
    ip ip4{};
    ip4.ip_v = 4;
    ip4.ip_hl = 5;
    ip4.ip_ttl = 64;
    ip4.ip_p = IPPROTO_UDP;
    ip4.ip_src = src.sin_addr;
    ip4.ip_dst = dst.sin_addr;
    udp.uh_sport = src.sin_port;
    udp.uh_dport = dst.sin_port;
    udp.uh_sum = 0;  // optional over IPv4
    std::memcpy(out, &ip4, sizeof ip4);
    std::memcpy(out + sizeof ip4, &udp, sizeof udp);
    return sizeof ip4 + sizeof udp;
  }
  const auto& src = reinterpret_cast<const sockaddr_in6&>(from);
  const auto& dst = reinterpret_cast<const sockaddr_in6&>(to);
  ip6_hdr ip6{};
  ip6.ip6_flow = htonl(6U << 28);
  ip6.ip6_plen = udp.uh_ulen;
  ip6.ip6_nxt = IPPROTO_UDP;
  ip6.ip6_hlim = 64;
  ip6.ip6_src = src.sin6_addr;
  ip6.ip6_dst = dst.sin6_addr;
  udp.uh_sport = src.sin6_port;
  udp.uh_dport = dst.sin6_port;
  // Pseudo-header (addresses, length, next header), then the UDP header and payload.
  std::uint32_t sum = sum_words(&ip6.ip6_src, 32, 0);
  sum += static_cast<std::uint32_t>(sizeof(udphdr) + len) + IPPROTO_UDP;
  sum = sum_words(&udp, sizeof udp, sum);
  sum = sum_words(payload, len, sum);
  udp.uh_sum = htons(fold(sum));
  std::memcpy(out, &ip6, sizeof ip6);
  std::memcpy(out + sizeof ip6, &udp, sizeof udp);
  return sizeof ip6 + sizeof udp;
}

net::Fd raw_socket(int family, const std::string& listener) {
  net::Fd fd(::socket(family, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_RAW));
  if (!fd) {
    const int err = errno;
    const std::string what = std::string("listener ") + listener + ": preserve_source needs CAP_NET_RAW (copies " +
                             "leave from the exporter's address through a raw socket): socket(" +
                             (family == AF_INET ? "AF_INET" : "AF_INET6") + ", SOCK_RAW)";
    throw std::system_error(err, std::system_category(), what);
  }
  return fd;
}

class MirrorServer final : public DatagramServer {
 public:
  // A collector, shared by every worker.
  struct Upstream {
    Upstream(const net::Endpoint& e, std::uint32_t s, obs::ListenerCounters& c)
        : endpoint(e), label(e.to_string()), sample(std::max<std::uint32_t>(s, 1)), counters(c) {}
    const net::Endpoint endpoint;
    const std::string label;
    std::string warn_name;  // "LISTENER upstream LABEL", made once: warnings come from the data path
    const std::uint32_t sample;
    obs::ListenerCounters& counters;
    std::atomic<std::uint64_t> offered{0};  // datagrams seen, for an exact 1-in-N
    std::mutex mutex;                       // guards address
    net::SockAddr address;
    std::atomic<std::uint32_t> version{0};  // 0 until resolved; bumped when it changes
  };

  // One worker's socket to one collector, connected, so the kernel reports the
  // collector's ICMP errors on it; it is on the worker's Poller to read and drop what
  // the collector sends back.
  class Link final : public net::PollHandler {
   public:
    Link(Upstream& u, net::LoopRef loop) : upstream_(u), loop_(loop) {}
    ~Link() { close(); }
    void on_ready(std::uint32_t) override {
      std::array<std::byte, 2048> discard;
      // Bounded: a collector that floods us back gets a turn, not the whole loop.
      for (int round = 0; round < 64; ++round) {
        if (::recv(fd_.get(), discard.data(), discard.size(), MSG_DONTWAIT) >= 0) continue;
        const int err = errno;
        if (err == EINTR) continue;
        if (err == EAGAIN || err == EWOULDBLOCK) return;
        // ECONNREFUSED and the like: the collector's ICMP error, consumed by this call.
        upstream_.counters.add(upstream_.counters.mirror_errors);
      }
      loop_.poller->defer(*this);
    }
    void on_deadline() override {}
    // The poller goes first: off it now (it calls this until none is left).
    void abandon() override {
      if (registered_) loop_.poller->remove(fd_.get(), *this);
      registered_ = false;
    }

    // The socket, (re)connected to the collector's current address; -1 while it has
    // none or the kernel refuses (counted by the caller as errors).
    int current() {
      const auto version = upstream_.version.load(std::memory_order_acquire);
      if (version == 0) return -1;
      if (version == version_ && fd_) return fd_.get();
      net::SockAddr to;
      {
        std::lock_guard lock(upstream_.mutex);
        to = upstream_.address;
      }
      if (!fd_ || family_ != to.family()) {
        close();
        fd_.reset(::socket(to.family(), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        if (!fd_) return -1;
        family_ = to.family();
        if (loop_.poller->add(fd_.get(), *this, EPOLLIN | EPOLLET)) registered_ = true;
      }
      if (::connect(fd_.get(), to.get(), to.len) != 0) return -1;
      version_ = version;
      return fd_.get();
    }

    void close() {
      if (registered_) loop_.poller->remove(fd_.get(), *this);
      registered_ = false;
      fd_.reset();
    }

   private:
    Upstream& upstream_;
    net::LoopRef loop_;
    net::Fd fd_;
    int family_ = 0;
    std::uint32_t version_ = 0;
    bool registered_ = false;
  };

  // What one worker owns: its links and its send batch. Only its thread touches it.
  struct Worker {
    net::LoopRef loop;
    std::vector<std::unique_ptr<Link>> links;  // one per upstream
    net::Fd raw4, raw6;                        // preserve_source
    std::array<mmsghdr, kBatch> msgs{};
    std::array<std::array<iovec, 2>, kBatch> iov{};
    std::array<std::array<unsigned char, kHeaderRoom>, kBatch> headers{};
    std::array<sockaddr_storage, kBatch> to{};
  };

  MirrorServer(const config::Listener& listener, std::vector<int> sockets, obs::Registry& metrics,
               std::vector<net::LoopRef> loops, upstream::Resolver* resolver, boost::asio::io_context& control)
      : name_(listener.name),
        preserve_source_(listener.preserve_source),
        resolver_(resolver),
        control_(control),
        resolve_timer_(control),
        socket_count_(sockets.size()),
        readers_(listener, std::move(sockets), metrics.listener(listener.name), loops,
                 [this](ReceivedBatch& batch) { fan_out(batch); }) {
    for (std::size_t i = 0; i < listener.upstreams.size(); ++i) {
      const std::uint32_t sample = i < listener.upstream_samples.size() ? listener.upstream_samples[i] : 1;
      const std::string label = listener.upstreams[i].to_string();
      upstreams_.push_back(std::make_unique<Upstream>(listener.upstreams[i], sample, metrics.upstream(name_, label)));
      upstreams_.back()->warn_name = name_ + " upstream " + label;
    }
    for (auto& loop : loops) {
      auto w = std::make_unique<Worker>();
      w->loop = loop;
      for (auto& u : upstreams_) w->links.push_back(std::make_unique<Link>(*u, loop));
      workers_.push_back(std::move(w));
    }
  }

  ~MirrorServer() override {
    resolve_timer_.cancel();
    *alive_ = false;
    // The links are on the workers' pollers: taken off there (see DatagramReaders).
    std::vector<std::future<void>> closed;
    for (auto& w : workers_) {
      Worker* worker = w.get();
      if (worker->loop.ctx->stopped()) {
        worker->links.clear();
      } else {
        auto done = std::make_shared<std::promise<void>>();
        closed.push_back(done->get_future());
        boost::asio::post(*worker->loop.ctx, [worker, done] {
          worker->links.clear();
          done->set_value();
        });
      }
    }
    for (auto& f : closed) f.wait();
  }

  void start() override {
    bool names = false;
    for (auto& u : upstreams_) {
      if (u->endpoint.is_ip_literal()) {
        auto address = net::to_sockaddr(u->endpoint);
        if (!address) throw std::runtime_error("listener " + name_ + ": upstream " + u->label + ": " + address.error());
        set_address(*u, *address);
      } else {
        names = true;
      }
    }
    if (names && !resolver_) throw std::runtime_error("listener " + name_ + ": upstream names need a resolver");
    if (preserve_source_) {
      bool v4 = names, v6 = names;
      for (auto& u : upstreams_) {
        if (u->endpoint.is_ip_literal()) (u->endpoint.is_ipv6() ? v6 : v4) = true;
      }
      for (auto& w : workers_) {
        if (v4) w->raw4 = raw_socket(AF_INET, name_);
        if (v6) w->raw6 = raw_socket(AF_INET6, name_);
      }
    }
    readers_.start();
    if (names) resolve_names();
    spdlog::info("udp {}: mirroring {} socket(s) to {} upstream(s){}, each socket read by {} worker(s)", name_,
                 socket_count_, upstreams_.size(), preserve_source_ ? " with the sender's address" : "",
                 readers_.readers_per_socket());
  }

  void stop(bool sweep, std::function<void()> stopped) override {
    resolve_timer_.cancel();
    readers_.stop(sweep, std::move(stopped));
  }

 private:
  static void set_address(Upstream& u, const net::SockAddr& address) {
    std::lock_guard lock(u.mutex);
    if (u.version.load(std::memory_order_relaxed) != 0 && u.address.len == address.len &&
        std::memcmp(&u.address.storage, &address.storage, address.len) == 0) {
      return;
    }
    u.address = address;
    u.version.fetch_add(1, std::memory_order_release);
  }

  // On the control loop: every named collector now, and again every kResolveInterval.
  void resolve_names() {
    for (auto& u : upstreams_) {
      if (u->endpoint.is_ip_literal()) continue;
      Upstream* upstream = u.get();
      resolver_->resolve(upstream->endpoint.host, upstream->endpoint.port, control_.get_executor(),
                         [this, upstream, alive = alive_](Result<upstream::Addresses> answer) {
                           if (!*alive) return;
                           if (!answer || answer->empty()) {
                             // The last answer stays in use; without one, copies are lost and counted.
                             spdlog::warn("udp {}: upstream {}: {}", name_, upstream->label,
                                          answer ? std::string("no address") : answer.error());
                             return;
                           }
                           set_address(*upstream, answer->front());
                         });
    }
    resolve_timer_.expires_after(kResolveInterval);
    resolve_timer_.async_wait([this](const boost::system::error_code& ec) {
      if (!ec) resolve_names();
    });
  }

  void fan_out(ReceivedBatch& batch) {
    Worker& w = *workers_[batch.worker];
    if (w.links.empty()) return;  // being destroyed (see ~MirrorServer)
    for (std::size_t u = 0; u < upstreams_.size(); ++u) {
      Upstream& up = *upstreams_[u];
      // Which of the batch this collector takes: with sample N, those whose place in
      // the collector's own count of datagrams is a multiple of N, so 1 in N exactly.
      std::array<unsigned, kBatch> chosen;
      unsigned count = 0;
      if (up.sample == 1) {
        for (unsigned k = 0; k < batch.count; ++k) chosen[count++] = batch.index[k];
      } else {
        const std::uint64_t first = up.offered.fetch_add(batch.count, std::memory_order_relaxed);
        for (unsigned k = 0; k < batch.count; ++k) {
          if ((first + k) % up.sample == 0) chosen[count++] = batch.index[k];
        }
        up.counters.add(up.counters.sampled_out, batch.count - count);
      }
      if (count == 0) continue;
      if (preserve_source_) {
        send_raw(w, up, batch, chosen, count);
      } else {
        send_connected(w, *w.links[u], up, batch, chosen, count);
      }
    }
  }

  void send_connected(Worker& w, Link& link, Upstream& up, const ReceivedBatch& batch,
                      const std::array<unsigned, kBatch>& chosen, unsigned count) {
    const int fd = link.current();
    if (fd < 0) {
      up.counters.add(up.counters.mirror_errors, count);
      return;
    }
    for (unsigned k = 0; k < count; ++k) {
      const unsigned i = chosen[k];
      w.iov[k][0] = {batch.payload(i), batch.len(i)};
      msghdr& h = w.msgs[k].msg_hdr;
      h = msghdr{};
      h.msg_iov = w.iov[k].data();
      h.msg_iovlen = 1;
    }
    deliver(fd, w, up, count);
  }

  void send_raw(Worker& w, Upstream& up, const ReceivedBatch& batch, const std::array<unsigned, kBatch>& chosen,
                unsigned count) {
    if (up.version.load(std::memory_order_acquire) == 0) {
      up.counters.add(up.counters.mirror_errors, count);
      return;
    }
    net::SockAddr to;
    {
      std::lock_guard lock(up.mutex);
      to = up.address;
    }
    const int fd = to.family() == AF_INET ? w.raw4.get() : w.raw6.get();
    unsigned n = 0;
    for (unsigned k = 0; k < count; ++k) {
      const unsigned i = chosen[k];
      sockaddr_storage from{};
      if (fd < 0 || !source_as(batch.names[i], to.family(), from)) {
        up.counters.add(up.counters.mirror_errors);  // an IPv6 exporter to an IPv4 collector
        continue;
      }
      const std::size_t header = build_headers(w.headers[n].data(), from, to.storage, batch.payload(i), batch.len(i));
      w.iov[n][0] = {w.headers[n].data(), header};
      w.iov[n][1] = {batch.payload(i), batch.len(i)};
      // A raw socket routes by the address alone; IPv6 refuses a port other than 0.
      w.to[n] = to.storage;
      if (to.family() == AF_INET) {
        reinterpret_cast<sockaddr_in&>(w.to[n]).sin_port = 0;
      } else {
        reinterpret_cast<sockaddr_in6&>(w.to[n]).sin6_port = 0;
      }
      msghdr& h = w.msgs[n].msg_hdr;
      h = msghdr{};
      h.msg_name = &w.to[n];
      h.msg_namelen = to.len;
      h.msg_iov = w.iov[n].data();
      h.msg_iovlen = 2;
      ++n;
    }
    if (n != 0) deliver(fd, w, up, n);
  }

  // sendmmsg without waiting: a full buffer drops the rest (upstream_busy), an error
  // the kernel reports for one datagram (a collector's ICMP unreachable) loses that one.
  void deliver(int fd, Worker& w, Upstream& up, unsigned n) {
    unsigned done = 0;
    while (done < n) {
      const int sent = ::sendmmsg(fd, w.msgs.data() + done, n - done, MSG_DONTWAIT);
      if (sent > 0) {
        std::uint64_t bytes = 0;
        for (unsigned k = done; k < done + static_cast<unsigned>(sent); ++k) {
          const msghdr& h = w.msgs[k].msg_hdr;
          bytes += h.msg_iov[h.msg_iovlen - 1].iov_len;
        }
        up.counters.add(up.counters.datagrams_sent, static_cast<std::uint64_t>(sent));
        up.counters.add(up.counters.bytes_sent, bytes);
        done += static_cast<unsigned>(sent);
        continue;
      }
      const int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS) {
        up.counters.drop(obs::Drop::UpstreamBusy, n - done);
        return;
      }
      if (err == EBADF || err == ENOTSOCK || err == EFAULT) fatal(name_, "sendmmsg", err);
      up.counters.add(up.counters.mirror_errors);
      warn_gate_.warn(up.warn_name, "sendmmsg", err);
      ++done;
    }
  }

  const std::string name_;
  const bool preserve_source_;
  upstream::Resolver* resolver_;
  boost::asio::io_context& control_;
  boost::asio::steady_timer resolve_timer_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // for resolver answers
  const std::size_t socket_count_;
  std::vector<std::unique_ptr<Upstream>> upstreams_;
  std::vector<std::unique_ptr<Worker>> workers_;
  WarnGate warn_gate_;
  DatagramReaders readers_;  // last: destroyed first, so no batch runs on what went
};

}  // namespace

std::unique_ptr<DatagramServer> make_mirror_server(const config::Listener& listener, std::vector<int> sockets,
                                                   obs::Registry& metrics, std::vector<net::LoopRef> loops,
                                                   upstream::Resolver* resolver, boost::asio::io_context& control) {
  return std::make_unique<MirrorServer>(listener, std::move(sockets), metrics, std::move(loops), resolver, control);
}

}  // namespace echorelay::udp
