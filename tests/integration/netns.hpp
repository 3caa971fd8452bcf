// The one network-namespace rig of the integration tests: a namespace of the test's
// own (unique name per test process, `lo` up, deleted in the destructor), built up in
// steps — veth pairs inside it, to another namespace or to the test's own, addresses,
// a token-bucket qdisc — and code run inside it from a short-lived thread. It runs
// `ip` and `tc`; it does not start the daemon (harness.hpp, Options::netns does).
#pragma once

#include <future>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

#include "harness.hpp"

namespace echorelay::test {

// setns() of the calling thread into /var/run/netns/NAME; false (errno set) on failure.
bool enter_netns(const std::string& name);

// Runs `f` on a short-lived thread that entered `netns` (setns changes only the calling
// thread), so sockets `f` creates live there; an empty name means this namespace.
template <class F>
auto run_in_netns(const std::string& netns, F&& f) -> std::invoke_result_t<F&> {
  using R = std::invoke_result_t<F&>;
  if (netns.empty()) return f();
  std::packaged_task<R()> task(std::forward<F>(f));
  auto result = task.get_future();
  std::thread t([&] {
    if (!enter_netns(netns)) ADD_FAILURE() << "setns into " << netns << " failed";
    task();
  });
  t.join();
  return result.get();
}

// A network namespace named unique_name(prefix) with `lo` up (IPv4 and ::1). The steps
// below each run one command; the first that fails makes ok() false and is named in
// error(), and later steps then do nothing, so a test builds its rig and checks ok()
// once. The destructor deletes the namespace (and with it every veth end inside, whose
// peers go too) and the host end of link_to_host(), on every exit path of a test.
class NetNs {
 public:
  struct Options {
    std::string prefix = "erl-ns";
    // A route for 224.0.0.0/4 on lo, so a multicast join without an interface works.
    bool multicast_route = false;
  };

  NetNs();
  explicit NetNs(Options options);
  ~NetNs();
  NetNs(const NetNs&) = delete;
  NetNs& operator=(const NetNs&) = delete;

  bool ok() const { return ok_; }
  const std::string& name() const { return name_; }
  const std::string& error() const { return error_; }

  // Runs `f` on a thread inside the namespace; returns f's result.
  template <class F>
  auto run(F&& f) const -> std::invoke_result_t<F&> {
    return run_in_netns(name_, std::forward<F>(f));
  }

  // `ip -n NAME args...`.
  NetNs& ip(std::vector<std::string> args);
  // A veth pair with both ends in this namespace, both up.
  NetNs& veth(const std::string& end, const std::string& peer_end);
  // A veth pair: `end` here, `peer_end` in `peer`, both up.
  NetNs& veth(const std::string& end, const std::string& peer_end, NetNs& peer);
  // `cidr` ("198.18.0.2/24", "2001:db8::2/64") on `dev`; IPv6 without duplicate address
  // detection (a tentative address cannot be a source: connects would fail fast).
  NetNs& address(const std::string& dev, const std::string& cidr);
  // A veth pair to the test's own namespace: `end` here with inside_ip(), the other end
  // (host_end(), a name unique to this process) there with host_ip(), a /30 of
  // 198.19.0.0/16 chosen by pid (tests using it also run serially); both up.
  NetNs& link_to_host(const std::string& end);
  const std::string& inside_ip() const { return inside_ip_; }
  const std::string& host_ip() const { return host_ip_; }
  const std::string& host_end() const { return host_end_; }
  // Takes the host end down (or up): every peer on the test's side vanishes for the
  // namespace without a FIN or a reset.
  ::testing::AssertionResult set_host_end(bool up);

  // A token bucket on `dev`'s way out: a slow link.
  ::testing::AssertionResult shape(const std::string& dev, const std::string& rate, const std::string& limit);

 private:
  NetNs& step(std::vector<std::string> argv);

  std::string name_;
  std::string error_;
  bool created_ = false;
  bool ok_ = false;
  std::string host_end_;
  std::string host_ip_;
  std::string inside_ip_;
};

#define REQUIRE_NETNS(ns) ASSERT_TRUE((ns).ok()) << "network namespace: " << (ns).error()

// metric_or and wait_metric for an admin endpoint inside `netns`.
double metric_in(const std::string& netns, const std::string& admin, std::string_view name, const Labels& labels,
                 double fallback = -1);
::testing::AssertionResult wait_metric_in(const std::string& netns, const std::string& admin, std::string_view name,
                                          const Labels& labels, double expected, Millis timeout = kIoTimeout);

}  // namespace echorelay::test
