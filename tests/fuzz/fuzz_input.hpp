// Shared by the fuzz targets: a tiny byte consumer (FuzzedDataProvider's idea, without
// depending on clang's header, so the replay drivers build with g++ too) and a check
// that aborts with a message, so libFuzzer records the input as a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace fuzz {

class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  bool empty() const { return pos_ >= size_; }
  std::size_t remaining() const { return size_ - pos_; }

  std::uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  std::uint16_t u16() { return static_cast<std::uint16_t>(byte() << 8 | byte()); }
  std::uint32_t u32() { return std::uint32_t{u16()} << 16 | u16(); }
  bool flag() { return (byte() & 1) != 0; }
  // 0..n-1 (0 when n is 0)
  std::size_t pick(std::size_t n) { return n == 0 ? 0 : byte() % n; }

  // Up to `max` bytes.
  std::string bytes(std::size_t n) {
    n = n < remaining() ? n : remaining();
    std::string out(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return out;
  }
  std::string rest() { return bytes(remaining()); }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

[[noreturn]] inline void failed(const char* what, const char* file, int line) {
  std::fprintf(stderr, "%s:%d: fuzz check failed: %s\n", file, line, what);
  std::abort();
}

}  // namespace fuzz

// Always on, whatever NDEBUG says.
#define FUZZ_CHECK(cond) ((cond) ? (void)0 : ::fuzz::failed(#cond, __FILE__, __LINE__))
