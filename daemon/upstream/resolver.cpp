// The resolver thread and what only it touches: the c-ares channel (or blocking
// getaddrinfo when no servers are configured) and the table of lookups in flight.
// Callers on any thread hand requests over through a mutex-guarded queue plus an
// eventfd; IP literals and cache hits are answered on the caller's thread without a
// hop. Every answer is posted to the caller's executor, never run on this thread.
#include "upstream/resolver.hpp"

#include <ares.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <spdlog/spdlog.h>
#include <thread>
#include <unordered_map>
#include <utility>

#include "net/fd.hpp"

namespace echorelay::upstream {
namespace {

using Clock = std::chrono::steady_clock;

// c-ares TTLs are clamped: a 1 s floor so a busy relay does not query per connect,
// an hour's ceiling so a bogus huge TTL cannot pin an address forever.
constexpr auto kMinTtl = std::chrono::seconds(1);
constexpr auto kMaxTtl = std::chrono::hours(1);
// Expired entries are dropped when met; past this size a sweep drops all of them,
// so a stream of distinct names cannot grow the cache without bound.
constexpr std::size_t kCacheSweepSize = 1024;

struct Request {
  std::string host;
  std::uint16_t port = 0;
  boost::asio::any_io_executor executor;
  Resolver::Callback callback;
};

Error resolve_error(const std::string& host, const std::string& why) {
  return make_error("resolve " + host + ": " + why);
}

void set_port(net::SockAddr& addr, std::uint16_t port) {
  if (addr.family() == AF_INET) {
    reinterpret_cast<sockaddr_in*>(&addr.storage)->sin_port = htons(port);
  } else if (addr.family() == AF_INET6) {
    reinterpret_cast<sockaddr_in6*>(&addr.storage)->sin6_port = htons(port);
  }
}

// Posts `result` (port filled in) to the request's executor. The callback runs there,
// never on the resolver thread, so it may freely call back into the Resolver.
void deliver(Request& request, const Result<Addresses>& result) {
  Result<Addresses> out = result;
  if (out.ok()) {
    for (auto& addr : *out) set_port(addr, request.port);
  }
  boost::asio::post(request.executor, [callback = std::move(request.callback), out = std::move(out)]() mutable {
    callback(std::move(out));
  });
}

std::optional<net::SockAddr> ip_literal(const std::string& host) {
  net::SockAddr addr;
  in_addr a4{};
  in6_addr a6{};
  if (inet_pton(AF_INET, host.c_str(), &a4) == 1) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&addr.storage);
    sin->sin_family = AF_INET;
    sin->sin_addr = a4;
    addr.len = sizeof(sockaddr_in);
    return addr;
  }
  if (inet_pton(AF_INET6, host.c_str(), &a6) == 1) {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&addr.storage);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_addr = a6;
    addr.len = sizeof(sockaddr_in6);
    return addr;
  }
  return std::nullopt;
}

// Appends an address unless already present: c-ares and glibc can both report one
// address twice (an A record reached through two CNAME paths), and a dialer should
// not try the same address twice.
void add_unique(Addresses& out, const sockaddr* sa, socklen_t len) {
  if (sa == nullptr || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6)) return;
  if (len > static_cast<socklen_t>(sizeof(sockaddr_storage))) return;
  net::SockAddr addr;
  std::memcpy(&addr.storage, sa, len);
  addr.len = len;
  set_port(addr, 0);
  for (const auto& seen : out) {
    if (seen.len == addr.len && std::memcmp(&seen.storage, &addr.storage, addr.len) == 0) return;
  }
  out.push_back(addr);
}

std::once_flag g_ares_library_once;
int g_ares_library_status = ARES_SUCCESS;

}  // namespace

struct Resolver::Impl {
  explicit Impl(const config::Resolver& config);

  void submit(Request request);  // any thread; IP literals are answered right here
  void stop();
  void run();

  // Shared between callers and the resolver thread, under mutex_.
  struct CacheEntry {
    Addresses addresses;  // ports are 0; filled per request
    Clock::time_point expires;
  };
  std::mutex mutex_;
  std::deque<Request> queue_;
  std::unordered_map<std::string, CacheEntry> cache_;
  bool stopping_ = false;

  // Set before the thread starts, read-only afterwards.
  config::Resolver config_;
  Clock::duration lookup_budget_{};
  net::Fd wake_fd_;  // eventfd: new requests and stop() wake the thread
  std::string init_error_;  // non-empty: c-ares could not start; names fail with it
  std::thread thread_;

