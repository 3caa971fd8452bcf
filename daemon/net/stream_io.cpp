// See stream_io.hpp.
#include "net/stream_io.hpp"

#include <sys/socket.h>

#include <array>
#include <cerrno>

namespace echorelay::net {

std::span<char> thread_scratch() {
  thread_local std::array<char, 64 * 1024> buffer;
  return buffer;
}

SendOutcome send_keep_rest(int fd, std::span<const char> data, std::vector<char>& unsent) {
  SendOutcome out;
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      out.bytes += static_cast<std::size_t>(n);
      data = data.subspan(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (data.data() >= unsent.data() && data.data() < unsent.data() + unsent.size()) {
        unsent.erase(unsent.begin(), unsent.begin() + (data.data() - unsent.data()));
      } else {
        unsent.assign(data.begin(), data.end());
      }
      out.result = SendOutcome::Result::Blocked;
      return out;
    }
    out.result = SendOutcome::Result::Failed;
    out.error = n < 0 ? errno : EPIPE;
    return out;
  }
  unsent.clear();
  return out;
}

}  // namespace echorelay::net
