// Frame scanners (daemon/echo/framing.*) fed in random chunkings, the way a session
// feeds them: what comes out equals a tiny reference decoder run on everything received
// so far, and `max_frame` is reported as soon as the bytes prove a frame too large, so
// the session never buffers more than max_frame (+ header) of an unfinished frame.
//
// Input: framing (1 byte), max_frame (2 bytes), then [chunk length byte, chunk bytes]...
#include <cstdint>
#include <string>

#include "echo/framing.hpp"
#include "fuzz_input.hpp"

namespace {

using echorelay::config::Framing;

struct Reference {
  std::size_t complete = 0;
  std::size_t frames = 0;
  bool too_large = false;
};

// Decodes `stream` from the start: the whole frames at its front, and whether the bytes
// already prove a frame longer than max_frame.
Reference decode(Framing framing, std::uint32_t max_frame, const std::string& stream) {
  Reference r;
  if (framing == Framing::Raw) {
    r.complete = stream.size();
    return r;
  }
  std::size_t pos = 0;
  for (;;) {
    if (framing == Framing::Line) {
      std::size_t nl = stream.find('\n', pos);
      if (nl == std::string::npos) {
        if (stream.size() - pos > max_frame) r.too_large = true;  // the unfinished line
        break;
      }
      if (nl + 1 - pos > max_frame) {  // the frame counts its '\n'
        r.too_large = true;
        break;
      }
      pos = nl + 1;
    } else {
      if (stream.size() - pos < 4) break;
      std::uint32_t len = 0;
      for (int i = 0; i < 4; ++i) len = len << 8 | static_cast<unsigned char>(stream[pos + i]);
      if (len > max_frame) {
        r.too_large = true;
        break;
      }
      if (stream.size() - pos - 4 < len) break;
      pos += 4 + len;
    }
    ++r.frames;
    r.complete = pos;
  }
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  const Framing framing = static_cast<Framing>(in.pick(3));
  // Small limits reach the edges; 0 and large values are legal too.
  std::uint32_t max_frame = in.u16();
  if (max_frame > 4096) max_frame = max_frame * 1021u;

  echorelay::echo::FrameScanner scanner(framing, max_frame);
  std::string received;  // everything sent so far
  std::string buffer;    // what the session holds: received minus what it echoed
  std::size_t echoed = 0, frames = 0;
  while (!in.empty()) {
    const std::size_t chunk = in.byte() + 1;
    const std::string bytes = in.bytes(chunk);
    buffer += bytes;
    received += bytes;
    const auto scan = scanner.scan(buffer);
    const Reference want = decode(framing, max_frame, received);
    FUZZ_CHECK(scan.too_large == want.too_large);
    if (scan.too_large) return 0;  // the session ends here
    FUZZ_CHECK(scan.complete <= buffer.size());
    FUZZ_CHECK(echoed + scan.complete == want.complete);
    FUZZ_CHECK(frames + scan.frames == want.frames);
    // The echo is exactly the bytes that formed those frames.
    FUZZ_CHECK(buffer.compare(0, scan.complete, received, echoed, scan.complete) == 0);
    echoed += scan.complete;
    frames += scan.frames;
    buffer.erase(0, scan.complete);
    // Nothing is held beyond one unfinished frame within the limit.
    if (framing == Framing::Line) FUZZ_CHECK(buffer.size() <= max_frame);
    if (framing == Framing::LengthPrefixed) FUZZ_CHECK(buffer.size() < 4 + std::uint64_t{max_frame});
    if (framing == Framing::Raw) FUZZ_CHECK(buffer.empty());
  }
  return 0;
}
