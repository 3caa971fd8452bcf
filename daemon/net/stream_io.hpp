// What every stream handler (echo, TCP relay) does with a non-blocking socket: read into
// the worker thread's scratch, send what the kernel takes and keep the rest.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

namespace echorelay::net {

// 64 KiB per thread, shared by every session of the worker: a read lands here and is
// answered or copied out before the next session runs, so an idle connection pins no
// buffer of its own.
std::span<char> thread_scratch();

struct SendOutcome {
  enum class Result { All, Blocked, Failed };
  Result result = Result::All;
  std::size_t bytes = 0;  // taken by the kernel in this call
  int error = 0;          // errno when Failed (EPIPE for a zero-byte send)
};

// Sends as much of `data` as the socket takes (MSG_NOSIGNAL | MSG_DONTWAIT). What the
// kernel does not take is kept in `unsent`, which `data` may already be (or a suffix
// of): then the sent front is erased instead of copied. `unsent` is empty after All.
SendOutcome send_keep_rest(int fd, std::span<const char> data, std::vector<char>& unsent);

}  // namespace echorelay::net
