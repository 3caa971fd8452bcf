// Name resolution for relay upstreams, off the event loops: the system resolver
// (getaddrinfo) when [resolver] servers is empty, else c-ares against those servers
// with `timeout` and `attempts`. Answers are cached for their TTL (c-ares) or a short
// fixed time (system resolver, which reports no TTL), so a changed record is followed
// without a restart. IP literals never reach the resolver thread.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "net/endpoint.hpp"
#include "util/result.hpp"

namespace echorelay::upstream {

// How long a system-resolver answer is reused (getaddrinfo gives no TTL).
inline constexpr auto kSystemResolverCacheTtl = std::chrono::seconds(5);

using Addresses = std::vector<net::SockAddr>;

class Resolver {
 public:
  // Starts the resolver thread. Thread-safe: any thread may call resolve().
  explicit Resolver(const config::Resolver& config);
  ~Resolver();  // joins the thread; pending callbacks get an error
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  using Callback = std::function<void(Result<Addresses>)>;
  // Addresses of `host` (a name or an IP literal) with `port` filled in, in the order
  // the resolver ranks them (RFC 6724). The callback is posted to `executor`. Errors
  // read like "resolve example.invalid: Domain name not found".
  void resolve(const std::string& host, std::uint16_t port, boost::asio::any_io_executor executor, Callback callback);

  // Coroutine form of resolve() on the calling coroutine's executor.
  boost::asio::awaitable<Result<Addresses>> async_resolve(const std::string& host, std::uint16_t port);

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace echorelay::upstream