  // Resolver thread only.
  struct Lookup {
    std::uint64_t id = 0;
    std::vector<Request> waiters;
    std::optional<Clock::time_point> deadline;  // c-ares only
  };
  // What c-ares hands back to on_addrinfo: the lookup it belongs to. A lookup that
  // timed out here is erased while c-ares may still be retrying it; the id tells its
  // late answer apart from a newer lookup of the same name.
  struct AresQuery {
    Impl* impl;
    std::string host;
    std::uint64_t id;
  };
  std::unordered_map<std::string, Lookup> in_flight_;
  ares_channel channel_ = nullptr;
  std::uint64_t next_id_ = 1;

  bool using_ares() const { return !config_.servers.empty(); }
  std::optional<Addresses> cached(const std::string& host);  // caller holds mutex_
  bool take_requests();
  void start_lookup(Request request);
  void complete(const std::string& host, const Result<Addresses>& result, Clock::duration ttl);
  void run_system_lookups();
  void expire_lookups();
  int poll_timeout_ms();
  void fail_everything(const std::string& why);
  void init_ares();
  static void on_addrinfo(void* arg, int status, int timeouts, ares_addrinfo* res);
};


namespace {

// c-ares makes its sockets close-on-exec only after creating them, and it runs on the
// resolver's thread while the control thread may fork a successor: create them so.
ares_socket_t cloexec_socket(int domain, int type, int protocol, void*) {
  return ::socket(domain, type | SOCK_CLOEXEC, protocol);
}
int plain_close(ares_socket_t fd, void*) { return ::close(fd); }
int plain_connect(ares_socket_t fd, const sockaddr* addr, ares_socklen_t len, void*) { return ::connect(fd, addr, len); }
ares_ssize_t plain_recvfrom(ares_socket_t fd, void* data, size_t len, int flags, sockaddr* from, ares_socklen_t* from_len,
                            void*) {
  return ::recvfrom(fd, data, len, flags, from, from_len);
}
ares_ssize_t plain_sendv(ares_socket_t fd, const iovec* iov, int count, void*) { return ::writev(fd, iov, count); }

const ares_socket_functions kCloexecSockets{cloexec_socket, plain_close, plain_connect, plain_recvfrom, plain_sendv};

}  // namespace

Resolver::Impl::Impl(const config::Resolver& config) : config_(config) {
  // Go's resolver semantics: `attempts` rounds over all servers, `timeout` per try.
  // c-ares doubles its per-try timeout after each round, so the total is enforced
  // here instead: one lookup never outlives timeout × attempts × servers.
  auto servers = std::max<std::size_t>(1, config_.servers.size());
  auto attempts = std::max(1u, config_.attempts);
  lookup_budget_ = config_.timeout * attempts * static_cast<long>(servers);

  wake_fd_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_fd_) {
    spdlog::critical("resolver: eventfd: {}", std::strerror(errno));
    std::abort();  // the process is out of fds before it started serving
  }
  if (using_ares()) init_ares();
  // spdlog's registry is a static built on first use inside libspdlog, which TSan does
  // not instrument: build it here, before the thread exists, so no two threads race
  // to it (the thread start orders it for TSan).
  spdlog::default_logger_raw();
  thread_ = std::thread([this] { run(); });
}

void Resolver::Impl::init_ares() {
  std::call_once(g_ares_library_once, [] { g_ares_library_status = ares_library_init(ARES_LIB_INIT_ALL); });
  if (g_ares_library_status != ARES_SUCCESS) {
    init_error_ = std::string("c-ares: ") + ares_strerror(g_ares_library_status);
    return;
  }
  ares_options options{};
  int mask = 0;
  // The name is queried as written: no search domains, no HOSTALIASES, and DNS only
  // ("b") so /etc/hosts cannot shadow the configured servers.
  options.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES;
  mask |= ARES_OPT_FLAGS;
  options.ndomains = 0;
  options.domains = nullptr;
  mask |= ARES_OPT_DOMAINS;
  char lookups[] = "b";
  options.lookups = lookups;  // copied by c-ares
  mask |= ARES_OPT_LOOKUPS;
  options.timeout = static_cast<int>(std::max<std::int64_t>(1, config_.timeout.count()));
  mask |= ARES_OPT_TIMEOUTMS;
  options.tries = static_cast<int>(std::max(1u, config_.attempts));
  mask |= ARES_OPT_TRIES;
  mask |= ARES_OPT_NOROTATE;  // servers are tried in the configured order

  int status = ares_init_options(&channel_, &options, mask);
  if (status != ARES_SUCCESS) {
    channel_ = nullptr;
    init_error_ = std::string("c-ares: ") + ares_strerror(status);
    return;
  }
  ares_set_socket_functions(channel_, &kCloexecSockets, nullptr);

  std::vector<ares_addr_port_node> nodes(config_.servers.size());
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    const net::Endpoint& server = config_.servers[i];
    ares_addr_port_node& node = nodes[i];
    node.next = i + 1 < nodes.size() ? &nodes[i + 1] : nullptr;
    node.udp_port = server.port;
    node.tcp_port = server.port;
    if (inet_pton(AF_INET, server.host.c_str(), &node.addr.addr4) == 1) {
      node.family = AF_INET;
    } else if (inet_pton(AF_INET6, server.host.c_str(), &node.addr.addr6) == 1) {
      node.family = AF_INET6;
    } else {
      // The config validates servers as IP literals; this only guards a caller that
      // built a config::Resolver by hand.
      init_error_ = "c-ares: server " + server.to_string() + " is not an IP address";
      return;
    }
  }
  status = ares_set_servers_ports(channel_, nodes.data());
  if (status != ARES_SUCCESS) init_error_ = std::string("c-ares: set servers: ") + ares_strerror(status);
}

