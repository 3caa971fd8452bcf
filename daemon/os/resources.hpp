// Process resource limits. A relay holds two fds per client, so the default soft
// RLIMIT_NOFILE (often 1024) would cap a daemon far below what the operator's hard
// limit allows; like HAProxy's automatic ulimit-n, the daemon raises soft to hard.
#pragma once

#include <sys/resource.h>

namespace echorelay::os {

// Raises the soft open-files limit to the hard limit; returns the limit now in force.
rlim_t raise_fd_limit();

}  // namespace echorelay::os

#include <cstddef>

#include "net/fd.hpp"
#include "util/result.hpp"

namespace echorelay::os {

// A MAP_SHARED mapping of a memfd: memory that a successor maps too when it is handed
// the fd, so both processes see the same bytes. Move-only; unmaps on destruction.
class SharedMemory {
 public:
  SharedMemory() = default;
  SharedMemory(SharedMemory&& other) noexcept;
  SharedMemory& operator=(SharedMemory&& other) noexcept;
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;
  ~SharedMemory();

  // A new zero-filled region of `size` bytes (memfd_create, close-on-exec).
  static Result<SharedMemory> create(const char* name, std::size_t size);
  // Maps an inherited memfd whole; takes ownership of `fd` and makes it close-on-exec.
  static Result<SharedMemory> adopt(int fd);

  void* data() const { return data_; }
  std::size_t size() const { return size_; }
  int fd() const { return fd_.get(); }

 private:
  net::Fd fd_;
  void* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace echorelay::os
