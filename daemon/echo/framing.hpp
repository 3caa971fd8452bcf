// Frame boundaries for the echo handler. An echo answer is exactly the complete frames
// at the front of what was received, so the decoder only has to say where the last
// complete frame ends; nothing is copied and nothing is allocated for a claimed length.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "config/config.hpp"

namespace echorelay::echo {

inline constexpr std::size_t kLengthHeader = 4;

struct Scan {
  std::size_t complete = 0;  // bytes at the front that form whole frames
  std::size_t frames = 0;    // how many frames those are
  bool too_large = false;    // a frame (or the partial one at the end) exceeds max_frame
};

// Incremental: the caller must drop exactly `complete` bytes from the front after each
// scan and pass the rest (plus new bytes) next time; the scanner remembers how much of
// that rest it already searched, so a trickling client costs O(n), not O(n^2).
class FrameScanner {
 public:
  FrameScanner(config::Framing framing, std::uint32_t max_frame) : framing_(framing), max_frame_(max_frame) {}

  Scan scan(std::span<const char> data);

 private:
  config::Framing framing_;
  std::uint32_t max_frame_;
  std::size_t scanned_ = 0;
};

}  // namespace echorelay::echo
