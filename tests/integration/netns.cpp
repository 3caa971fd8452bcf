// Implementation of netns.hpp: each step is one `ip` or `tc` command run to completion.
#include "netns.hpp"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>

namespace echorelay::test {

bool enter_netns(const std::string& name) {
  Fd ns(::open(("/var/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC));
  return ns && ::setns(ns.get(), CLONE_NEWNET) == 0;
}

NetNs::NetNs() : NetNs(Options{}) {}

NetNs::NetNs(Options options) : name_(unique_name(options.prefix)) {
  ok_ = true;
  step({"/usr/sbin/ip", "netns", "add", name_});
  created_ = ok_;
  ip({"link", "set", "lo", "up"});
  if (options.multicast_route) ip({"route", "add", "224.0.0.0/4", "dev", "lo"});
}

NetNs::~NetNs() {
  if (!host_end_.empty()) run_process({"/usr/sbin/ip", "link", "del", host_end_});
  if (created_) run_process({"/usr/sbin/ip", "netns", "del", name_});
}

NetNs& NetNs::step(std::vector<std::string> argv) {
  if (!ok_) return *this;
  auto r = run_process(argv);
  if (r.exit_code != 0) {
    ok_ = false;
    for (const auto& a : argv) error_ += (error_.empty() ? "" : " ") + a;
    error_ += ": " + r.output;
  }
  return *this;
}

NetNs& NetNs::ip(std::vector<std::string> args) {
  args.insert(args.begin(), {"/usr/sbin/ip", "-n", name_});
  return step(std::move(args));
}

NetNs& NetNs::veth(const std::string& end, const std::string& peer_end) {
  ip({"link", "add", end, "type", "veth", "peer", "name", peer_end});
  ip({"link", "set", peer_end, "up"});
  return ip({"link", "set", end, "up"});
}

NetNs& NetNs::veth(const std::string& end, const std::string& peer_end, NetNs& peer) {
  ip({"link", "add", end, "type", "veth", "peer", "name", peer_end, "netns", peer.name()});
  peer.ip({"link", "set", peer_end, "up"});
  if (!peer.ok() && ok_) {
    ok_ = false;
    error_ = peer.error();
  }
  return ip({"link", "set", end, "up"});
}

NetNs& NetNs::address(const std::string& dev, const std::string& cidr) {
  if (cidr.find(':') != std::string::npos) return ip({"-6", "addr", "add", cidr, "dev", dev, "nodad"});
  return ip({"addr", "add", cidr, "dev", dev});
}

NetNs& NetNs::link_to_host(const std::string& end) {
  static std::atomic<unsigned> counter{0};
  const unsigned n = counter++;
  const auto pid = static_cast<unsigned>(::getpid());
  // At most 15 bytes: "er" + 7 digits of pid + "h" + the counter.
  host_end_ = "er" + std::to_string(pid) + "h" + std::to_string(n % 100000);
  const unsigned slot = (pid % 4096) * 4 + n % 4;  // /30s: 16384 of them in a /16
  const std::string prefix = "198.19." + std::to_string(slot / 64) + ".";
  host_ip_ = prefix + std::to_string((slot % 64) * 4 + 1);
  inside_ip_ = prefix + std::to_string((slot % 64) * 4 + 2);
  step({"/usr/sbin/ip", "link", "add", host_end_, "type", "veth", "peer", "name", end, "netns", name_});
  step({"/usr/sbin/ip", "addr", "add", host_ip_ + "/30", "dev", host_end_});
  address(end, inside_ip_ + "/30");
  step({"/usr/sbin/ip", "link", "set", host_end_, "up"});
  return ip({"link", "set", end, "up"});
}

::testing::AssertionResult NetNs::set_host_end(bool up) {
  auto r = run_process({"/usr/sbin/ip", "link", "set", host_end_, up ? "up" : "down"});
  if (r.exit_code != 0) return ::testing::AssertionFailure() << "ip link set " << host_end_ << ": " << r.output;
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult NetNs::shape(const std::string& dev, const std::string& rate, const std::string& limit) {
  auto r = run_process({"/usr/sbin/tc", "-n", name_, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst",
                        "16kb", "limit", limit});
  if (r.exit_code != 0) return ::testing::AssertionFailure() << "tc qdisc add: " << r.output;
  return ::testing::AssertionSuccess();
}

double metric_in(const std::string& netns, const std::string& admin, std::string_view name, const Labels& labels,
                 double fallback) {
  return run_in_netns(netns, [&] { return metric_or(admin, name, labels, fallback); });
}

::testing::AssertionResult wait_metric_in(const std::string& netns, const std::string& admin, std::string_view name,
                                          const Labels& labels, double expected, Millis timeout) {
  return run_in_netns(netns, [&] { return wait_metric(admin, name, labels, expected, timeout); });
}

}  // namespace echorelay::test
