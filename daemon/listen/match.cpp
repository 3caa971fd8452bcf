// Inherited-socket matching; see match.hpp. Pure: no sockets, no logging.
#include "listen/match.hpp"

#include <sys/socket.h>

namespace echorelay::listen {

std::vector<std::size_t> match_inherited(const config::Listener& spec, const std::vector<InheritedFacts>& sockets) {
  std::vector<std::size_t> taken;
  // The canonical form of the spec's address, as getsockname would report it.
  auto addr = net::to_sockaddr(spec.endpoint);
  if (!addr) return taken;
  const net::Endpoint want = net::from_sockaddr(addr->get(), addr->len);
  const int type = spec.is_stream() ? SOCK_STREAM : SOCK_DGRAM;
  const bool any_port = want.kind == net::Endpoint::Kind::Inet && want.port == 0;
  auto fits = [&](const InheritedFacts& s, bool by_name) {
    if (!s.available || !s.type || !s.local || *s.type != type) return false;
    if (any_port) {
      // Port 0 means "any port": the name identifies the socket (a test's or a
      // reload's port-0 listener keeps its port), but an address alone cannot.
      net::Endpoint local = *s.local;
      local.port = 0;
      return by_name && local == want;
    }
    return *s.local == want;
  };
  for (std::size_t i = 0; i < sockets.size(); ++i) {
    if (sockets[i].name == spec.name && fits(sockets[i], true)) taken.push_back(i);
  }
  if (!taken.empty()) return taken;
  for (std::size_t i = 0; i < sockets.size(); ++i) {
    if (fits(sockets[i], false)) taken.push_back(i);
  }
  return taken;
}

}  // namespace echorelay::listen
