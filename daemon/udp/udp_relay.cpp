// UDP relay. Reader threads filter client datagrams and hand each to the worker owning
// its client's shard of the session table (seeded hash of the address); a worker owns
// its sessions, their connected upstream sockets and one epoll set, so finding a
// session takes no lock. A multicast listener fans out from the reader instead.
// Listener sockets are borrowed (never closed here); upstream sockets are owned.
#include "udp/udp_relay.hpp"

#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/require.hpp>
#include <boost/asio/system_executor.hpp>
#include <spdlog/spdlog.h>

#include "obs/log.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <random>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>

#include "net/fd.hpp"
#include "net/own_listeners.hpp"
#include "upstream/proxy_protocol.hpp"
#include "net/multicast.hpp"
#include "udp/datagram_io.hpp"
#include "net/socket_options.hpp"

namespace echorelay::udp {

// max_sessions = 0: each session holds an fd, so by default a UDP relay gets at most half
// of RLIMIT_NOFILE; the oldest idle session makes room for a new one beyond that.
static std::uint64_t default_max_sessions() {
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) != 0 || nofile.rlim_cur == RLIM_INFINITY) return 0;
  return std::max<std::uint64_t>(1, static_cast<std::uint64_t>(nofile.rlim_cur) / 2);
}
namespace {

using Upstream = upstream::UpstreamPool::Upstream;
using namespace std::chrono_literals;

// Datagrams held per session while its upstream's name is being resolved.
constexpr std::size_t kMaxHeld = 8;
// A named upstream is asked for again after this; the Resolver caches by TTL, so
// this only bounds how stale our copy of its answer gets.
constexpr auto kRefresh = upstream::kSystemResolverCacheTtl;
// After a failed resolution, sessions fail fast for this long instead of re-asking.
constexpr auto kResolveRetry = 1s;
// Reply batches read per readiness event before other sessions get a turn.
constexpr unsigned kReplyBatchesPerEvent = 4;
// Inbox batches per worker turn before epoll is polled (without waiting) again.
constexpr unsigned kInboxBatchesPerTurn = 8;
constexpr int kEpollEvents = 64;

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

// Upstream addresses. IP literals are converted once; names go through the Resolver
// and are asked again after kRefresh with the previous answer still served meanwhile
// (a changed record is followed without a restart, and no datagram waits for a
// refresh). Answers arrive on Asio's system executor, whose threads live as long as
// the process: an executor of our own could be destroyed while the resolver thread is
// still inside post() to it. Each answer holds the shared state, so stop() never waits
// for the resolver.
class AddressBook {
 public:
  enum class Lookup { Ready, Pending, Failed };

  AddressBook(const std::vector<net::Endpoint>& upstreams, upstream::Resolver& resolver, std::string listener)
      : state_(std::make_shared<State>(resolver, std::move(listener))) {
    for (const auto& ep : upstreams) {
      auto e = std::make_unique<Entry>();
      e->endpoint = ep;
      if (ep.is_ip_literal()) {
        auto sa = net::to_sockaddr(ep);
        if (sa) e->literal = *sa;
      }
      state_->entries.push_back(std::move(e));
    }
  }

  ~AddressBook() { stop(); }

  // `on_change` runs on a resolver-answer thread after each answer, until stop().
  // Resolution of every name starts now, so the first datagrams rarely wait for it.
  void start(std::function<void()> on_change) {
    {
      std::lock_guard lock(state_->change_mutex);
      state_->on_change = std::move(on_change);
    }
    net::SockAddr ignored;
    for (auto& e : state_->entries) {
      if (!e->literal) (void)lookup(e->endpoint, ignored);
    }
  }

  // After it returns on_change is never called again. Idempotent.
  void stop() {
    state_->stopped.store(true, std::memory_order_release);
    std::lock_guard lock(state_->change_mutex);
    state_->on_change = nullptr;
  }

  // Any thread. Ready: `out` is the upstream's address.
  Lookup lookup(const net::Endpoint& endpoint, net::SockAddr& out) {
    Entry* e = find(endpoint);
    if (e == nullptr) return Lookup::Failed;
    if (e->literal) {
      out = *e->literal;
      return Lookup::Ready;
    }
    if (e->endpoint.kind != net::Endpoint::Kind::Inet) return Lookup::Failed;
    Lookup result = Lookup::Pending;
    {
      std::lock_guard lock(e->mutex);
      const auto now = Clock::now();
      if (e->resolved) {
        out = *e->resolved;
        result = Lookup::Ready;
        if (now - e->resolved_at <= kRefresh || e->in_flight) return result;
      } else if (e->in_flight) {
        return Lookup::Pending;
      } else if (e->failed && now - e->failed_at < kResolveRetry) {
        return Lookup::Failed;
      }
      if (state_->stopped.load(std::memory_order_acquire)) return e->resolved ? result : Lookup::Failed;
      e->in_flight = true;
    }
    // Outside the entry's lock, in case an answer ever comes back on this thread.
    const auto executor =
        boost::asio::require(boost::asio::system_executor(), boost::asio::execution::blocking.never);
    state_->resolver.resolve(e->endpoint.host, e->endpoint.port, executor,
                             [state = state_, e](Result<upstream::Addresses> answer) {
                               answered(*state, *e, std::move(answer));
                             });
    return result;
  }

