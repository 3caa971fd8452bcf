// Multicast membership and sending options for a freshly bound socket: join the
// listener's group on the named interface (or on every up, multicast-capable one),
// then TTL/hops, loopback and the outgoing interface. Binding is listen/'s job.
#include "net/multicast.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "net/socket_options.hpp"

namespace echorelay::net {
namespace {

struct Interface {
  unsigned index;
  std::string name;
};

// Every interface that is up and multicast-capable, once each (getifaddrs lists an
// interface once per address family and address).
std::vector<Interface> multicast_interfaces() {
  std::vector<Interface> out;
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return out;
  for (const ifaddrs* it = list; it != nullptr; it = it->ifa_next) {
    if ((it->ifa_flags & IFF_UP) == 0 || (it->ifa_flags & IFF_MULTICAST) == 0) continue;
    const unsigned index = ::if_nametoindex(it->ifa_name);
    if (index == 0) continue;
    if (std::any_of(out.begin(), out.end(), [&](const Interface& i) { return i.index == index; })) continue;
    out.push_back({index, it->ifa_name});
  }
  ::freeifaddrs(list);
  return out;
}

Result<void> set_option(int fd, int level, int name, const void* value, socklen_t len, const char* option,
                        const std::string& group) {
  if (::setsockopt(fd, level, name, value, len) == 0) return {};
  return make_error("setsockopt " + std::string(option) + " for multicast " + group + ": " + errno_text(errno));
}

Result<void> join_one(int fd, bool v6, const in_addr& group4, const in6_addr& group6, const Interface& iface,
                      const std::string& group) {
  int rc = 0;
  if (v6) {
    ipv6_mreq mreq{};
    mreq.ipv6mr_multiaddr = group6;
    mreq.ipv6mr_interface = iface.index;
    rc = ::setsockopt(fd, IPPROTO_IPV6, IPV6_JOIN_GROUP, &mreq, sizeof mreq);
  } else {
    ip_mreqn mreq{};
    mreq.imr_multiaddr = group4;
    mreq.imr_ifindex = static_cast<int>(iface.index);
    rc = ::setsockopt(fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mreq, sizeof mreq);
  }
  if (rc == 0) return {};
  return make_error("join multicast " + group + " on " + iface.name + ": " + errno_text(errno));
}

}  // namespace

Result<void> join_multicast(int fd, const config::Listener& listener) {
  const std::string& group = listener.endpoint.host;
  in_addr group4{};
  in6_addr group6{};
  bool v6 = false;
  if (::inet_pton(AF_INET, group.c_str(), &group4) == 1) {
    if (!IN_MULTICAST(ntohl(group4.s_addr))) return make_error("multicast group " + group + ": not a multicast address");
  } else if (::inet_pton(AF_INET6, group.c_str(), &group6) == 1) {
    if (!IN6_IS_ADDR_MULTICAST(&group6)) return make_error("multicast group " + group + ": not a multicast address");
    v6 = true;
  } else {
    return make_error("multicast group \"" + group + "\": not an IP address");
  }

  std::vector<Interface> targets;
  if (!listener.interface.empty()) {
    const unsigned index = ::if_nametoindex(listener.interface.c_str());
    if (index == 0) return make_error("multicast interface \"" + listener.interface + "\": no such interface");
    targets.push_back({index, listener.interface});
  } else {
    targets = multicast_interfaces();
    if (targets.empty()) return make_error("join multicast " + group + ": no interface is up and multicast-capable");
  }

  // A named interface must work; with every interface, one that refuses (no address
  // yet, a tunnel) must not keep the listener from the others.
  std::string first_error;
  std::size_t joined = 0;
  for (const auto& iface : targets) {
    auto r = join_one(fd, v6, group4, group6, iface, group);
    if (r) {
      ++joined;
    } else if (!listener.interface.empty()) {
      return r;
    } else if (first_error.empty()) {
      first_error = r.error();
    }
  }
  if (joined == 0) return make_error(first_error);

  const int off = 0;
  // Deliver only the groups this socket joined, not every group any socket on the host
  // joined (Linux's default for a wildcard-bound socket).
  if (v6) {
    if (auto r = set_option(fd, IPPROTO_IPV6, IPV6_MULTICAST_ALL, &off, sizeof off, "IPV6_MULTICAST_ALL", group); !r)
      return r;
  } else {
    if (auto r = set_option(fd, IPPROTO_IP, IP_MULTICAST_ALL, &off, sizeof off, "IP_MULTICAST_ALL", group); !r)
      return r;
  }
  return set_multicast_sending(fd, v6 ? AF_INET6 : AF_INET, listener);
}

Result<void> set_multicast_sending(int fd, int family, const config::Listener& listener) {
  const std::string& group = listener.address;
  const int hops = listener.ttl;
  const int loop = listener.loopback ? 1 : 0;
  int index = 0;
  if (!listener.interface.empty()) {
    index = static_cast<int>(::if_nametoindex(listener.interface.c_str()));
    if (index == 0) return make_error("interface " + listener.interface + ": " + errno_text(errno));
  }
  if (family == AF_INET6) {
    if (auto r = set_option(fd, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, &hops, sizeof hops, "IPV6_MULTICAST_HOPS", group); !r)
      return r;
    if (auto r = set_option(fd, IPPROTO_IPV6, IPV6_MULTICAST_LOOP, &loop, sizeof loop, "IPV6_MULTICAST_LOOP", group); !r)
      return r;
    if (index != 0) {
      if (auto r = set_option(fd, IPPROTO_IPV6, IPV6_MULTICAST_IF, &index, sizeof index, "IPV6_MULTICAST_IF", group); !r)
        return r;
    }
  } else {
    if (auto r = set_option(fd, IPPROTO_IP, IP_MULTICAST_TTL, &hops, sizeof hops, "IP_MULTICAST_TTL", group); !r)
      return r;
    if (auto r = set_option(fd, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop, "IP_MULTICAST_LOOP", group); !r)
      return r;
    if (index != 0) {
      ip_mreqn mreq{};
      mreq.imr_ifindex = index;
      if (auto r = set_option(fd, IPPROTO_IP, IP_MULTICAST_IF, &mreq, sizeof mreq, "IP_MULTICAST_IF", group); !r)
        return r;
    }
  }
  return {};
}

}  // namespace echorelay::net
