// Multicast group membership and sending options for a freshly bound socket.
// Inherited sockets keep their memberships, so this runs only on fresh binds.
#pragma once

#include "config/config.hpp"
#include "util/result.hpp"

namespace echorelay::net {

// Joins listener.endpoint's group (IPv4 or IPv6) on listener.interface, or on every
// up, multicast-capable interface when unset; sets TTL/hops, loopback and, when an
// interface is named, the outgoing interface. Errors name the call and the errno.
Result<void> join_multicast(int fd, const config::Listener& listener);

// The sending options of a multicast listener (ttl as TTL/hops, loopback, interface as
// the outgoing interface) on a socket of `family` that may send to groups: the
// listener's own, and a multicast relay's fan-out sockets, whose upstreams may be
// groups themselves.
Result<void> set_multicast_sending(int fd, int family, const config::Listener& listener);

}  // namespace echorelay::net
