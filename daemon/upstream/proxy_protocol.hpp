// PROXY protocol headers (HAProxy's proxy-protocol.txt, v1 text and v2 binary) that a
// relay sends to its upstream before any client byte. Pure functions, unit-tested
// byte for byte.
#pragma once

#include <sys/socket.h>

#include <string>

namespace echorelay::upstream {

// "PROXY TCP4 src dst sport dport\r\n", "PROXY TCP6 ...", or "PROXY UNKNOWN\r\n" when
// either side is not IP (Unix clients).
std::string proxy_v1_header(const sockaddr* source, socklen_t source_len, const sockaddr* destination,
                            socklen_t destination_len);

// The 12-byte signature, version 2 + PROXY command, family/transport (TCP or UDP over
// IPv4/IPv6, or UNIX stream/dgram with both paths, abstract names with their leading
// NUL), length, addresses. `datagram` selects UDP / UNIX-dgram.
std::string proxy_v2_header(const sockaddr* source, socklen_t source_len, const sockaddr* destination,
                            socklen_t destination_len, bool datagram);

}  // namespace echorelay::upstream