 private:
  struct Entry {
    net::Endpoint endpoint;
    std::optional<net::SockAddr> literal;  // set once, before any thread starts
    std::mutex mutex;                      // guards the rest
    std::optional<net::SockAddr> resolved;
    Clock::time_point resolved_at{};
    Clock::time_point failed_at{};
    bool failed = false;
    bool in_flight = false;
  };

  struct State {
    State(upstream::Resolver& r, std::string l) : resolver(r), listener(std::move(l)) {}
    upstream::Resolver& resolver;
    const std::string listener;
    std::vector<std::unique_ptr<Entry>> entries;  // fixed after construction
    std::atomic<bool> stopped{false};
    std::mutex change_mutex;  // guards on_change
    std::function<void()> on_change;
  };

  Entry* find(const net::Endpoint& endpoint) {
    for (auto& e : state_->entries) {
      if (e->endpoint == endpoint) return e.get();
    }
    return nullptr;
  }

  static void answered(State& state, Entry& e, Result<upstream::Addresses> answer) {
    {
      std::lock_guard lock(e.mutex);
      e.in_flight = false;
      if (answer && !answer->empty()) {
        e.resolved = answer->front();
        e.resolved_at = Clock::now();
        e.failed = false;
      } else {
        e.failed = true;
        e.failed_at = Clock::now();
        // A refresh that fails keeps serving the last good answer until the next one.
        const std::string why = answer ? "no addresses" : answer.error();
        if (!e.resolved) spdlog::warn("udp {}: upstream {}: {}", state.listener, e.endpoint.to_string(), why);
      }
    }
    std::lock_guard lock(state.change_mutex);
    if (state.on_change) state.on_change();
  }

  std::shared_ptr<State> state_;
};

}  // namespace

struct RelayServer::Impl {
  // One client datagram in a worker's inbox; its bytes are in the worker's buffer.
  struct Item {
    std::uint32_t len = 0;
    int fd = -1;               // the listener socket it arrived on
    std::uint32_t reader = 0;  // index of that socket's reader in readers_
    socklen_t addr_len = 0;
    socklen_t control_len = 0;
    ClientKey key;
    sockaddr_storage addr{};
    alignas(cmsghdr) unsigned char control[kControlSize]{};
  };

  // Why a session ended, for its summary line and counters.
  enum class End { Expired, Evicted, Stopped };

  // One client address. Lives in its worker's LRU list (front = least recently
  // active); only that worker touches it.
  //
  //   Idle --link()--> Open --ICMP error--> Idle (the next datagram links again)
  //     |                 ^
  //     +--name pending--> Resolving --answer--> Open (held datagrams sent), or on a
  //                                              failed name: the next upstream
  //   any --expiry / eviction / stop()--> finish() (the one exit)
  struct Session {
    enum class Link { Idle, Resolving, Open };
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

  struct Worker {
    Worker() = default;
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;
    ~Worker() = default;

    std::size_t index = 0;
    // The inbox: slots are in free, in ready (a FIFO ring) or held by the worker
    // between two lock sections. The mutex is this worker's alone: readers take it to
    // hand over, never to look a session up.
    std::mutex mutex;
    std::vector<std::uint32_t> free;
    std::vector<std::uint32_t> ready;
    std::size_t head = 0;
    std::size_t count = 0;
    std::vector<Item> items;
    SlotBuffers buffers;

    net::Fd wake;   // eventfd in the epoll set: inbox became non-empty, or a request below
    net::Fd epoll;  // the wake eventfd (data.ptr = nullptr) and every open upstream socket
    std::thread thread;
    std::atomic<std::int64_t> oldest_ns{INT64_MAX};  // last activity of its LRU front
    std::atomic<unsigned> evict_requests{0};         // from other workers, for max_sessions
    std::atomic<bool> retry_resolving{false};        // an upstream name got an answer

    // The worker thread's own.
    std::list<Session> lru;
    std::unordered_map<ClientKey, std::list<Session>::iterator, ClientKeyHash> table;
    std::vector<ClientKey> resolving;
    std::unique_ptr<std::byte[]> reply_buffer;
    std::array<std::uint32_t, kBatch> batch{};
    std::array<mmsghdr, kBatch> msgs{};
    std::array<iovec, kBatch> iov{};
    unsigned out_count = 0;  // replies queued in msgs[0, out_count) for out_fd
    int out_fd = -1;
    Clock::time_point now{};
  };

