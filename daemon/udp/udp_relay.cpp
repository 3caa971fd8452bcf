// UDP relay on the daemon's workers. DatagramReaders reads the listener's sockets on
// the workers' Pollers (source policy, truncation, kernel drops, counters). Every client
// address has one owner among the loops (a seeded hash of the address), which keeps
// the client's session: its connected upstream socket on that loop's Poller, its place
// in the loop's LRU list, expiry and eviction, so finding a session takes no lock. A
// batch read on one loop serves its own clients at once and copies the others into
// their owners' bounded inboxes. A multicast listener fans out on the loop that read
// the batch. The listener's sockets are read and replied from through duplicates of
// our own, closed after the last session; upstream sockets are owned.
#include "udp/udp_relay.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <future>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <system_error>
#include <unordered_map>

#include "net/fd.hpp"
#include "net/multicast.hpp"
#include "net/own_listeners.hpp"
#include "net/socket_options.hpp"
#include "obs/log.hpp"
#include "udp/datagram_io.hpp"
#include "udp/datagram_readers.hpp"
#include "upstream/proxy_protocol.hpp"
#include "upstream/resolver.hpp"
#include "upstream/upstream_pool.hpp"

namespace echorelay::udp {

namespace {

using Upstream = upstream::UpstreamPool::Upstream;
using namespace std::chrono_literals;

// max_sessions = 0: each session holds an fd, so by default a UDP relay gets at most half
// of RLIMIT_NOFILE; the oldest idle session makes room for a new one beyond that.
std::uint64_t default_max_sessions() {
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) != 0 || nofile.rlim_cur == RLIM_INFINITY) return 0;
  return std::max<std::uint64_t>(1, static_cast<std::uint64_t>(nofile.rlim_cur) / 2);
}

// Datagrams held per session while its upstream's name is being resolved.
constexpr std::size_t kMaxHeld = 8;
// Names are asked for again this often; the Resolver caches by TTL, so this only
// bounds how stale our copy of an answer gets.
constexpr auto kRefresh = upstream::kSystemResolverCacheTtl;
// A name that has never resolved is asked again after this; meanwhile sessions that
// need it fail fast instead of waiting.
constexpr auto kResolveRetry = 1s;
// Reply batches read per readiness event before other sessions get a turn.
constexpr unsigned kReplyBatchesPerEvent = 4;
// Inbox batches per turn before the loop's other handlers get theirs.
constexpr unsigned kInboxBatchesPerTurn = 8;

