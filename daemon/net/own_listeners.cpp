// net::own; see own_listeners.hpp.
#include "net/own_listeners.hpp"

#include <ifaddrs.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <array>
#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace echorelay::net::own {
namespace {

struct Entry {
  int type = 0;
  int family = 0;
  in6_addr ip{};  // IPv4 v4-mapped
  bool wildcard = false;
  std::uint16_t port = 0;
  std::string unix_name;  // sun_path bytes as bound (abstract: leading NUL)
  bool relay = false;
};

std::mutex g_mutex;
std::vector<Entry> g_entries;
std::array<std::atomic<std::uint64_t>, 65536 / 64> g_udp_ports{};

// IPv4 as v4-mapped IPv6, so one comparison serves both families.
bool mapped(const sockaddr* a, in6_addr& out, std::uint16_t* port = nullptr) {
  if (a->sa_family == AF_INET) {
    sockaddr_in in4;
    std::memcpy(&in4, a, sizeof in4);
    out = in6_addr{};
    out.s6_addr[10] = 0xff;
    out.s6_addr[11] = 0xff;
    std::memcpy(&out.s6_addr[12], &in4.sin_addr, 4);
    if (port) *port = ntohs(in4.sin_port);
    return true;
  }
  if (a->sa_family == AF_INET6) {
    sockaddr_in6 in6;
    std::memcpy(&in6, a, sizeof in6);
    out = in6.sin6_addr;
    if (port) *port = ntohs(in6.sin6_port);
    return true;
  }
  return false;
}

bool same(const in6_addr& a, const in6_addr& b) { return std::memcmp(&a, &b, sizeof a) == 0; }

bool is_loopback(const in6_addr& a) {
  if (IN6_IS_ADDR_LOOPBACK(&a)) return true;
  return IN6_IS_ADDR_V4MAPPED(&a) && a.s6_addr[12] == 127;
}

bool is_wildcard(const in6_addr& a) {
  if (IN6_IS_ADDR_UNSPECIFIED(&a)) return true;
  return IN6_IS_ADDR_V4MAPPED(&a) && a.s6_addr[12] == 0 && a.s6_addr[13] == 0 && a.s6_addr[14] == 0 &&
         a.s6_addr[15] == 0;
}

// The local interface addresses, read once, when first needed.
const std::vector<in6_addr>& local_addresses() {
  static const std::vector<in6_addr> addresses = [] {
    std::vector<in6_addr> out;
    ifaddrs* list = nullptr;
    if (::getifaddrs(&list) != 0) return out;
    for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
      in6_addr a{};
      if (i->ifa_addr != nullptr && mapped(i->ifa_addr, a)) out.push_back(a);
    }
    ::freeifaddrs(list);
    return out;
  }();
  return addresses;
}

// connect() to a wildcard address reaches the loopback address of its family.
bool is_local(const in6_addr& a) {
  if (is_loopback(a) || is_wildcard(a)) return true;
  for (const in6_addr& l : local_addresses()) {
    if (same(l, a)) return true;
  }
  return false;
}

}  // namespace

void add_listener(int fd, bool relay) {
  Entry e;
  e.relay = relay;
  socklen_t len = sizeof e.type;
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &e.type, &len) != 0) return;
  sockaddr_storage addr{};
  len = sizeof addr;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return;
  e.family = addr.ss_family;
  if (addr.ss_family == AF_UNIX) {
    const auto& un = reinterpret_cast<const sockaddr_un&>(addr);
    const std::size_t n = len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
    e.unix_name.assign(un.sun_path, n);
    while (!e.unix_name.empty() && e.unix_name[0] != '\0' && e.unix_name.back() == '\0') e.unix_name.pop_back();
  } else if (mapped(reinterpret_cast<const sockaddr*>(&addr), e.ip, &e.port)) {
    e.wildcard = is_wildcard(e.ip);
    if (e.type == SOCK_DGRAM) {
      g_udp_ports[e.port / 64].fetch_or(std::uint64_t{1} << (e.port % 64), std::memory_order_relaxed);
    }
  } else {
    return;
  }
  std::lock_guard lock(g_mutex);
  g_entries.push_back(std::move(e));
}

bool is_our_udp_port(std::uint16_t port) {
  return ((g_udp_ports[port / 64].load(std::memory_order_relaxed) >> (port % 64)) & 1U) != 0;
}

bool is_our_udp_address(const sockaddr_storage& from, const sockaddr_storage* destination) {
  in6_addr source{};
  std::uint16_t port = 0;
  if (!mapped(reinterpret_cast<const sockaddr*>(&from), source, &port) || !is_our_udp_port(port)) return false;
  in6_addr to{};
  if (destination && mapped(reinterpret_cast<const sockaddr*>(destination), to) && same(to, source)) return true;
  return is_local(source);
}

bool reaches_own_relay(const sockaddr* addr, socklen_t len, int type) {
  std::string unix_name;
  in6_addr ip{};
  std::uint16_t port = 0;
  if (addr->sa_family == AF_UNIX) {
    const auto* un = reinterpret_cast<const sockaddr_un*>(addr);
    const std::size_t n = len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
    unix_name.assign(un->sun_path, n);
    while (!unix_name.empty() && unix_name[0] != '\0' && unix_name.back() == '\0') unix_name.pop_back();
  } else if (!mapped(addr, ip, &port)) {
    return false;
  }
  std::lock_guard lock(g_mutex);
  for (const Entry& e : g_entries) {
    if (!e.relay || e.type != type) continue;
    if (addr->sa_family == AF_UNIX) {
      if (e.family == AF_UNIX && e.unix_name == unix_name) return true;
      continue;
    }
    if (e.family == AF_UNIX || e.port != port) continue;
    if (same(e.ip, ip) || (is_wildcard(ip) && is_loopback(e.ip))) return true;
    if (e.wildcard && is_local(ip)) return true;
  }
  return false;
}

}  // namespace echorelay::net::own
