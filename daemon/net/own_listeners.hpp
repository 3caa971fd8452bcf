// The addresses this process listens on, for the loops an echo and relay daemon can
// make with itself: a UDP datagram from one of our own listening addresses is an
// answer of ours coming back, and a relay whose upstream is one of our own relay
// listeners chains into itself until every fd is used. app/ registers every listening
// socket before any of them serves; afterwards the registry is only read.
#pragma once

#include <sys/socket.h>

#include <cstdint>

namespace echorelay::net::own {

// Records the bound address of listening socket `fd` (TCP, UDP or Unix). Call before
// serving starts.
void add_listener(int fd, bool relay);

// One of our UDP ports (echo or relay listener), whatever the address.
bool is_our_udp_port(std::uint16_t port);

// A datagram source that is one of our listening UDP addresses: one of our ports, from
// a local address (loopback, `destination`, the address the datagram was sent to, when
// given, or an address of a local interface).
bool is_our_udp_address(const sockaddr_storage& from, const sockaddr_storage* destination);

// Whether connecting a socket of `type` (SOCK_STREAM / SOCK_DGRAM) to `addr` reaches one
// of our own relay listeners: the same Unix path or abstract name, or an IP address and
// port one of them is bound to (a wildcard bind: the port from any local address).
bool reaches_own_relay(const sockaddr* addr, socklen_t len, int type);

}  // namespace echorelay::net::own
