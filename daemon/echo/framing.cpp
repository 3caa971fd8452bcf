// Line and length-prefixed frame scanning; see framing.hpp.
#include "echo/framing.hpp"

#include <cstring>

namespace echorelay::echo {

Scan FrameScanner::scan(std::span<const char> data) {
  Scan s;
  switch (framing_) {
    case config::Framing::Raw:
      s.complete = data.size();
      return s;

    case config::Framing::Line: {
      std::size_t start = 0;  // start of the current line
      std::size_t pos = scanned_;
      while (pos < data.size()) {
        const void* nl = std::memchr(data.data() + pos, '\n', data.size() - pos);
        if (!nl) break;
        const std::size_t end = static_cast<const char*>(nl) - data.data() + 1;
        if (end - start > max_frame_) {
          s.too_large = true;
          return s;
        }
        ++s.frames;
        start = end;
        pos = end;
      }
      s.complete = start;
      // The unfinished line may already be too long: stop before buffering more of it.
      if (data.size() - start > max_frame_) s.too_large = true;
      scanned_ = data.size() - start;
      return s;
    }

    case config::Framing::LengthPrefixed: {
      std::size_t pos = 0;
      while (data.size() - pos >= kLengthHeader) {
        const auto* p = reinterpret_cast<const unsigned char*>(data.data() + pos);
        const std::uint32_t len = (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) |
                                  (std::uint32_t{p[2]} << 8) | std::uint32_t{p[3]};
        if (len > max_frame_) {
          s.too_large = true;
          return s;
        }
        if (data.size() - pos - kLengthHeader < len) break;
        pos += kLengthHeader + len;
        ++s.frames;
      }
      s.complete = pos;
      return s;
    }
  }
  return s;
}

}  // namespace echorelay::echo
