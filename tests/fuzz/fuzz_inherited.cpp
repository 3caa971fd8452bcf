// Inherited-socket matching (daemon/listen/match.*, the decision inside
// InheritedSockets::take): any combination of LISTEN_FDNAMES names, socket types and
// bound addresses against any list of listeners is matched or refused, and
//   - no socket goes to two listeners (never two listeners on one fd),
//   - a listener adopts only sockets of its type, by its name (address equal, or only
//     the port differing when it asks for port 0) or else by exact address identity,
//   - it adopts all of them (an SO_REUSEPORT group stays together), and by name first:
//     address matches are used only when no named socket fits,
// checked against the straightforward reference below.
#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_input.hpp"
#include "listen/match.hpp"

namespace {

using namespace echorelay;
using listen::InheritedFacts;

const char* const kNames[] = {"echo", "udp", "relay", "admin", "", "echo-2", "unix"};
// Addresses a listener may ask for and a socket may be bound to ("…:0" only in specs:
// a bound socket always has a port).
const char* const kAddresses[] = {"127.0.0.1:7000", "127.0.0.1:7001", "0.0.0.0:7000",  "[::1]:7000",
                                  "[::]:7000",      "127.0.0.1:0",    "[::1]:0",       "/run/e.sock",
                                  "/run/f.sock",    "@abstract",      "@abstract2",    "[::ffff:127.0.0.1]:7000"};

net::Endpoint endpoint(std::size_t i) { return net::parse_endpoint(kAddresses[i]).value(); }

config::Listener make_listener(fuzz::Input& in) {
  config::Listener l;
  l.name = kNames[in.pick(std::size(kNames))];
  l.endpoint = endpoint(in.pick(std::size(kAddresses)));
  if (l.endpoint.is_unix()) {
    l.protocol = config::Protocol::Unix;
  } else {
    l.protocol = in.flag() ? config::Protocol::Tcp : config::Protocol::Udp;
  }
  return l;
}

InheritedFacts make_socket(fuzz::Input& in) {
  InheritedFacts s;
  s.name = kNames[in.pick(std::size(kNames))];
  s.available = in.pick(8) != 0;
  const auto kind = in.pick(8);
  if (kind == 0) return s;  // identify_socket failed
  s.type = kind % 2 ? SOCK_STREAM : SOCK_DGRAM;
  net::Endpoint local = endpoint(in.pick(std::size(kAddresses)));
  if (!local.is_unix() && local.port == 0) local.port = static_cast<std::uint16_t>(30000 + in.pick(3));
  s.local = local;
  return s;
}

bool same_type(const config::Listener& l, const InheritedFacts& s) {
  return s.type && *s.type == (l.is_stream() ? SOCK_STREAM : SOCK_DGRAM);
}

bool by_address(const config::Listener& l, const InheritedFacts& s) {
  // Port 0 asks for any port: an address alone cannot identify that socket.
  if (l.endpoint.kind == net::Endpoint::Kind::Inet && l.endpoint.port == 0) return false;
  return s.available && same_type(l, s) && s.local && *s.local == l.endpoint;
}

bool by_name(const config::Listener& l, const InheritedFacts& s) {
  if (!s.available || !same_type(l, s) || !s.local || s.name != l.name) return false;
  if (l.endpoint.kind == net::Endpoint::Kind::Inet && l.endpoint.port == 0) {
    net::Endpoint local = *s.local;
    local.port = 0;
    return local == l.endpoint;
  }
  return *s.local == l.endpoint;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  std::vector<InheritedFacts> sockets(in.pick(10));
  for (auto& s : sockets) s = make_socket(in);
  std::vector<config::Listener> listeners(1 + in.pick(6));
  for (auto& l : listeners) l = make_listener(in);

  std::vector<int> owner(sockets.size(), -1);
  for (std::size_t li = 0; li < listeners.size(); ++li) {
    const config::Listener& l = listeners[li];
    const auto taken = listen::match_inherited(l, sockets);

    // The reference: by name if any fits, else by address.
    std::vector<std::size_t> want;
    for (std::size_t i = 0; i < sockets.size(); ++i) {
      if (by_name(l, sockets[i])) want.push_back(i);
    }
    if (want.empty()) {
      for (std::size_t i = 0; i < sockets.size(); ++i) {
        if (by_address(l, sockets[i])) want.push_back(i);
      }
    }
    FUZZ_CHECK(taken == want);

    for (std::size_t k = 0; k < taken.size(); ++k) {
      const std::size_t i = taken[k];
      FUZZ_CHECK(i < sockets.size());
      FUZZ_CHECK(k == 0 || taken[k - 1] < i);  // ascending, so no index twice
      FUZZ_CHECK(owner[i] == -1);               // never two listeners on one fd
      FUZZ_CHECK(sockets[i].available);
      FUZZ_CHECK(same_type(l, sockets[i]));
      owner[i] = static_cast<int>(li);
      sockets[i].available = false;  // take() moves the fd out
    }
  }
  // A socket nobody took is still available (close_unclaimed closes it); a taken one is not.
  for (std::size_t i = 0; i < sockets.size(); ++i) {
    if (owner[i] != -1) FUZZ_CHECK(!sockets[i].available);
  }
  return 0;
}