std::optional<Addresses> Resolver::Impl::cached(const std::string& host) {
  auto it = cache_.find(host);
  if (it == cache_.end()) return std::nullopt;
  if (Clock::now() >= it->second.expires) {
    cache_.erase(it);
    return std::nullopt;
  }
  return it->second.addresses;
}

void Resolver::Impl::submit(Request request) {
  if (auto literal = ip_literal(request.host)) {
    deliver(request, Addresses{*literal});
    return;
  }
  {
    std::lock_guard lock(mutex_);
    if (!stopping_) {
      if (auto hit = cached(request.host)) {
        Result<Addresses> result(std::move(*hit));
        deliver(request, result);
        return;
      }
      queue_.push_back(std::move(request));
      std::uint64_t one = 1;
      // EAGAIN means the counter is already non-zero: the thread is being woken anyway.
      [[maybe_unused]] auto n = ::write(wake_fd_.get(), &one, sizeof one);
      return;
    }
  }
  deliver(request, resolve_error(request.host, "resolver stopped"));
}

void Resolver::Impl::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_.get(), &one, sizeof one);
  if (thread_.joinable()) thread_.join();
}

// Moves the queued requests into the lookup table: a cache hit (filled since the
// request was queued) is answered, a name already in flight is joined, anything
// else starts a lookup. Returns true once stop() was called.
bool Resolver::Impl::take_requests() {
  std::deque<Request> batch;
  bool stopping = false;
  {
    std::lock_guard lock(mutex_);
    batch.swap(queue_);
    stopping = stopping_;
    for (auto it = batch.begin(); it != batch.end();) {
      if (auto hit = cached(it->host)) {
        deliver(*it, Result<Addresses>(std::move(*hit)));
        it = batch.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& request : batch) {
    auto it = in_flight_.find(request.host);
    if (it != in_flight_.end()) {
      it->second.waiters.push_back(std::move(request));
    } else {
      start_lookup(std::move(request));
    }
  }
  return stopping;
}

void Resolver::Impl::start_lookup(Request request) {
  std::string host = request.host;
  Lookup& lookup = in_flight_[host];
  lookup.id = next_id_++;
  lookup.waiters.push_back(std::move(request));
  if (!using_ares()) return;  // run_system_lookups() takes it from here
  if (!init_error_.empty()) {
    complete(host, resolve_error(host, init_error_), {});
    return;
  }
  spdlog::debug("resolver: query {}", host);
  lookup.deadline = Clock::now() + lookup_budget_;
  ares_addrinfo_hints hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  // Registered before the call: c-ares may answer synchronously (a malformed name),
  // and on_addrinfo must find the lookup then too.
  auto* query = new AresQuery{this, host, lookup.id};
  ares_getaddrinfo(channel_, host.c_str(), nullptr, &hints, &Impl::on_addrinfo, query);
}

void Resolver::Impl::on_addrinfo(void* arg, int status, int /*timeouts*/, ares_addrinfo* res) {
  std::unique_ptr<AresQuery> query(static_cast<AresQuery*>(arg));
  std::unique_ptr<ares_addrinfo, void (*)(ares_addrinfo*)> answer(res, [](ares_addrinfo* ai) {
    if (ai != nullptr) ares_freeaddrinfo(ai);
  });
  Impl* self = query->impl;
  auto it = self->in_flight_.find(query->host);
  if (it == self->in_flight_.end() || it->second.id != query->id) return;  // given up on already
  if (status != ARES_SUCCESS) {
    self->complete(query->host, resolve_error(query->host, ares_strerror(status)), {});
    return;
  }
  Addresses addresses;
  std::optional<int> min_ttl;
  for (const ares_addrinfo_node* node = res != nullptr ? res->nodes : nullptr; node; node = node->ai_next) {
    add_unique(addresses, node->ai_addr, node->ai_addrlen);
    min_ttl = std::min(min_ttl.value_or(node->ai_ttl), node->ai_ttl);
  }
  if (addresses.empty()) {
    self->complete(query->host, resolve_error(query->host, ares_strerror(ARES_ENODATA)), {});
    return;
  }
  Clock::duration ttl{};
  if (min_ttl.value_or(0) > 0) {
    ttl = std::clamp<Clock::duration>(std::chrono::seconds(*min_ttl), kMinTtl, kMaxTtl);
  }
  self->complete(query->host, std::move(addresses), ttl);
}

// Ends a lookup: caches a positive answer for `ttl` (zero: not at all; negative
// answers never are, so a name that comes into existence is seen at once) and posts
// the answer to everyone who joined it.
void Resolver::Impl::complete(const std::string& host, const Result<Addresses>& result, Clock::duration ttl) {
  auto it = in_flight_.find(host);
  if (it == in_flight_.end()) return;
  std::vector<Request> waiters = std::move(it->second.waiters);
  in_flight_.erase(it);
  if (result.ok()) {
    spdlog::debug("resolver: {}: {} addresses", host, result->size());
  } else {
    spdlog::debug("resolver: {}", result.error());
  }
  if (result.ok() && ttl > Clock::duration::zero()) {
    std::lock_guard lock(mutex_);
    if (cache_.size() >= kCacheSweepSize) {
      auto now = Clock::now();
      std::erase_if(cache_, [now](const auto& entry) { return now >= entry.second.expires; });
    }
    cache_[host] = CacheEntry{*result, Clock::now() + ttl};
  }
  for (auto& waiter : waiters) deliver(waiter, result);
}

// getaddrinfo blocks, so lookups run one at a time; requests that arrive meanwhile
// for the same name join it before it completes (the queue is drained after each
// call), the rest wait their turn.
void Resolver::Impl::run_system_lookups() {
  while (!in_flight_.empty()) {
    std::string host = in_flight_.begin()->first;
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    // No AI_ADDRCONFIG: it drops ::1 answers on hosts whose only IPv6 address is
    // loopback, which is exactly the test and container case.
    hints.ai_flags = 0;
    addrinfo* res = nullptr;
    spdlog::debug("resolver: getaddrinfo {}", host);
    int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
    int saved_errno = errno;
    Result<Addresses> result = Addresses{};
    if (rc != 0) {
      result = resolve_error(host, rc == EAI_SYSTEM ? std::strerror(saved_errno) : gai_strerror(rc));
    } else {
      for (const addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) add_unique(*result, ai->ai_addr, ai->ai_addrlen);
      freeaddrinfo(res);
      if (result->empty()) result = resolve_error(host, gai_strerror(EAI_NODATA));
    }
    bool stopping = take_requests();
    complete(host, result, kSystemResolverCacheTtl);
    if (stopping) return;  // run() sees stopping_ again and fails what is left
  }
}

void Resolver::Impl::expire_lookups() {
  auto now = Clock::now();
  std::vector<std::string> expired;
  for (const auto& [host, lookup] : in_flight_) {
    if (lookup.deadline && now >= *lookup.deadline) expired.push_back(host);
  }
  for (const auto& host : expired) complete(host, resolve_error(host, ares_strerror(ARES_ETIMEOUT)), {});
}

int Resolver::Impl::poll_timeout_ms() {
  std::optional<Clock::duration> wait;
  if (channel_ != nullptr) {
    timeval tv{};
    if (ares_timeout(channel_, nullptr, &tv) != nullptr) {
      wait = std::chrono::seconds(tv.tv_sec) + std::chrono::microseconds(tv.tv_usec);
    }
  }
  auto now = Clock::now();
  for (const auto& entry : in_flight_) {
    if (!entry.second.deadline) continue;
    auto left = std::max(Clock::duration::zero(), *entry.second.deadline - now);
    wait = wait ? std::min(*wait, left) : left;
  }
  if (!wait) return -1;
  // Rounded up: rounding down would spin on a sub-millisecond remainder.
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(*wait).count();
  return static_cast<int>(std::min<std::int64_t>(ms, 60'000));
}

void Resolver::Impl::fail_everything(const std::string& why) {
  std::deque<Request> queued;
  {
    std::lock_guard lock(mutex_);
    queued.swap(queue_);
  }
  for (auto& request : queued) deliver(request, resolve_error(request.host, why));
  auto lookups = std::move(in_flight_);
  in_flight_.clear();
  for (auto& [host, lookup] : lookups) {
    for (auto& waiter : lookup.waiters) deliver(waiter, resolve_error(host, why));
  }
}

void Resolver::Impl::run() {
  std::vector<pollfd> fds;
  for (;;) {
    fds.clear();
    fds.push_back(pollfd{wake_fd_.get(), POLLIN, 0});
    if (channel_ != nullptr) {
      ares_socket_t socks[ARES_GETSOCK_MAXNUM];
      int bits = ares_getsock(channel_, socks, ARES_GETSOCK_MAXNUM);
      for (int i = 0; i < ARES_GETSOCK_MAXNUM; ++i) {
        short events = 0;
        if (ARES_GETSOCK_READABLE(bits, i)) events |= POLLIN;
        if (ARES_GETSOCK_WRITABLE(bits, i)) events |= POLLOUT;
        if (events != 0) fds.push_back(pollfd{socks[i], events, 0});
      }
    }
    int n = ::poll(fds.data(), fds.size(), poll_timeout_ms());
    if (n < 0 && errno != EINTR) {
      spdlog::critical("resolver: poll: {}", std::strerror(errno));
      std::abort();  // only our own fds are polled: a failure here is a bug
    }
    if (n > 0 && (fds[0].revents & POLLIN) != 0) {
      std::uint64_t count = 0;
      [[maybe_unused]] auto r = ::read(wake_fd_.get(), &count, sizeof count);
    }
    // Requests first: one made before an answer arrived joins its lookup instead of
    // starting another after it (with a zero TTL nothing would be cached to hit).
    bool stopping = take_requests();
    if (channel_ != nullptr) {
      for (std::size_t i = 1; n > 0 && i < fds.size(); ++i) {
        short re = fds[i].revents;
        if (re == 0) continue;
        ares_socket_t readable = (re & (POLLIN | POLLERR | POLLHUP)) != 0 ? fds[i].fd : ARES_SOCKET_BAD;
        ares_socket_t writable = (re & POLLOUT) != 0 ? fds[i].fd : ARES_SOCKET_BAD;
        ares_process_fd(channel_, readable, writable);
      }
      ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // retries and c-ares timeouts
      expire_lookups();
    }
    if (!stopping && !using_ares()) run_system_lookups();
    {
      std::lock_guard lock(mutex_);
      stopping = stopping_;
    }
    if (stopping) break;
  }
  fail_everything("resolver stopped");
  // Cancels what c-ares still has; on_addrinfo finds no lookups left and only frees.
  if (channel_ != nullptr) {
    ares_destroy(channel_);
    channel_ = nullptr;
  }
}

Resolver::Resolver(const config::Resolver& config) : impl_(std::make_shared<Impl>(config)) {}

Resolver::~Resolver() { impl_->stop(); }

void Resolver::resolve(const std::string& host, std::uint16_t port, boost::asio::any_io_executor executor,
                       Callback callback) {
  impl_->submit(Request{host, port, std::move(executor), std::move(callback)});
}

namespace {

// A coroutine of its own, taking everything by value: asio's awaitables start lazily,
// so async_resolve's `const std::string&` may be gone by the time the body runs.
// Templated only to name the private Impl type without declaring it in the header.
template <class ImplPtr>
boost::asio::awaitable<Result<Addresses>> resolve_coroutine(ImplPtr impl, std::string host, std::uint16_t port) {
  auto executor = co_await boost::asio::this_coro::executor;
  co_return co_await boost::asio::async_initiate<const boost::asio::use_awaitable_t<>&, void(Result<Addresses>)>(
      [&](auto handler) {
        // std::function needs a copyable target; the coroutine's handler is move-only.
        auto shared = std::make_shared<decltype(handler)>(std::move(handler));
        impl->submit(Request{host, port, executor, [shared](Result<Addresses> result) {
                               std::move (*shared)(std::move(result));
                             }});
      },
      boost::asio::use_awaitable);
}

}  // namespace

boost::asio::awaitable<Result<Addresses>> Resolver::async_resolve(const std::string& host, std::uint16_t port) {
  return resolve_coroutine(impl_, host, port);
}

}  // namespace echorelay::upstream
