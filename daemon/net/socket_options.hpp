// Socket-option and socket-identity helpers shared by listen/, echo/ and udp/.
// Every failure names the option and the errno, Go OpError style.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <string>

#include "net/endpoint.hpp"
#include "util/result.hpp"

namespace echorelay::net {

// "setsockopt SO_REUSEPORT: Bad file descriptor"
Result<void> set_int_option(int fd, int level, int name, int value, const char* what);
// SO_KEEPALIVE on/off, and the idle time and probe interval both set to `period`
// (as Go's net.Dialer KeepAlive does); a zero period turns keepalive off.
Result<void> set_keepalive(int fd, std::chrono::seconds period);
// -1 leaves the kernel default, 0 resets on close, n > 0 lingers n seconds.
Result<void> set_linger(int fd, int seconds);

// What a socket is, read back from the kernel: used to adopt inherited sockets by
// identity and to report the real bound address (port 0 binds).
struct SocketIdentity {
  int domain = 0;  // SO_DOMAIN: AF_INET, AF_INET6, AF_UNIX
  int type = 0;    // SO_TYPE: SOCK_STREAM, SOCK_DGRAM
  bool listening = false;  // SO_ACCEPTCONN
  Endpoint local;
};
Result<SocketIdentity> identify_socket(int fd);

std::string errno_text(int err);

}  // namespace echorelay::net