  struct Reader {
    Reader(std::uint32_t i, int socket) : index(i), fd(socket) {}
    std::uint32_t index;
    int fd;
    std::uint16_t local_port = 0;
    sockaddr_storage local{};
    socklen_t local_len = 0;
    std::thread thread;
    std::unique_ptr<std::byte[]> buffer;  // kBatch x max_datagram
    std::array<mmsghdr, kBatch> msgs{};
    std::array<iovec, kBatch> iov{};
    std::array<sockaddr_storage, kBatch> names{};
    alignas(cmsghdr) std::array<std::array<unsigned char, kControlSize>, kBatch> control{};
    std::array<unsigned, kBatch> accepted{};
    std::array<std::size_t, kBatch> target{};
    // Fan-out: one message per accepted datagram and upstream, header first.
    std::array<mmsghdr, kBatch> out{};
    std::array<std::array<iovec, 2>, kBatch> out_iov{};
    std::array<std::string, kBatch> headers;
  };

  Impl(const config::Listener& listener, std::vector<int> sockets, obs::ListenerCounters& counters,
       upstream::Resolver& resolver)
      : name_(listener.name),
        max_datagram_(std::max<std::uint32_t>(listener.max_datagram, 1)),
        fanout_(listener.protocol == config::Protocol::Multicast),
        proxy_v2_(listener.proxy_protocol == config::ProxyProtocol::V2),
        session_timeout_(listener.session_timeout),
        max_sessions_(listener.max_sessions != 0 ? listener.max_sessions : default_max_sessions()),
        worker_count_(fanout_ ? 0
                              : (listener.workers != 0 ? listener.workers
                                                       : std::max(1U, std::thread::hardware_concurrency()))),
        sockets_(std::move(sockets)),
        counters_(counters),
        pool_(listener.upstreams, listener.balance),
        book_(listener.upstreams, resolver, listener.name),
        seed_(std::random_device{}()) {
    policy_.configure(listener);
    if (listener.source_address) {
      auto sa = net::to_sockaddr(*listener.source_address);
      if (sa) source_address_ = *sa;
    }
    if (listener.proxy_protocol == config::ProxyProtocol::V1) {
      // v1 is a text line for TCP streams; it has no way to say "UDP".
      spdlog::warn("udp {}: proxy_protocol v1 has no datagram form; sending no header (use v2)", name_);
    }
    read_wake_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!read_wake_) throw std::system_error(errno, std::system_category(), "eventfd");
    const std::uint32_t total = std::max<std::uint32_t>(listener.queue, 1);
    for (unsigned i = 0; i < worker_count_; ++i) {
      auto w = std::make_unique<Worker>();
      w->index = i;
      w->table = decltype(w->table)(16, ClientKeyHash{seed_});
      const std::uint32_t capacity = std::max<std::uint32_t>(total / worker_count_, 1);
      w->buffers = SlotBuffers(capacity, max_datagram_);
      w->items.resize(capacity);
      w->ready.resize(capacity);
      w->free.reserve(capacity);
      for (std::uint32_t s = 0; s < capacity; ++s) w->free.push_back(capacity - 1 - s);
      w->reply_buffer = std::make_unique<std::byte[]>(static_cast<std::size_t>(kBatch) * max_datagram_);
      w->wake.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
      w->epoll.reset(::epoll_create1(EPOLL_CLOEXEC));
      if (!w->wake || !w->epoll) {
        throw std::system_error(errno, std::system_category(), "eventfd/epoll_create1");
      }
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.ptr = nullptr;
      if (::epoll_ctl(w->epoll.get(), EPOLL_CTL_ADD, w->wake.get(), &ev) != 0) {
        throw std::system_error(errno, std::system_category(), "epoll_ctl");
      }
      workers_.push_back(std::move(w));
    }
    if (fanout_) open_fanout_sockets(listener);
  }

  ~Impl() { stop(); }

