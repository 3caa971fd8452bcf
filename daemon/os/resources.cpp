// See resources.hpp.
#include "os/resources.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace echorelay::os {

rlim_t raise_fd_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) return raised.rlim_cur;
  }
  return limit.rlim_cur;
}

}  // namespace echorelay::os

namespace echorelay::os {

SharedMemory::SharedMemory(SharedMemory&& other) noexcept
    : fd_(std::move(other.fd_)), data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

SharedMemory& SharedMemory::operator=(SharedMemory&& other) noexcept {
  if (this != &other) {
    if (data_) ::munmap(data_, size_);
    fd_ = std::move(other.fd_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

SharedMemory::~SharedMemory() {
  if (data_) ::munmap(data_, size_);
}

Result<SharedMemory> SharedMemory::create(const char* name, std::size_t size) {
  net::Fd fd(::memfd_create(name, MFD_CLOEXEC));
  if (!fd) return make_error(std::string("memfd_create: ") + std::strerror(errno));
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return make_error(std::string("ftruncate memfd: ") + std::strerror(errno));
  }
  void* data = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (data == MAP_FAILED) return make_error(std::string("mmap memfd: ") + std::strerror(errno));
  SharedMemory m;
  m.fd_ = std::move(fd);
  m.data_ = data;
  m.size_ = size;
  return m;
}

Result<SharedMemory> SharedMemory::adopt(int raw) {
  net::Fd fd(raw);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return make_error(std::string("fstat inherited memfd: ") + std::strerror(errno));
  if (st.st_size <= 0) return make_error("inherited memfd is empty");
  ::fcntl(fd.get(), F_SETFD, FD_CLOEXEC);
  const auto size = static_cast<std::size_t>(st.st_size);
  void* data = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (data == MAP_FAILED) return make_error(std::string("mmap inherited memfd: ") + std::strerror(errno));
  SharedMemory m;
  m.fd_ = std::move(fd);
  m.data_ = data;
  m.size_ = size;
  return m;
}

}  // namespace echorelay::os
