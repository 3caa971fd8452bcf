// Thin, error-reporting wrappers over setsockopt/getsockopt/getsockname.
#include "net/socket_options.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <cerrno>
#include <cstring>

namespace echorelay::net {

std::string errno_text(int err) { return std::strerror(err); }

Result<void> set_int_option(int fd, int level, int name, int value, const char* what) {
  if (::setsockopt(fd, level, name, &value, sizeof value) != 0) {
    return make_error(std::string("setsockopt ") + what + ": " + errno_text(errno));
  }
  return {};
}

Result<void> set_keepalive(int fd, std::chrono::seconds period) {
  if (period.count() <= 0) return set_int_option(fd, SOL_SOCKET, SO_KEEPALIVE, 0, "SO_KEEPALIVE");
  if (auto r = set_int_option(fd, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE"); !r) return r;
  const int secs = static_cast<int>(period.count());
  if (auto r = set_int_option(fd, IPPROTO_TCP, TCP_KEEPIDLE, secs, "TCP_KEEPIDLE"); !r) return r;
  return set_int_option(fd, IPPROTO_TCP, TCP_KEEPINTVL, secs, "TCP_KEEPINTVL");
}

Result<void> set_linger(int fd, int seconds) {
  if (seconds < 0) return {};
  linger l{1, seconds};
  if (::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l) != 0) {
    return make_error("setsockopt SO_LINGER: " + errno_text(errno));
  }
  return {};
}

Result<SocketIdentity> identify_socket(int fd) {
  SocketIdentity id;
  socklen_t len = sizeof(int);
  if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &id.domain, &len) != 0) {
    return make_error("getsockopt SO_DOMAIN: " + errno_text(errno));
  }
  len = sizeof(int);
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &id.type, &len) != 0) {
    return make_error("getsockopt SO_TYPE: " + errno_text(errno));
  }
  int accepting = 0;
  len = sizeof(int);
  if (::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) == 0) id.listening = accepting != 0;
  SockAddr addr;
  addr.len = sizeof addr.storage;
  if (::getsockname(fd, addr.get(), &addr.len) != 0) {
    return make_error("getsockname: " + errno_text(errno));
  }
  id.local = from_sockaddr(addr.get(), addr.len);
  return id;
}

}  // namespace echorelay::net