  void start() {
    spdlog::default_logger_raw();  // see Resolver::Impl: the registry exists before our threads
    std::lock_guard guard(lifecycle_);
    if (started_) return;
    started_ = true;
    book_.start([this] {
      for (auto& w : workers_) {
        w->retry_resolving.store(true, std::memory_order_release);
        wake(*w);
      }
    });
    for (int fd : sockets_) enable_pktinfo(fd, name_);
    // Every reader exists before any thread starts: workers read readers_ (for the
    // PROXY header's destination) without a lock, so it must not change under them.
    for (std::size_t i = 0; i < sockets_.size(); ++i) {
      auto reader = std::make_unique<Reader>(static_cast<std::uint32_t>(i), sockets_[i]);
      reader->buffer = std::make_unique<std::byte[]>(static_cast<std::size_t>(kBatch) * max_datagram_);
      reader->local_len = sizeof reader->local;
      if (::getsockname(reader->fd, reinterpret_cast<sockaddr*>(&reader->local), &reader->local_len) != 0) {
        fatal(name_, "getsockname", errno);
      }
      reader->local_port = source_port(reader->local);
      readers_.push_back(std::move(reader));
    }
    inline_ = !fanout_ && worker_count_ == 1;
    for (auto& w : workers_) {
      Worker& wr = *w;
      wr.thread = std::thread([this, &wr] {
        name_thread("udp-rw", wr.index);
        work_loop(wr);
      });
    }
    for (auto& r : readers_) {
      Reader& rr = *r;
      if (inline_) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.ptr = &rr;
        if (::epoll_ctl(workers_.front()->epoll.get(), EPOLL_CTL_ADD, rr.fd, &ev) != 0) fatal(name_, "epoll_ctl", errno);
        continue;
      }
      rr.thread = std::thread([this, &rr] {
        name_thread("udp-rr", rr.index);
        read_loop(rr);
      });
    }
    if (fanout_) {
      spdlog::info("udp {}: relaying {} socket(s) to all {} upstream(s) (fan-out)", name_, sockets_.size(),
                   pool_.size());
    } else {
      spdlog::info("udp {}: relaying {} socket(s) to {} upstream(s) with {} worker(s), session_timeout {}ms, "
                   "max_sessions {}",
                   name_, sockets_.size(), pool_.size(), worker_count_, session_timeout_.count(), max_sessions_);
    }
  }

  void stop_reading() {
    // Inline, the worker notices the flag at its sockets' next event (and unwatches them);
    // a batch it is reading meanwhile is still relayed.
    if (stop_reader_threads(stop_reading_, read_wake_.get(), lifecycle_, readers_) ||
        (inline_ && !inline_stopped_.exchange(true))) {
      spdlog::info("udp {}: stopped reading; sockets left open, sessions still relay replies", name_);
    }
  }

  void stop() {
    stop_reading();
    std::lock_guard guard(lifecycle_);
    // No answer may arrive for a worker that has gone.
    book_.stop();
    stopping_.store(true, std::memory_order_release);
    bool joined = false;
    for (auto& w : workers_) {
      wake(*w);
      if (w->thread.joinable()) {
        w->thread.join();
        joined = true;
      }
    }
    if (joined) spdlog::info("udp {}: stopped; sessions closed", name_);
  }

 private:
  // --- readers -------------------------------------------------------------------

  void read_loop(Reader& r) {
    read_until_stopped(name_, r.fd, read_wake_.get(), stop_reading_, warn_gate_, [this, &r] { drain(r); });
  }

  void drain(Reader& r) {
    while (!stop_reading_.load(std::memory_order_acquire)) {
      unsigned accepted = 0;
      const int n = receive_batch(r, accepted);
      if (n < 0) return;
      if (fanout_) {
        fan_out(r, accepted);
      } else {
        hand_over(r, accepted);
      }
      if (static_cast<unsigned>(n) < kBatch) return;  // the socket is empty: back to poll
    }
  }

  // One recvmmsg batch into r's buffers; r.accepted[0, accepted) are the datagrams the
  // policy lets through. -1 when nothing was read (empty, or an error already handled).
  int receive_batch(Reader& r, unsigned& accepted) {
    for (;;) {
      for (unsigned i = 0; i < kBatch; ++i) {
        prepare_receive(r.msgs[i], r.iov[i], r.buffer.get() + static_cast<std::size_t>(i) * max_datagram_,
                        max_datagram_, r.names[i], r.control[i].data());
      }
      const int n = ::recvmmsg(r.fd, r.msgs.data(), kBatch, MSG_DONTWAIT, nullptr);
      if (n < 0) {
        const int err = errno;
        if (err == EINTR) continue;
        if (is_again(err)) return -1;
        if (is_impossible(err)) fatal(name_, "recvmmsg", err);
        // A pending ICMP error or ENOMEM: the call consumed it; poll decides what is next.
        warn("recvmmsg", err);
        return -1;
      }
      const auto now = policy_.limits_rate() ? Clock::now() : Clock::time_point{};
      accepted = 0;
      std::uint64_t bytes = 0;
      for (unsigned i = 0; i < static_cast<unsigned>(n); ++i) {
        const msghdr& h = r.msgs[i].msg_hdr;
        bytes += r.msgs[i].msg_len;
        if (!policy_.admit(r.names[i], now, counters_)) continue;
        if ((h.msg_flags & MSG_TRUNC) != 0) {
          counters_.drop(obs::Drop::Truncated);
          continue;
        }
        r.accepted[accepted++] = i;
      }
      counters_.add(counters_.datagrams_received, static_cast<std::uint64_t>(n));
      counters_.add(counters_.bytes_received, bytes);
      return n;
    }
  }

  // A single worker reads the listener sockets itself: every session is its own, so a
  // reader thread would only add a copy, a lock and a wake-up (two context switches on
  // a busy CPU) per datagram. Level-triggered, a few batches per turn.
  void read_inline(Worker& w, Reader& r) {
    if (stop_reading_.load(std::memory_order_acquire)) {
      // Left for a successor: stop being woken for them.
      ::epoll_ctl(w.epoll.get(), EPOLL_CTL_DEL, r.fd, nullptr);
      return;
    }
    for (unsigned turn = 0; turn < kInboxBatchesPerTurn; ++turn) {
      unsigned accepted = 0;
      const int n = receive_batch(r, accepted);
      if (n < 0) return;
      Item item;
      for (unsigned a = 0; a < accepted; ++a) {
        const unsigned i = r.accepted[a];
        const msghdr& h = r.msgs[i].msg_hdr;
        item.len = r.msgs[i].msg_len;
        item.fd = r.fd;
        item.reader = r.index;
        item.key = client_key(r.names[i]);
        item.addr = r.names[i];
        item.addr_len = h.msg_namelen;
        item.control_len = (h.msg_flags & MSG_CTRUNC) != 0 ? 0 : static_cast<socklen_t>(h.msg_controllen);
        std::memcpy(item.control, r.control[i].data(), item.control_len);
        on_client_datagram(w, item, static_cast<const std::byte*>(r.iov[i].iov_base));
      }
      if (static_cast<unsigned>(n) < kBatch) return;
    }
  }

  Reader* reader_of(const void* tag) {
    for (auto& r : readers_) {
      if (r.get() == tag) return r.get();
    }
    return nullptr;
  }

  std::size_t shard(const ClientKey& key) const {
    return (ClientKeyHash{seed_}(key) >> 17) % worker_count_;
  }

  // Copies the accepted datagrams into their workers' inboxes: one lock per worker
  // per batch. A full inbox drops (QueueFull), as the echo server's queue does.
  void hand_over(Reader& r, unsigned accepted) {
    std::array<ClientKey, kBatch> keys;
    for (unsigned a = 0; a < accepted; ++a) {
      keys[a] = client_key(r.names[r.accepted[a]]);
      r.target[a] = shard(keys[a]);
    }
    for (auto& wp : workers_) {
      Worker& w = *wp;
      bool any = false;
      bool was_empty = false;
      std::uint64_t full = 0;
      {
        std::unique_lock<std::mutex> lock(w.mutex, std::defer_lock);
        for (unsigned a = 0; a < accepted; ++a) {
          if (r.target[a] != w.index) continue;
          if (!lock.owns_lock()) {
            lock.lock();
            was_empty = w.count == 0;
          }
          if (w.free.empty()) {
            ++full;
            continue;
          }
          const unsigned i = r.accepted[a];
          const std::uint32_t slot = w.free.back();
          w.free.pop_back();
          Item& item = w.items[slot];
          const msghdr& h = r.msgs[i].msg_hdr;
          item.len = r.msgs[i].msg_len;
          item.fd = r.fd;
          item.reader = r.index;
          item.key = keys[a];
          item.addr = r.names[i];
          item.addr_len = h.msg_namelen;
          item.control_len = (h.msg_flags & MSG_CTRUNC) != 0 ? 0 : static_cast<socklen_t>(h.msg_controllen);
          std::memcpy(item.control, r.control[i].data(), item.control_len);
          std::memcpy(w.buffers.slot(slot), r.iov[i].iov_base, item.len);
          w.ready[(w.head + w.count++) % w.ready.size()] = slot;
          any = true;
        }
      }
      if (full != 0) counters_.drop(obs::Drop::QueueFull, full);
      // The worker drains until empty after reading its eventfd, so only the
      // empty -> non-empty transition needs a wake-up.
      if (any && was_empty) wake(w);
    }
  }

  // Multicast relay: every accepted datagram to every upstream, replies ignored.
  void fan_out(Reader& r, unsigned accepted) {
    if (accepted == 0) return;
    if (proxy_v2_) {
      for (unsigned a = 0; a < accepted; ++a) {
        const unsigned i = r.accepted[a];
        // No sessions here, so each datagram carries its own header: the upstream has
        // no other way to learn the sender.
        r.headers[a] = header_for(r.names[i], r.msgs[i].msg_hdr.msg_namelen, r.control[i].data(),
                                  (r.msgs[i].msg_hdr.msg_flags & MSG_CTRUNC) != 0
                                      ? 0
                                      : static_cast<socklen_t>(r.msgs[i].msg_hdr.msg_controllen),
                                  r.local_port, r.local, r.local_len);
      }
    }
    for (Upstream* u : pool_.plan()) {
      net::SockAddr to;
      if (book_.lookup(u->endpoint, to) != AddressBook::Lookup::Ready) {
        counters_.drop(obs::Drop::SendFailed, accepted);
        continue;
      }
      const int fd = to.family() == AF_INET6 ? fan6_.get() : fan4_.get();
      if (fd < 0) {
        counters_.drop(obs::Drop::SendFailed, accepted);
        continue;
      }
      for (unsigned a = 0; a < accepted; ++a) {
        const unsigned i = r.accepted[a];
        auto& iov = r.out_iov[a];
        unsigned parts = 0;
        if (proxy_v2_) iov[parts++] = {r.headers[a].data(), r.headers[a].size()};
        iov[parts++] = {r.iov[i].iov_base, r.msgs[i].msg_len};
        msghdr& h = r.out[a].msg_hdr;
        h = msghdr{};
        h.msg_name = to.get();
        h.msg_namelen = to.len;
        h.msg_iov = iov.data();
        h.msg_iovlen = parts;
      }
      const Sent sent = send_datagrams(fd, r.out.data(), accepted, name_, counters_, warn_gate_);
      counters_.add(counters_.requests, sent.datagrams);
      counters_.add(counters_.upstream_bytes_sent, sent.bytes);
    }
  }

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

  // The PROXY v2 header for a datagram from `client`: its destination is the address
  // the client sent to (PKTINFO), else the listener's bound address.
  static std::string header_for(const sockaddr_storage& client, socklen_t client_len, const unsigned char* control,
                                socklen_t control_len, std::uint16_t local_port, const sockaddr_storage& local,
                                socklen_t local_len) {
    sockaddr_storage dst{};
    socklen_t dst_len = 0;
    if (!destination_address(control, control_len, local_port, dst, dst_len)) {
      dst = local;
      dst_len = local_len;
    }
    return upstream::proxy_v2_header(reinterpret_cast<const sockaddr*>(&client), client_len,
                                  reinterpret_cast<const sockaddr*>(&dst), dst_len, true);
  }

  // --- workers -------------------------------------------------------------------

  void wake(Worker& w) {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(w.wake.get(), &one, sizeof one);
  }

  void work_loop(Worker& w) {
    std::array<epoll_event, kEpollEvents> events{};
    std::vector<Reader*> readable;  // inline mode: listener sockets read after the batch
    bool backlog = false;
    for (;;) {
      const int n = ::epoll_wait(w.epoll.get(), events.data(), kEpollEvents, backlog ? 0 : next_timeout_ms(w));
      w.now = Clock::now();
      if (n < 0) {
        const int err = errno;
        if (err != EINTR) {
          if (is_impossible(err)) fatal(name_, "epoll_wait", err);
          warn("epoll_wait", err);
        }
      }
      for (int i = 0; i < n; ++i) {
        if (events[static_cast<std::size_t>(i)].data.ptr == nullptr) {
          std::uint64_t value = 0;
          [[maybe_unused]] auto r = ::read(w.wake.get(), &value, sizeof value);
          continue;
        }
        if (inline_) {
          if (Reader* r = reader_of(events[static_cast<std::size_t>(i)].data.ptr)) {
            readable.push_back(r);
            continue;
          }
        }
        // Only this session's own event may close its upstream here; sessions are
        // finished only below, after the batch, so no later event points at a freed one.
        relay_replies(w, *static_cast<Session*>(events[static_cast<std::size_t>(i)].data.ptr));
      }
      flush_replies(w);
      // A client datagram may open a session and so evict (finish) another, which
      // must not happen while later events of the batch may point at it.
      for (Reader* r : readable) read_inline(w, *r);
      readable.clear();
      backlog = drain_inbox(w);
      if (w.retry_resolving.exchange(false, std::memory_order_acq_rel)) retry_resolving(w);
      for (unsigned k = w.evict_requests.exchange(0, std::memory_order_acq_rel); k != 0; --k) {
        if (!w.lru.empty()) {
          finish(w, w.lru.front(), End::Evicted, /*left_count=*/true);
        } else {
          // Our sessions went meanwhile (expired, evicted): the request is void, and
          // the excess, if any is left, is another worker's to close.
          sessions_.fetch_add(1, std::memory_order_acq_rel);
          make_room(w, false);
        }
      }
      expire(w);
      if (stopping_.load(std::memory_order_acquire) && !backlog) break;
    }
    while (!w.lru.empty()) finish(w, w.lru.front(), End::Stopped);
  }

  int next_timeout_ms(const Worker& w) const {
    if (session_timeout_.count() <= 0 || w.lru.empty()) return -1;
    const auto due = w.lru.front().last_active + session_timeout_;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(due - Clock::now()).count();
    return static_cast<int>(std::clamp<std::int64_t>(left, 0, INT_MAX));
  }

  // True when datagrams are left for the next turn.
  bool drain_inbox(Worker& w) {
    for (unsigned turn = 0; turn < kInboxBatchesPerTurn; ++turn) {
      unsigned taken = 0;
      {
        std::lock_guard lock(w.mutex);
        while (taken < kBatch && w.count > 0) {
          w.batch[taken++] = w.ready[w.head];
          w.head = (w.head + 1) % w.ready.size();
          --w.count;
        }
      }
      if (taken == 0) return false;
      for (unsigned i = 0; i < taken; ++i) {
        const std::uint32_t slot = w.batch[i];
        on_client_datagram(w, w.items[slot], w.buffers.slot(slot));
      }
      std::lock_guard lock(w.mutex);
      for (unsigned i = 0; i < taken; ++i) w.free.push_back(w.batch[i]);
    }
    std::lock_guard lock(w.mutex);
    return w.count > 0;
  }

  void on_client_datagram(Worker& w, const Item& item, const std::byte* data) {
    Session* s = nullptr;
    if (auto it = w.table.find(item.key); it != w.table.end()) {
      s = &*it->second;
    } else {
      s = &open_session(w, item);
    }
    s->listener_fd = item.fd;
    s->reply_control_len = reply_control(item.control, item.control_len, s->reply_control);
    touch(w, *s);
    forward(w, *s, data, item.len);
  }

  Session& open_session(Worker& w, const Item& item) {
    make_room(w);
    Session& s = w.lru.emplace_back();
    s.self = std::prev(w.lru.end());
    s.key = item.key;
    s.id = next_id_.fetch_add(1, std::memory_order_relaxed);
    s.client = item.addr;
    s.client_len = item.addr_len;
    s.opened = w.now;
    s.last_active = w.now;
    if (proxy_v2_) {
      const Reader& r = *readers_[item.reader];
      s.proxy_header =
          header_for(item.addr, item.addr_len, item.control, item.control_len, r.local_port, r.local, r.local_len);
    }
    w.table.emplace(s.key, s.self);
    sessions_.fetch_add(1, std::memory_order_acq_rel);
    counters_.udp_sessions_active.fetch_add(1, std::memory_order_relaxed);
    spdlog::debug("[c{} {}] session from {}", s.id, name_,
                  net::format_sockaddr(reinterpret_cast<const sockaddr*>(&s.client), s.client_len));
    return s;
  }

  // max_sessions counts the whole listener, and the least recently active session may
  // live on another worker: that worker is asked to close its oldest (the new session
  // proceeds, so the count can exceed the limit by a few for one worker turn). A session
  // asked to close leaves sessions_ at once, so a second new session while the first
  // request is in flight asks for one more eviction, not for none or two.
  // `adding`: a session is about to open (room for it is needed), else an eviction
  // that found its worker empty is passed on while the listener is still over.
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
    victim->evict_requests.fetch_add(1, std::memory_order_acq_rel);
    wake(*victim);
  }

  void touch(Worker& w, Session& s) {
    s.last_active = w.now;
    w.lru.splice(w.lru.end(), w.lru, s.self);
    publish_oldest(w);
  }

  void publish_oldest(Worker& w) {
    w.oldest_ns.store(w.lru.empty() ? INT64_MAX : to_ns(w.lru.front().last_active), std::memory_order_relaxed);
  }

  void expire(Worker& w) {
    if (session_timeout_.count() <= 0) return;
    while (!w.lru.empty() && w.now - w.lru.front().last_active >= session_timeout_) {
      finish(w, w.lru.front(), End::Expired);
    }
  }

  // The session's one exit: closes its upstream socket, counts, logs the summary.
  // `left_count`: the session already left sessions_ when its eviction was asked for.
  void finish(Worker& w, Session& s, End end, bool left_count = false) {
    const std::uint64_t dropped_held = s.held.size();
    if (dropped_held != 0) counters_.drop(obs::Drop::SendFailed, dropped_held);
    close_upstream(s);
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

  void close_upstream(Session& s) {
    if (s.upstream) {
      // close() takes the socket out of the epoll set: no other fd refers to it.
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
  void upstream_failed(Session& s, int err) {
    counters_.upstream_error(classify(err));
    Upstream* u = s.upstream_ref;
    spdlog::debug("[c{} {}] upstream {}: {}", s.id, name_, s.upstream_name, net::errno_text(err));
    pool_.failed(*u);
    close_upstream(s);
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
        upstream_failed(s, err);
        continue;
      }
      counters_.drop(obs::Drop::SendFailed);
      if (!is_again(err) && err != ENOBUFS) warn("send to upstream", err);
      return;
    }
    counters_.drop(obs::Drop::SendFailed);
  }

  // 0 when sent, else the errno. Never waits: a full upstream buffer drops the datagram
  // rather than stalling every other session of this worker.
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
      switch (book_.lookup(u->endpoint, addr)) {
        case AddressBook::Lookup::Pending:
          s.link = Session::Link::Resolving;
          s.resolving = u;
          w.resolving.push_back(s.key);
          return;
        case AddressBook::Lookup::Failed:
          counters_.upstream_error(obs::UpstreamError::Resolve);
          pool_.failed(*u);
          continue;
        case AddressBook::Lookup::Ready:
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
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = &s;
    if (::epoll_ctl(w.epoll.get(), EPOLL_CTL_ADD, fd.get(), &ev) != 0) {
      warn("epoll_ctl", errno);
      return false;
    }
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

  // Sessions waiting for a name: an answer came (for some name), so link again.
  void retry_resolving(Worker& w) {
    std::vector<ClientKey> keys;
    keys.swap(w.resolving);
    for (const ClientKey& key : keys) {
      auto it = w.table.find(key);
      if (it == w.table.end() || it->second->link != Session::Link::Resolving) continue;
      Session& s = *it->second;
      net::SockAddr addr;
      const auto state = book_.lookup(s.resolving->endpoint, addr);
      if (state == AddressBook::Lookup::Pending) {
        w.resolving.push_back(key);
        continue;
      }
      std::vector<std::string> held;
      held.swap(s.held);
      s.link = Session::Link::Idle;
      if (state == AddressBook::Lookup::Failed) {
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

  // Reads what the session's upstream sent and passes it to the client, from the
  // address the client last sent to.
  // Replies are queued for the client side and sent with one sendmmsg for all the
  // sessions of a batch (flush_replies), not one per session.
  void relay_replies(Worker& w, Session& s) {
    if (!s.upstream) return;
    for (unsigned round = 0; round < kReplyBatchesPerEvent; ++round) {
      if (w.out_count == kBatch || (w.out_count != 0 && w.out_fd != s.listener_fd)) flush_replies(w);
      const unsigned first = w.out_count;
      const unsigned room = kBatch - first;
      for (unsigned i = first; i < kBatch; ++i) {
        w.iov[i] = {w.reply_buffer.get() + static_cast<std::size_t>(i) * max_datagram_, max_datagram_};
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
          upstream_failed(s, err);
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
        // Compact in place: message `out_count` reuses buffer i (never more bytes than read).
        const unsigned out = w.out_count++;
        w.iov[out] = {w.iov[i].iov_base, len};
        msghdr& h = w.msgs[out].msg_hdr;
        h = msghdr{};
        h.msg_name = &s.client;
        h.msg_namelen = s.client_len;
        h.msg_iov = &w.iov[out];
        h.msg_iovlen = 1;
        if (s.reply_control_len != 0) {
          h.msg_control = s.reply_control;
          h.msg_controllen = s.reply_control_len;
        }
      }
      w.out_fd = s.listener_fd;
      counters_.add(counters_.upstream_bytes_received, bytes);
      s.bytes_down += bytes;
      touch(w, s);
      if (static_cast<unsigned>(n) < room) return;
    }
  }

  // Sends the queued replies. Their headers point into sessions, so this runs before
  // any session of the batch can be finished.
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
  const unsigned worker_count_;
  const std::vector<int> sockets_;
  obs::ListenerCounters& counters_;
  upstream::UpstreamPool pool_;
  AddressBook book_;
  const std::uint64_t seed_;
  SourcePolicy policy_;
  std::optional<net::SockAddr> source_address_;
  net::Fd fan4_;  // fan-out: unconnected senders, one per family
  net::Fd fan6_;

  std::vector<std::unique_ptr<Worker>> workers_;
  // Sessions over all workers, for max_sessions, less those asked to close.
  std::atomic<std::uint64_t> sessions_{0};
  std::atomic<std::uint64_t> next_id_{1};

  net::Fd read_wake_;  // eventfd; readable once stop_reading() ran
  std::atomic<bool> stop_reading_{false};
  bool inline_ = false;  // one worker, which reads the listener sockets itself (set before threads start)
  std::atomic<bool> inline_stopped_{false};
  std::atomic<bool> stopping_{false};
  std::mutex lifecycle_;  // start/stop/joins
  bool started_ = false;
  std::vector<std::unique_ptr<Reader>> readers_;
  WarnGate warn_gate_;
};

RelayServer::RelayServer(const config::Listener& listener, std::vector<int> sockets, obs::ListenerCounters& counters,
                         upstream::Resolver& resolver)
    : impl_(std::make_unique<Impl>(listener, std::move(sockets), counters, resolver)) {}

RelayServer::~RelayServer() = default;

void RelayServer::start() { impl_->start(); }
void RelayServer::stop_reading() { impl_->stop_reading(); }
void RelayServer::stop() { impl_->stop(); }

}  // namespace echorelay::udp