std::int64_t to_ns(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

// A client address as fixed-size words: family, port and scope, then the address.
struct ClientKey {
  std::array<std::uint64_t, 3> words{};
  bool operator==(const ClientKey&) const = default;
};

ClientKey client_key(const sockaddr_storage& addr) {
  ClientKey key;
  if (addr.ss_family == AF_INET) {
    const auto& in4 = reinterpret_cast<const sockaddr_in&>(addr);
    key.words[0] = (std::uint64_t{AF_INET} << 48) | (std::uint64_t{in4.sin_port} << 32);
    std::uint32_t a = 0;
    std::memcpy(&a, &in4.sin_addr, 4);
    key.words[1] = a;
  } else if (addr.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(addr);
    key.words[0] = (std::uint64_t{AF_INET6} << 48) | (std::uint64_t{in6.sin6_port} << 32) | in6.sin6_scope_id;
    std::memcpy(&key.words[1], &in6.sin6_addr, 16);
  }
  return key;
}

struct ClientKeyHash {
  std::uint64_t seed;
  std::size_t operator()(const ClientKey& k) const {
    // Seeded so that clients chosen by an attacker cannot aim at one worker or chain.
    std::uint64_t h = seed ^ (k.words[0] * 0x9e3779b97f4a7c15ULL);
    h ^= (h >> 31) ^ (k.words[1] * 0xbf58476d1ce4e5b9ULL);
    h ^= (h >> 29) ^ (k.words[2] * 0x94d049bb133111ebULL);
    h ^= h >> 32;
    return static_cast<std::size_t>(h * 0x2545f4914f6cdd1dULL);
  }
};

obs::UpstreamError classify(int err) {
  switch (err) {
    case ECONNREFUSED: return obs::UpstreamError::Refused;
    case ECONNRESET: return obs::UpstreamError::Reset;
    case EHOSTUNREACH:
    case ENETUNREACH:
    case EHOSTDOWN:
    case ENETDOWN: return obs::UpstreamError::Unreachable;
    default: return obs::UpstreamError::Other;
  }
}

// Errors a connected UDP socket reports for an ICMP message about an earlier datagram:
// the upstream (or the path to it) is at fault, not this datagram.
bool is_upstream_error(int err) {
  return err == ECONNREFUSED || err == EHOSTUNREACH || err == ENETUNREACH || err == EHOSTDOWN || err == ENETDOWN ||
         err == ECONNRESET;
}

// An upstream's address as one loop knows it: set once for an IP literal; for a name,
// changed only by what the first loop posts after the resolver's answers.
struct Address {
  std::optional<net::SockAddr> address;
  bool failed = false;  // no address, and none is coming: the latest answer failed
  bool operator==(const Address& o) const {
    if (failed != o.failed || address.has_value() != o.address.has_value()) return false;
    return !address || (address->len == o.address->len && std::memcmp(&address->storage, &o.address->storage,
                                                                      address->len) == 0);
  }
};

enum class Lookup { Ready, Pending, Failed };

// Where a listener socket is bound: the PROXY v2 header's destination when a datagram
// carries no PKTINFO.
struct Local {
  int fd = -1;
  sockaddr_storage addr{};
  socklen_t len = 0;
  std::uint16_t port = 0;
};

// The PROXY v2 header for a datagram from `client`: its destination is the address the
// client sent to (PKTINFO), else the listener's bound address.
std::string header_for(const sockaddr_storage& client, socklen_t client_len, const unsigned char* control,
                       socklen_t control_len, const Local& local) {
  sockaddr_storage dst{};
  socklen_t dst_len = 0;
  if (!destination_address(control, control_len, local.port, dst, dst_len)) {
    dst = local.addr;
    dst_len = local.len;
  }
  return upstream::proxy_v2_header(reinterpret_cast<const sockaddr*>(&client), client_len,
                                   reinterpret_cast<const sockaddr*>(&dst), dst_len, true);
}

// Duplicates of the listener's sockets, the relay's own: its sessions reply from them
// after the caller's copies may have closed (see udp_relay.hpp).
std::vector<net::Fd> duplicate(const std::vector<int>& sockets, const std::string& listener) {
  std::vector<net::Fd> own;
  for (int fd : sockets) {
    own.emplace_back(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
    if (!own.back()) throw std::system_error(errno, std::system_category(), "udp " + listener + ": dup");
  }
  return own;
}

std::vector<int> numbers(const std::vector<net::Fd>& fds) {
  std::vector<int> out;
  for (const auto& fd : fds) out.push_back(fd.get());
  return out;
}

class RelayServer final : public DatagramServer {
 public:
  struct Worker;

  // One client datagram as the session code sees it, wherever it was read.
  struct Datagram {
    const ClientKey& key;
    const sockaddr_storage& from;
    socklen_t from_len;
    int fd;  // the listener socket it arrived on
    const unsigned char* control;
    socklen_t control_len;
    const std::byte* data;
    std::uint32_t len;
  };

  // A datagram in its owner's inbox; its bytes are in the owner's slot buffers.
  struct Item {
    std::uint32_t len = 0;
    int fd = -1;
    socklen_t from_len = 0;
    socklen_t control_len = 0;
    ClientKey key;
    sockaddr_storage from{};
    alignas(cmsghdr) unsigned char control[kControlSize]{};
  };

  // Why a session ended, for its summary line and counters.
  enum class End { Expired, Evicted, Stopped };

  // One client address. Lives in its owner's LRU list (front = least recently active);
  // only that loop touches it. Its upstream socket, while open, is on that loop's Poller.
  //
  //   Idle --link()--> Open --ICMP error--> Idle (the next datagram links again)
  //     |                 ^
  //     +--name pending--> Resolving --answer--> Open (held datagrams sent), or on a
  //                                              failed name: the next upstream
  //   any --expiry / eviction / the server's destruction--> finish() (the one exit)
  struct Session final : net::PollHandler {
    enum class Link { Idle, Resolving, Open };
    Session(RelayServer& o, Worker& w) : owner(o), worker(w) {}

    void on_ready(std::uint32_t) override { owner.relay_replies(worker, *this); }
    void on_deadline() override {}
    // A Poller destroyed with the session still on it (before the server) unregisters
    // until it has no member left.
    void abandon() override {
      worker.loop.poller->remove(upstream.get(), *this);
      registered = false;
    }

    RelayServer& owner;
    Worker& worker;
    ClientKey key;
    std::uint64_t id = 0;
    sockaddr_storage client{};
    socklen_t client_len = 0;
    // Replies go out through the socket the client's latest datagram came in on, from
    // the address that datagram was sent to.
    int listener_fd = -1;
    socklen_t reply_control_len = 0;
    alignas(cmsghdr) unsigned char reply_control[kControlSize]{};
    std::string proxy_header;  // v2, sent before the first datagram on each upstream socket
    Link link = Link::Idle;
    net::Fd upstream;
    bool registered = false;  // upstream is on worker's Poller
    Upstream* upstream_ref = nullptr;
    Upstream* avoid = nullptr;      // the upstream that failed last; re-picks try others first
    Upstream* resolving = nullptr;  // Link::Resolving: whose name
    std::vector<std::string> held;  // Link::Resolving: datagrams waiting for the address
    bool header_due = false;
    bool answered = false;  // the current upstream has replied
    std::string upstream_name;
    Clock::time_point opened{};
    Clock::time_point last_active{};
    std::uint64_t bytes_up = 0;
    std::uint64_t bytes_down = 0;
    std::list<Session>::iterator self;
  };

  // Sends a loop's queued replies once the Poller's other ready handlers had their
  // turn (it is deferred, not added: it has no fd), so the replies of every session
  // ready in one batch leave with one sendmmsg.
  struct Flush final : net::PollHandler {
    Flush(RelayServer& o, Worker& w) : owner(o), worker(w) {}
    void on_ready(std::uint32_t) override {
      due = false;
      owner.flush_replies(worker);
    }
    void on_deadline() override {}
    void abandon() override {}

    RelayServer& owner;
    Worker& worker;
    bool due = false;  // deferred on the Poller
  };

  struct Worker {
    Worker(RelayServer& owner, net::LoopRef l, std::size_t i, std::uint64_t seed)
        : loop(l), index(i), table(16, ClientKeyHash{seed}), expiry(*l.ctx), flush(owner, *this) {}
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    const net::LoopRef loop;
    const std::size_t index;

    // The inbox: datagrams of this loop's clients read on other loops. Slots are free,
    // ready (a FIFO ring) or being served here. The mutex is this loop's alone: a loop
    // handing over takes it once per batch, never to look a session up.
    std::mutex mutex;
    std::vector<std::uint32_t> free;
    std::vector<std::uint32_t> ready;
    std::size_t head = 0;
    std::size_t count = 0;
    bool drain_posted = false;  // a drain_inbox() is on its way to this loop
    std::vector<Item> items;
    SlotBuffers buffers;

    std::atomic<std::int64_t> oldest_ns{INT64_MAX};  // last activity of its LRU front, for max_sessions

    // The loop's own from here on.
    bool closed = false;  // close_loop() ran: what other loops posted finds nothing to do
    std::list<Session> lru;
    std::unordered_map<ClientKey, std::list<Session>::iterator, ClientKeyHash> table;
    std::vector<ClientKey> resolving;
    std::vector<Address> book;  // one per upstream, in listener order
    Clock::time_point now{};
    boost::asio::steady_timer expiry;
    bool expiry_armed = false;
    Clock::time_point expiry_at{};
    std::array<std::uint32_t, kBatch> taken{};

    // Replies queued for one sendmmsg on out_fd, each with its own copy of the client's
    // address and reply control, so a session may end before they leave.
    SlotBuffers reply_buffers;
    std::array<mmsghdr, kBatch> msgs{};
    std::array<iovec, kBatch> iov{};
    std::array<sockaddr_storage, kBatch> reply_to{};
    alignas(cmsghdr) std::array<std::array<unsigned char, kControlSize>, kBatch> reply_control{};
    unsigned out_count = 0;
    int out_fd = -1;
    Flush flush;

    // Fan-out: one message per datagram and upstream, PROXY header first.
    std::array<mmsghdr, kBatch> fan{};
    std::array<std::array<iovec, 2>, kBatch> fan_iov{};
    std::array<std::string, kBatch> headers;
  };

  // A named upstream, resolved on the first loop (its home).
  struct Name {
    std::size_t index;  // into the books
    bool in_flight = false;
  };

  RelayServer(const config::Listener& listener, const std::vector<int>& sockets, obs::ListenerCounters& counters,
              std::vector<net::LoopRef> loops, upstream::Resolver& resolver)
      : name_(listener.name),
        max_datagram_(std::max<std::uint32_t>(listener.max_datagram, 1)),
        fanout_(listener.protocol == config::Protocol::Multicast),
        proxy_v2_(listener.proxy_protocol == config::ProxyProtocol::V2),
        session_timeout_(listener.session_timeout),
        max_sessions_(listener.max_sessions != 0 ? listener.max_sessions : default_max_sessions()),
        sockets_(duplicate(sockets, listener.name)),
        counters_(counters),
        pool_(listener.upstreams, listener.balance),
        resolver_(resolver),
        endpoints_(listener.upstreams),
        seed_(std::random_device{}()),
        refresh_(*loops.front().ctx),
        readers_(listener, numbers(sockets_), counters, loops, [this](ReceivedBatch& batch) { serve(batch); }) {
    if (listener.source_address) {
      auto sa = net::to_sockaddr(*listener.source_address);
      if (sa) source_address_ = *sa;
    }
    if (listener.proxy_protocol == config::ProxyProtocol::V1) {
      // v1 is a text line for TCP streams; it has no way to say "UDP".
      spdlog::warn("udp {}: proxy_protocol v1 has no datagram form; sending no header (use v2)", name_);
    }
    std::vector<Address> book(endpoints_.size());
    for (std::size_t i = 0; i < endpoints_.size(); ++i) {
      const net::Endpoint& ep = endpoints_[i];
      if (ep.is_ip_literal()) {
        auto sa = net::to_sockaddr(ep);
        if (sa) {
          book[i].address = *sa;
        } else {
          book[i].failed = true;
        }
      } else if (ep.kind == net::Endpoint::Kind::Inet) {
        names_.push_back({i});
      } else {
        book[i].failed = true;  // not a datagram address
      }
    }
    // With one loop every client is its own: nothing is handed over, so no inbox.
    const std::uint32_t inbox = loops.size() > 1 && !fanout_
                                    ? std::max<std::uint32_t>(std::max<std::uint32_t>(listener.queue, 1) /
                                                                  static_cast<std::uint32_t>(loops.size()),
                                                              1)
                                    : 0;
    for (std::size_t i = 0; i < loops.size(); ++i) {
      auto w = std::make_unique<Worker>(*this, loops[i], i, seed_);
      w->book = book;
      if (inbox != 0) {
        w->buffers = SlotBuffers(inbox, max_datagram_);
        w->items.resize(inbox);
        w->ready.resize(inbox);
        w->free.reserve(inbox);
        for (std::uint32_t s = 0; s < inbox; ++s) w->free.push_back(inbox - 1 - s);
      }
      if (!fanout_) w->reply_buffers = SlotBuffers(kBatch, max_datagram_);
      workers_.push_back(std::move(w));
    }
    if (fanout_) open_fanout_sockets(listener);
  }

  // The loops have stopped (App), or go on: then each closes its part on its own thread,
  // waited for. Reading has stopped first either way, so the inboxes are final.
  ~RelayServer() override {
    if (!started_) return;
    stop(false, {});
    // A loop that has stopped never runs its part of the stop; DatagramReaders'
    // destructor does it.
    if (loops_running()) reading_over_.wait();
    on_every_loop([this](Worker& w) { close_loop(w); });
    // What one loop posted to another before it closed (an eviction, an address) may
    // still wait in the other's queue: it finds that loop closed and returns, and must
    // have run before the state it points at goes.
    on_every_loop([](Worker&) {});
    spdlog::info("udp {}: stopped; sessions closed", name_);
  }

  void start() override {
    started_ = true;
    for (const net::Fd& socket : sockets_) {
      const int fd = socket.get();
      Local local;
      local.fd = fd;
      local.len = sizeof local.addr;
      if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local.addr), &local.len) != 0) {
        throw std::system_error(errno, std::system_category(), "udp " + name_ + ": getsockname");
      }
      local.port = source_port(local.addr);
      locals_.push_back(local);
    }
    readers_.start();
    // Every name is asked for now, so the first datagrams rarely wait for an answer.
    if (!names_.empty()) resolve_names();
    if (fanout_) {
      spdlog::info("udp {}: relaying {} socket(s) to all {} upstream(s) (fan-out), each socket read by {} worker(s)",
                   name_, sockets_.size(), pool_.size(), readers_.readers_per_socket());
    } else {
      spdlog::info("udp {}: relaying {} socket(s) to {} upstream(s), sessions on {} worker(s), each socket read by {} "
                   "of them, session_timeout {}ms, max_sessions {}",
                   name_, sockets_.size(), pool_.size(), workers_.size(), readers_.readers_per_socket(),
                   session_timeout_.count(), max_sessions_);
    }
  }

  // Only the reading stops: sessions keep their upstream sockets and relay replies from
  // our duplicates of the listener's sockets until the destructor. A sweep forwards
  // what the sockets hold as any datagram is forwarded (a new client gets a session;
  // another worker's client goes to its inbox, served on that loop or at the latest by
  // close_loop()), so what clients sent before a SIGTERM still reaches the upstreams, as
  // the echo answers it; their replies come back while the process lives, not waited for.
  void stop(bool sweep, std::function<void()> stopped) override {
    readers_.stop(sweep, [over = reading_stopped_, stopped = std::move(stopped)] {
      if (stopped) stopped();
      over->set_value();
    });
  }

 private:
  // --- lifecycle -----------------------------------------------------------------

  bool loops_running() const {
    return std::none_of(workers_.begin(), workers_.end(), [](const auto& w) { return w->loop.ctx->stopped(); });
  }

  // Runs `fn` for every loop on that loop's thread and waits; directly for a loop that
  // has stopped (no thread polls it any more).
  void on_every_loop(const std::function<void(Worker&)>& fn) {
    std::vector<std::future<void>> done;
    for (auto& w : workers_) {
      Worker* worker = w.get();
      if (worker->loop.ctx->stopped()) {
        fn(*worker);
        continue;
      }
      auto ran = std::make_shared<std::promise<void>>();
      done.push_back(ran->get_future());
      boost::asio::post(*worker->loop.ctx, [&fn, worker, ran] {
        fn(*worker);
        ran->set_value();
      });
    }
    for (auto& f : done) f.wait();
  }

  // After the reading stopped: the inbox is final. What it holds is relayed, then every
  // session ends.
  void close_loop(Worker& w) {
    w.now = Clock::now();
    while (serve_inbox_batch(w)) {
    }
    w.closed = true;
    w.expiry.cancel();
    w.loop.poller->forget(w.flush);
    flush_replies(w);
    while (!w.lru.empty()) finish(w, w.lru.front(), End::Stopped);
    if (&w == workers_.front().get()) {
      *alive_ = false;
      refresh_.cancel();
    }
  }

  // --- reading -------------------------------------------------------------------

  void serve(ReceivedBatch& b) {
    Worker& w = *workers_[b.worker];
    w.now = w.loop.poller->now();
    if (fanout_) {
      fan_out(w, b);
      return;
    }
    std::array<ClientKey, kBatch> keys;
    std::array<std::size_t, kBatch> owner;
    unsigned mine = 0;
    for (unsigned k = 0; k < b.count; ++k) {
      keys[k] = client_key(b.names[b.index[k]]);
      owner[k] = shard(keys[k]);
      if (owner[k] == w.index) ++mine;
    }
    // The others first: their owners get on with them while this loop serves its own.
    if (mine != b.count) hand_over(w, b, keys, owner);
    for (unsigned k = 0; k < b.count && mine != 0; ++k) {
      if (owner[k] != w.index) continue;
      const unsigned i = b.index[k];
      on_client_datagram(w, {keys[k], b.names[i], b.msgs[i].msg_hdr.msg_namelen, b.fd, b.control[i].data(),
                             b.control_len(i), b.payload(i), b.len(i)});
    }
  }

  std::size_t shard(const ClientKey& key) const { return (ClientKeyHash{seed_}(key) >> 17) % workers_.size(); }

  // Copies each datagram of another loop's client into that loop's inbox: one lock and
  // at most one post per owner and batch. A full inbox drops (queue_full).
  //
  // The owner is woken with asio::post rather than an eventfd of our own on its Poller:
  // the io_context already has a wake-up (its own eventfd), so a post costs the same
  // write and read, needs no handler registered and unregistered with the relay's
  // lifecycle, and is posted only when the inbox had no drain on its way, so a busy
  // owner takes whole runs of batches per wake-up.
  void hand_over(Worker& w, const ReceivedBatch& b, const std::array<ClientKey, kBatch>& keys,
                 const std::array<std::size_t, kBatch>& owner) {
    std::array<unsigned, kBatch> order;
    unsigned n = 0;
    for (unsigned k = 0; k < b.count; ++k) {
      if (owner[k] != w.index) order[n++] = k;
    }
    std::sort(order.begin(), order.begin() + n, [&](unsigned x, unsigned y) { return owner[x] < owner[y]; });
    for (unsigned first = 0; first < n;) {
      Worker& target = *workers_[owner[order[first]]];
      unsigned last = first;
      while (last < n && owner[order[last]] == target.index) ++last;
      std::uint64_t full = 0;
      bool wake = false;
      {
        std::lock_guard lock(target.mutex);
        for (unsigned g = first; g < last; ++g) {
          if (target.free.empty()) {
            ++full;
            continue;
          }
          const unsigned k = order[g];
          const unsigned i = b.index[k];
          const std::uint32_t slot = target.free.back();
          target.free.pop_back();
          Item& item = target.items[slot];
          item.len = b.len(i);
          item.fd = b.fd;
          item.key = keys[k];
          item.from = b.names[i];
          item.from_len = b.msgs[i].msg_hdr.msg_namelen;
          item.control_len = b.control_len(i);
          std::memcpy(item.control, b.control[i].data(), item.control_len);
          std::memcpy(target.buffers.slot(slot), b.payload(i), item.len);
          target.ready[(target.head + target.count++) % target.ready.size()] = slot;
        }
        if (target.count != 0 && !target.drain_posted) {
          target.drain_posted = true;
          wake = true;
        }
      }
      if (full != 0) counters_.drop(obs::Drop::QueueFull, full);
      if (wake) boost::asio::post(*target.loop.ctx, [this, t = &target] { drain_inbox(*t); });
      first = last;
    }
  }

  // Posted to the owner; at most kInboxBatchesPerTurn batches, then it comes back
  // after the loop's other handlers.
  void drain_inbox(Worker& w) {
    if (w.closed) return;
    w.now = Clock::now();
    for (unsigned turn = 0; turn < kInboxBatchesPerTurn; ++turn) {
      if (!serve_inbox_batch(w)) return;
    }
    boost::asio::post(*w.loop.ctx, [this, t = &w] { drain_inbox(*t); });
  }

  // Serves up to kBatch datagrams of the inbox. False when it was empty, and then no
  // drain is on its way any more.
  bool serve_inbox_batch(Worker& w) {
    unsigned taken = 0;
    {
      std::lock_guard lock(w.mutex);
      while (taken < kBatch && w.count > 0) {
        w.taken[taken++] = w.ready[w.head];
        w.head = (w.head + 1) % w.ready.size();
        --w.count;
      }
      if (taken == 0) {
        w.drain_posted = false;
        return false;
      }
    }
    for (unsigned t = 0; t < taken; ++t) {
      const Item& item = w.items[w.taken[t]];
      on_client_datagram(w, {item.key, item.from, item.from_len, item.fd, item.control, item.control_len,
                             w.buffers.slot(w.taken[t]), item.len});
    }
    std::lock_guard lock(w.mutex);
    for (unsigned t = 0; t < taken; ++t) w.free.push_back(w.taken[t]);
    return true;
  }

  const Local& local_of(int fd) const {
    for (const Local& l : locals_) {
      if (l.fd == fd) return l;
    }
    return locals_.front();
  }

  // --- fan-out -------------------------------------------------------------------

  // Multicast relay: every datagram of the batch to every upstream, replies ignored.
  void fan_out(Worker& w, const ReceivedBatch& b) {
    if (proxy_v2_) {
      const Local& local = local_of(b.fd);
      for (unsigned k = 0; k < b.count; ++k) {
        const unsigned i = b.index[k];
        // No sessions here, so each datagram carries its own header: the upstream has
        // no other way to learn the sender.
        w.headers[k] = header_for(b.names[i], b.msgs[i].msg_hdr.msg_namelen, b.control[i].data(), b.control_len(i),
                                  local);
      }
    }
    for (Upstream* u : pool_.plan()) {
      net::SockAddr to;
      if (lookup(w, *u, to) != Lookup::Ready) {
        counters_.drop(obs::Drop::SendFailed, b.count);
        continue;
      }
      const int fd = to.family() == AF_INET6 ? fan6_.get() : fan4_.get();
      if (fd < 0) {
        counters_.drop(obs::Drop::SendFailed, b.count);
        continue;
      }
      for (unsigned k = 0; k < b.count; ++k) {
        const unsigned i = b.index[k];
        auto& iov = w.fan_iov[k];
        unsigned parts = 0;
        if (proxy_v2_) iov[parts++] = {w.headers[k].data(), w.headers[k].size()};
        iov[parts++] = {b.payload(i), b.len(i)};
        msghdr& h = w.fan[k].msg_hdr;
        h = msghdr{};
        h.msg_name = to.get();
        h.msg_namelen = to.len;
        h.msg_iov = iov.data();
        h.msg_iovlen = parts;
      }
      const Sent sent = send_datagrams(fd, w.fan.data(), b.count, name_, counters_, warn_gate_);
      counters_.add(counters_.requests, sent.datagrams);
      counters_.add(counters_.upstream_bytes_sent, sent.bytes);
    }
  }

  // Unconnected senders, one per family, shared by the loops (each sendmmsg is whole).
  void open_fanout_sockets(const config::Listener& listener) {
    for (int family : {AF_INET, AF_INET6}) {
      net::Fd fd(::socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      if (!fd) {
        if (family == AF_INET6 && errno == EAFNOSUPPORT) continue;  // no IPv6 in this kernel
        throw std::system_error(errno, std::system_category(), "socket udp");
      }
      // Replies are ignored: the smallest receive buffer keeps them from costing memory.
      const int small = 1;
      (void)::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
      if (source_address_ && source_address_->family() == family) {
        if (::bind(fd.get(), source_address_->get(), source_address_->len) != 0) {
          throw std::system_error(errno, std::system_category(),
                                  "bind udp " + net::format_sockaddr(source_address_->get(), source_address_->len));
        }
      }
      // An upstream may itself be a group: the listener's ttl, loopback and interface
      // are how it is sent there.
      if (auto r = net::set_multicast_sending(fd.get(), family, listener); !r) {
        throw std::system_error(EINVAL, std::system_category(), r.error());
      }
      (family == AF_INET ? fan4_ : fan6_) = std::move(fd);
    }
  }

  // --- upstream addresses ---------------------------------------------------------

  Lookup lookup(const Worker& w, const Upstream& u, net::SockAddr& out) const {
    for (std::size_t i = 0; i < endpoints_.size(); ++i) {
      if (endpoints_[i] != u.endpoint) continue;
      const Address& a = w.book[i];
      if (a.address) {
        out = *a.address;
        return Lookup::Ready;
      }
      return a.failed ? Lookup::Failed : Lookup::Pending;
    }
    return Lookup::Failed;
  }

  // On the first loop (or before the loops run): every name not already being asked
  // for, and again after kRefresh. An answer keeps being served until the next one
  // changes it, so no datagram waits for a refresh and a changed record is followed
  // without a restart.
  void resolve_names() {
    for (Name& n : names_) {
      if (n.in_flight) continue;
      n.in_flight = true;
      const net::Endpoint& ep = endpoints_[n.index];
      resolver_.resolve(ep.host, ep.port, workers_.front()->loop.ctx->get_executor(),
                        [this, alive = alive_, index = n.index](Result<upstream::Addresses> answer) {
                          if (*alive) answered(index, std::move(answer));
                        });
    }
    arm_refresh(kRefresh);
  }

  void arm_refresh(Clock::duration after) {
    const auto due = Clock::now() + after;
    if (refresh_armed_ && refresh_due_ <= due) return;
    refresh_armed_ = true;
    refresh_due_ = due;
    refresh_.expires_at(due);
    refresh_.async_wait([this, alive = alive_](const boost::system::error_code& ec) {
      if (ec || !*alive) return;
      refresh_armed_ = false;
      resolve_names();
    });
  }

  // On the first loop. Every loop gets the changed address by a post.
  void answered(std::size_t index, Result<upstream::Addresses> answer) {
    for (Name& n : names_) {
      if (n.index == index) n.in_flight = false;
    }
    Worker& home = *workers_.front();
    Address next = home.book[index];
    if (answer && !answer->empty()) {
      next.address = answer->front();
      next.failed = false;
    } else if (!next.address) {
      // A refresh that fails keeps serving the last good answer until the next one.
      spdlog::warn("udp {}: upstream {}: {}", name_, endpoints_[index].to_string(),
                   answer ? std::string("no addresses") : answer.error());
      next.failed = true;
      arm_refresh(kResolveRetry);
    }
    if (next == home.book[index]) return;
    for (auto& w : workers_) {
      if (w.get() == &home) continue;
      boost::asio::post(*w->loop.ctx, [this, worker = w.get(), index, next] {
        if (worker->closed) return;
        worker->now = Clock::now();
        learn(*worker, index, next);
      });
    }
    home.now = Clock::now();
    learn(home, index, next);
  }

  void learn(Worker& w, std::size_t index, const Address& address) {
    w.book[index] = address;
    retry_resolving(w);
  }

  // Sessions waiting for a name: an answer came (for some name), so link again.
  void retry_resolving(Worker& w) {
    std::vector<ClientKey> keys;
    keys.swap(w.resolving);
    for (const ClientKey& key : keys) {
      auto it = w.table.find(key);
      if (it == w.table.end() || it->second->link != Session::Link::Resolving) continue;
      Session& s = *it->second;
      net::SockAddr addr;
      const auto state = lookup(w, *s.resolving, addr);
      if (state == Lookup::Pending) {
        w.resolving.push_back(key);
        continue;
      }
      std::vector<std::string> held;
      held.swap(s.held);
      s.link = Session::Link::Idle;
      if (state == Lookup::Failed) {
        counters_.upstream_error(obs::UpstreamError::Resolve);
        pool_.failed(*s.resolving);
        s.avoid = s.resolving;
      }
      s.resolving = nullptr;
      for (const auto& d : held) {
        forward(w, s, reinterpret_cast<const std::byte*>(d.data()), static_cast<std::uint32_t>(d.size()));
      }
    }
  }

  // --- sessions --------------------------------------------------------------------

  void on_client_datagram(Worker& w, const Datagram& d) {
    Session* s = nullptr;
    if (auto it = w.table.find(d.key); it != w.table.end()) {
      s = &*it->second;
    } else {
      s = &open_session(w, d);
    }
    s->listener_fd = d.fd;
    s->reply_control_len = reply_control(d.control, d.control_len, s->reply_control);
    touch(w, *s);
    forward(w, *s, d.data, d.len);
  }

  Session& open_session(Worker& w, const Datagram& d) {
    make_room(w);
    Session& s = w.lru.emplace_back(*this, w);
    s.self = std::prev(w.lru.end());
    s.key = d.key;
    s.id = next_id_.fetch_add(1, std::memory_order_relaxed);
    s.client = d.from;
    s.client_len = d.from_len;
    s.opened = w.now;
    s.last_active = w.now;
    if (proxy_v2_) s.proxy_header = header_for(d.from, d.from_len, d.control, d.control_len, local_of(d.fd));
    w.table.emplace(s.key, s.self);
    sessions_.fetch_add(1, std::memory_order_acq_rel);
    counters_.udp_sessions_active.fetch_add(1, std::memory_order_relaxed);
    publish_oldest(w);
    arm_expiry(w);
    // The address text is made only when it is logged: a new session is on the data path.
    if (spdlog::should_log(spdlog::level::debug)) {
      spdlog::debug("[c{} {}] session from {}", s.id, name_,
                    net::format_sockaddr(reinterpret_cast<const sockaddr*>(&s.client), s.client_len));
    }
    return s;
  }

  // max_sessions counts the whole listener, and the least recently active session may
  // live on another loop: that loop is asked (by a post) to close its oldest (the new
  // session proceeds, so the count can exceed the limit by a few for one turn). A
  // session asked to close leaves sessions_ at once, so a second new session while the
  // first request is on its way asks for one more eviction, not for none or two.
  // `adding`: a session is about to open (room for it is needed), else an eviction
  // that found its loop empty is passed on while the listener is still over.
  void make_room(Worker& w, bool adding = true) {
    if (max_sessions_ == 0) return;
    if (sessions_.load(std::memory_order_acquire) + (adding ? 1 : 0) <= max_sessions_) return;
    Worker* victim = nullptr;
    std::int64_t oldest = INT64_MAX;
    for (auto& other : workers_) {
      const auto t = other->oldest_ns.load(std::memory_order_relaxed);
      if (t < oldest || (t == oldest && other.get() == &w)) {
        oldest = t;
        victim = other.get();
      }
    }
    if (victim == &w || victim == nullptr) {
      if (!w.lru.empty()) finish(w, w.lru.front(), End::Evicted);
      return;
    }
    sessions_.fetch_sub(1, std::memory_order_acq_rel);
    boost::asio::post(*victim->loop.ctx, [this, victim] {
      if (victim->closed) return;
      victim->now = Clock::now();
      if (!victim->lru.empty()) {
        finish(*victim, victim->lru.front(), End::Evicted, /*left_count=*/true);
      } else {
        // Its sessions went meanwhile (expired, evicted): the request is void, and the
        // excess, if any is left, is another loop's to close.
        sessions_.fetch_add(1, std::memory_order_acq_rel);
        make_room(*victim, false);
      }
    });
  }

  void touch(Worker& w, Session& s) {
    s.last_active = w.now;
    w.lru.splice(w.lru.end(), w.lru, s.self);
    publish_oldest(w);
  }

  void publish_oldest(Worker& w) {
    w.oldest_ns.store(w.lru.empty() ? INT64_MAX : to_ns(w.lru.front().last_active), std::memory_order_relaxed);
  }

  // One timer per loop, due when its least recently active session would expire.
  // Activity only moves sessions back in the list, so the front's time never gets
  // earlier: a timer that fires for a session that was touched meanwhile finds nothing
  // due and waits for the new front.
  void arm_expiry(Worker& w) {
    if (session_timeout_.count() <= 0 || w.lru.empty()) return;
    const auto due = w.lru.front().last_active + session_timeout_;
    if (w.expiry_armed && w.expiry_at <= due) return;
    w.expiry_armed = true;
    w.expiry_at = due;
    w.expiry.expires_at(due);
    w.expiry.async_wait([this, worker = &w](const boost::system::error_code& ec) {
      if (ec || worker->closed) return;
      worker->expiry_armed = false;
      worker->now = Clock::now();
      while (!worker->lru.empty() && worker->now - worker->lru.front().last_active >= session_timeout_) {
        finish(*worker, worker->lru.front(), End::Expired);
      }
      arm_expiry(*worker);
    });
  }

  // The session's one exit: closes its upstream socket, counts, logs the summary.
  // `left_count`: the session already left sessions_ when its eviction was asked for.
  void finish(Worker& w, Session& s, End end, bool left_count = false) {
    const std::uint64_t dropped_held = s.held.size();
    if (dropped_held != 0) counters_.drop(obs::Drop::SendFailed, dropped_held);
    close_upstream(w, s);
    const char* reason = "stopped";
    if (end == End::Expired) {
      reason = "expired";
      counters_.add(counters_.udp_sessions_expired);
    } else if (end == End::Evicted) {
      reason = "evicted";
      counters_.add(counters_.udp_sessions_evicted);
    }
    if (spdlog::should_log(spdlog::level::debug)) {
      const std::string peer = net::format_sockaddr(reinterpret_cast<const sockaddr*>(&s.client), s.client_len);
      obs::log_session_end({.id = s.id,
                            .listener = name_,
                            .kind = "udp relay",
                            .peer = peer,
                            .upstream = s.upstream_name.empty() ? std::string_view("-") : std::string_view(s.upstream_name),
                            .bytes_in = s.bytes_up,
                            .bytes_out = s.bytes_down,
                            .duration = std::chrono::duration_cast<std::chrono::milliseconds>(w.now - s.opened),
                            .reason = reason});
    }
    counters_.udp_sessions_active.fetch_sub(1, std::memory_order_relaxed);
    if (!left_count) sessions_.fetch_sub(1, std::memory_order_acq_rel);
    w.table.erase(s.key);
    w.lru.erase(s.self);
    publish_oldest(w);
  }

  void close_upstream(Worker& w, Session& s) {
    if (s.upstream) {
      if (s.registered) w.loop.poller->remove(s.upstream.get(), s);
      s.registered = false;
      s.upstream.reset();
      pool_.released(*s.upstream_ref);
    }
    s.upstream_ref = nullptr;
    s.resolving = nullptr;
    s.held.clear();
    s.link = Session::Link::Idle;
  }

  // An ICMP error came back for the session's upstream: it is marked failed for the
  // pool's passive health, and the session's next datagram picks again, avoiding it.
  void upstream_failed(Worker& w, Session& s, int err) {
    counters_.upstream_error(classify(err));
    Upstream* u = s.upstream_ref;
    spdlog::debug("[c{} {}] upstream {}: {}", s.id, name_, s.upstream_name, net::errno_text(err));
    pool_.failed(*u);
    close_upstream(w, s);
    s.avoid = u;
  }

  // Sends one client datagram to the session's upstream, linking one first if needed.
  void forward(Worker& w, Session& s, const std::byte* data, std::uint32_t len) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (s.link == Session::Link::Idle) link(w, s);
      if (s.link == Session::Link::Resolving) {
        if (s.held.size() < kMaxHeld) {
          s.held.emplace_back(reinterpret_cast<const char*>(data), len);
        } else {
          counters_.drop(obs::Drop::SendFailed);
        }
        return;
      }
      if (s.link != Session::Link::Open) {
        counters_.drop(obs::Drop::SendFailed);
        return;
      }
      const int err = send_upstream(s, data, len);
      if (err == 0) return;
      if (is_upstream_error(err)) {
        // The error is about an earlier datagram; this one was not sent, so it gets
        // one more try on the upstream picked next.
        upstream_failed(w, s, err);
        continue;
      }
      counters_.drop(obs::Drop::SendFailed);
      if (!is_again(err) && err != ENOBUFS) warn("send to upstream", err);
      return;
    }
    counters_.drop(obs::Drop::SendFailed);
  }

  // 0 when sent, else the errno. Never waits: a full upstream buffer drops the datagram
  // rather than stalling every other session of this loop.
  int send_upstream(Session& s, const std::byte* data, std::uint32_t len) {
    iovec iov[2];
    int parts = 0;
    if (s.header_due) iov[parts++] = {s.proxy_header.data(), s.proxy_header.size()};
    iov[parts++] = {const_cast<std::byte*>(data), len};
    msghdr h{};
    h.msg_iov = iov;
    h.msg_iovlen = static_cast<std::size_t>(parts);
    for (;;) {
      const ssize_t n = ::sendmsg(s.upstream.get(), &h, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n >= 0) {
        s.header_due = false;
        s.bytes_up += len;
        counters_.add(counters_.requests);
        counters_.add(counters_.upstream_bytes_sent, static_cast<std::uint64_t>(n));
        return 0;
      }
      const int err = errno;
      if (err == EINTR) continue;
      if (err == EBADF || err == ENOTSOCK || err == EFAULT) fatal(name_, "sendmsg", err);
      return err;
    }
  }

  // Picks an upstream for an Idle session and opens a connected socket to it; leaves
  // the session Open, Resolving (its name has no answer yet) or Idle (none usable).
  void link(Worker& w, Session& s) {
    auto plan = pool_.plan();
    if (s.avoid != nullptr && plan.size() > 1) {
      auto it = std::find(plan.begin(), plan.end(), s.avoid);
      if (it != plan.end()) std::rotate(it, it + 1, plan.end());
    }
    for (Upstream* u : plan) {
      net::SockAddr addr;
      switch (lookup(w, *u, addr)) {
        case Lookup::Pending:
          s.link = Session::Link::Resolving;
          s.resolving = u;
          w.resolving.push_back(s.key);
          return;
        case Lookup::Failed:
          counters_.upstream_error(obs::UpstreamError::Resolve);
          pool_.failed(*u);
          continue;
        case Lookup::Ready:
          break;
      }
      if (open_upstream(w, s, *u, addr)) return;
    }
  }

  bool open_upstream(Worker& w, Session& s, Upstream& u, const net::SockAddr& addr) {
    // One of our own relay listeners: each datagram would open a session on it, whose
    // upstream is the same listener again, until every fd is used.
    if (net::own::reaches_own_relay(addr.get(), addr.len, SOCK_DGRAM)) {
      counters_.refuse(obs::Refuse::SelfLoop);
      pool_.failed(u);
      spdlog::debug("[c{} {}] upstream {} is this daemon's own relay listener", s.id, name_, u.endpoint.to_string());
      return false;
    }
    net::Fd fd(::socket(addr.family(), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) {
      // EMFILE/ENFILE/ENOBUFS: we are out of resources, not the upstream.
      warn("socket for upstream", errno);
      return false;
    }
    if (source_address_ && source_address_->family() == addr.family()) {
      if (source_port(source_address_->storage) != 0) {
        // A fixed source port is shared by every session's socket; each one is
        // connected, so the kernel still tells their replies apart.
        const int on = 1;
        (void)::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
      }
      if (::bind(fd.get(), source_address_->get(), source_address_->len) != 0) {
        warn("bind source_address", errno);
        counters_.upstream_error(obs::UpstreamError::Other);
        return false;
      }
    }
    // connect() on UDP only fixes the peer (and the route): it fails for a local
    // reason such as ENETUNREACH, never because the upstream is down.
    if (::connect(fd.get(), addr.get(), addr.len) != 0) {
      const int err = errno;
      counters_.upstream_error(classify(err));
      pool_.failed(u);
      spdlog::debug("[c{} {}] connect udp {}: {}", s.id, name_, u.endpoint.to_string(), net::errno_text(err));
      return false;
    }
    // Registered before the first datagram goes: a reply that is already there when it
    // joins the set is reported as an edge too.
    if (!w.loop.poller->add(fd.get(), s, EPOLLIN | EPOLLET)) {
      warn("epoll_ctl", errno);
      return false;
    }
    s.registered = true;
    // UpstreamPool::connected() would also clear the upstream's failure run, which for
    // UDP only a reply may do (see relay_replies); until then, count the session only.
    u.active.fetch_add(1, std::memory_order_relaxed);
    s.upstream = std::move(fd);
    s.upstream_ref = &u;
    s.upstream_name = u.endpoint.to_string();
    s.link = Session::Link::Open;
    s.answered = false;
    s.header_due = proxy_v2_;
    spdlog::debug("[c{} {}] upstream {}", s.id, name_, s.upstream_name);
    return true;
  }

  // --- replies ---------------------------------------------------------------------

  // Edge-triggered: reads what the session's upstream sent until the socket is empty,
  // or for kReplyBatchesPerEvent batches and then again after the loop's other ready
  // handlers. Replies are queued for one sendmmsg over the sessions of a loop turn
  // (Flush), not one send per session.
  void relay_replies(Worker& w, Session& s) {
    if (!s.upstream) return;
    w.now = w.loop.poller->now();
    for (unsigned round = 0; round < kReplyBatchesPerEvent; ++round) {
      if (w.out_count == kBatch || (w.out_count != 0 && w.out_fd != s.listener_fd)) flush_replies(w);
      const unsigned first = w.out_count;
      const unsigned room = kBatch - first;
      for (unsigned i = first; i < kBatch; ++i) {
        w.iov[i] = {w.reply_buffers.slot(i), max_datagram_};
        msghdr& h = w.msgs[i].msg_hdr;
        h = msghdr{};
        h.msg_iov = &w.iov[i];
        h.msg_iovlen = 1;
      }
      const int n = ::recvmmsg(s.upstream.get(), w.msgs.data() + first, room, MSG_DONTWAIT, nullptr);
      if (n < 0) {
        const int err = errno;
        if (err == EINTR) continue;
        if (is_again(err)) return;
        if (is_upstream_error(err)) {
          upstream_failed(w, s, err);
          return;
        }
        if (is_impossible(err)) fatal(name_, "recvmmsg", err);
        warn("recvmmsg from upstream", err);
        return;
      }
      if (!s.answered && s.upstream_ref != nullptr) {
        s.answered = true;
        // The upstream is alive: clear its failure run (connected() also counts a
        // session, which open_upstream already did, hence the released()).
        pool_.connected(*s.upstream_ref);
        pool_.released(*s.upstream_ref);
      }
      std::uint64_t bytes = 0;
      for (unsigned i = first; i < first + static_cast<unsigned>(n); ++i) {
        const auto len = w.msgs[i].msg_len;
        if ((w.msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0) {
          counters_.drop(obs::Drop::Truncated);
          continue;
        }
        bytes += len;
        const unsigned out = w.out_count++;
        // A truncated reply before it left a gap: close it, so slot `out` is message
        // `out`'s and the next recvmmsg may fill every slot after it.
        if (out != i) std::memmove(w.reply_buffers.slot(out), w.reply_buffers.slot(i), len);
        w.iov[out] = {w.reply_buffers.slot(out), len};
        w.reply_to[out] = s.client;
        msghdr& h = w.msgs[out].msg_hdr;
        h = msghdr{};
        h.msg_name = &w.reply_to[out];
        h.msg_namelen = s.client_len;
        h.msg_iov = &w.iov[out];
        h.msg_iovlen = 1;
        if (s.reply_control_len != 0) {
          std::memcpy(w.reply_control[out].data(), s.reply_control, s.reply_control_len);
          h.msg_control = w.reply_control[out].data();
          h.msg_controllen = s.reply_control_len;
        }
      }
      w.out_fd = s.listener_fd;
      counters_.add(counters_.upstream_bytes_received, bytes);
      s.bytes_down += bytes;
      touch(w, s);
      if (w.out_count != 0 && !w.flush.due) {
        w.flush.due = true;
        w.loop.poller->defer(w.flush);
      }
      if (static_cast<unsigned>(n) < room) return;
    }
    w.loop.poller->defer(s);
  }

  void flush_replies(Worker& w) {
    if (w.out_count == 0) return;
    const Sent sent = send_datagrams(w.out_fd, w.msgs.data(), w.out_count, name_, counters_, warn_gate_);
    counters_.add(counters_.datagrams_sent, sent.datagrams);
    counters_.add(counters_.bytes_sent, sent.bytes);
    w.out_count = 0;
  }

  void warn(const char* call, int err) { warn_gate_.warn(name_, call, err); }

  const std::string name_;
  const std::uint32_t max_datagram_;
  const bool fanout_;
  const bool proxy_v2_;
  const config::Duration session_timeout_;
  const std::uint64_t max_sessions_;
  const std::vector<net::Fd> sockets_;  // our duplicates; closed after the last session
  obs::ListenerCounters& counters_;
  upstream::UpstreamPool pool_;
  upstream::Resolver& resolver_;
  const std::vector<net::Endpoint> endpoints_;  // the upstreams in listener order: the books' index
  const std::uint64_t seed_;
  std::optional<net::SockAddr> source_address_;
  std::vector<Local> locals_;  // set by start(), read-only after
  net::Fd fan4_;  // fan-out: unconnected senders, one per family
  net::Fd fan6_;

  std::vector<std::unique_ptr<Worker>> workers_;
  // Sessions over all loops, for max_sessions, less those asked to close.
  std::atomic<std::uint64_t> sessions_{0};
  std::atomic<std::uint64_t> next_id_{1};

  // Names, on the first loop: touched there, or by start() before the loops run.
  std::vector<Name> names_;
  boost::asio::steady_timer refresh_;
  bool refresh_armed_ = false;
  Clock::time_point refresh_due_{};
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // false once the first loop closed

  bool started_ = false;  // by start(), before the loops run
  // Set by the last worker that let go of the sockets after stop() (its first call).
  std::shared_ptr<std::promise<void>> reading_stopped_ = std::make_shared<std::promise<void>>();
  std::future<void> reading_over_ = reading_stopped_->get_future();
  WarnGate warn_gate_;
  DatagramReaders readers_;  // last: destroyed first, so no batch is served on what went
};

}  // namespace

std::unique_ptr<DatagramServer> make_relay_server(const config::Listener& listener, std::vector<int> sockets,
                                                  obs::ListenerCounters& counters, std::vector<net::LoopRef> loops,
                                                  upstream::Resolver& resolver) {
  return std::make_unique<RelayServer>(listener, sockets, counters, std::move(loops), resolver);
}

}  // namespace echorelay::udp
